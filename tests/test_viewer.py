"""The interactive viewer's page, read as HTML and JSON (no browser: tests/test_viewer_browser.py
drives it in Chromium): what it embeds, how safely, how compactly, and the shared palette."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from genattr.errors import InputError
from genattr.render.viewer import (
    groups,
    pack,
    payload,
    render_viewer,
    script_json,
    unpack,
    viewer_fragment,
)

from .viewer_results import HOSTILE, hostile, long_results, result

LIMIT = 5_000_000


class Scripts(HTMLParser):
    """The page's elements (tag, attributes) and the text of each <script>, as a browser's
    tokenizer splits them (a script ends at the first ``</script``)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[tuple[dict, str]] = []
        self._open: dict | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._open = dict(attrs)
            self.scripts.append((self._open, ""))

    def handle_endtag(self, tag):
        if tag == "script":
            self._open = None

    def handle_data(self, data):
        if self._open is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)


@pytest.mark.parametrize("text", [*HOSTILE, "a\u2028b", "</SCRIPT >", "<!-- x"])
def test_script_json_cannot_close_the_script_and_reads_back_unchanged(text):
    value = {"k" + text: [text, 1.5, None]}
    out = script_json(value)
    assert not re.search(r"[<>&\u2028\u2029]", out)
    assert json.loads(out) == value


def test_pack_is_lossless_and_float32_only_when_exact():
    wide = np.array([[0.1, np.nan], [-0.0, 1e-300]])
    narrow = np.array([[0.5, np.nan], [np.float32(0.1), -2.0]])
    for values, dtype in ((wide, "f8"), (narrow, "f4")):
        packed = pack(values)
        assert packed["dtype"] == dtype and packed["shape"] == [2, 2]
        back = unpack(packed)
        assert (
            np.array_equal(back, values, equal_nan=True)
            and np.signbit(back).tolist() == np.signbit(values).tolist()
        )
    assert pack(None) is None and unpack(None) is None


def test_hostile_text_stays_inside_the_json_and_the_header_is_escaped():
    res = hostile()
    page = render_viewer([res], title=HOSTILE[0])
    doc = Scripts(page)
    scripts = [(attrs, text) for attrs, text in doc.scripts]
    assert [attrs for attrs, _ in scripts] == [{"type": "application/json", "class": "ga-data"}, {}]
    data = json.loads(scripts[0][1])
    assert data == json.loads(json.dumps(payload([res], [set()])))
    assert "</script" not in scripts[1][1].lower() and "innerHTML" not in scripts[1][1]
    tags = {tag for tag, _ in doc.tags}
    assert tags <= {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "h2",
        "section",
        "div",
        "span",
        "b",
    } | {
        "button",
        "label",
        "input",
        "script",
    }
    assert not any(k.startswith("on") or k in {"src", "href"} for _, attrs in doc.tags for k in attrs)
    for h in HOSTILE[:4]:
        assert h not in page
    assert "window.__pwned" in json.loads(data["results"][0]["rest"])["method"]


def test_the_page_fetches_nothing():
    page = render_viewer([result("one two", (" a", " b"))])
    assert not re.search(r"https?:|//[a-z]|@import|<link|src=", page, re.IGNORECASE)
    assert "url(" not in page  # CSS fetches; the script's URL.createObjectURL makes a local Blob link


def test_the_payload_shares_prompts_and_features_and_keeps_the_rest_as_python_wrote_it():
    a = result("one two three", (" x", " y"), seed=1, method="a")
    b = result("one two three", (" x", " y"), seed=2, method="b")
    c = result("four five", (" z",), seed=3, method="c")
    data = payload([a, b, c], [set(), {1}, set()])
    assert len(data["prompts"]) == 2 and len(data["feature_lists"]) == 2
    entries = data["results"]
    assert [e["prompt"] for e in entries] == [0, 0, 1] and [e["features"] for e in entries] == [0, 0, 1]
    for res, entry in zip((a, b, c), entries, strict=True):
        whole = res.to_dict()
        rest = json.loads(entry["rest"])
        assert set(rest) | {"prompt", "features", "token_scores"} == set(whole)
        assert rest == {k: v for k, v in whole.items() if k in rest}
        assert data["prompts"][entry["prompt"]] == whole["prompt"]
        assert data["feature_lists"][entry["features"]] == whole["features"]
        assert np.array_equal(unpack(entry["token_scores"]), res.token_scores)
    assert entries[1]["view"]["marks"] == [1] and entries[0]["view"]["steps"] == ["prob", "entropy"]
    assert groups([a, c, b]) == [[0, 2], [1]]


def test_results_of_different_prompts_are_grouped_with_a_method_switch_per_group():
    a, b = result("one two", (" x",), method="a"), result("one two", (" x",), method="b")
    c = result("three", (" y",), method="c")
    doc = Scripts(viewer_fragment([a, c, b]))
    heads = [attrs for tag, attrs in doc.tags if tag == "h2"]
    assert len(heads) == 2
    assert [attrs["data-r"] for tag, attrs in doc.tags if attrs.get("class") == "ga-method"] == ["0", "2"]
    assert [attrs["data-r"] for tag, attrs in doc.tags if attrs.get("class") == "ga-panel"] == ["0", "2", "1"]


def test_bad_calls_raise_typed_errors():
    a = result("one two", (" x",))
    with pytest.raises(InputError, match="at least one"):
        render_viewer([])
    with pytest.raises(InputError, match="one per result"):
        render_viewer([a, a], marks=[{0}])


def test_to_html_and_the_notebook_view_are_the_viewer():
    res = result("one two", (" x",))
    assert res.to_html(title="t") == render_viewer([res], title="t")
    assert res._repr_html_() == viewer_fragment([res])
    assert res._repr_html_().startswith('<div class="ga-viewer"><style>')


def test_three_long_results_fit_in_five_megabytes():
    """3 methods x 2,000 prompt words x 64 output tokens: with float64 scores (the worst case,
    about 4.6 MB) and with float32 ones (what float32 models compute, about 2.6 MB)."""
    wide, narrow = (len(render_viewer(long_results(d)).encode("utf-8")) for d in (np.float64, np.float32))
    assert narrow < 0.6 * wide < 0.6 * LIMIT
