"""Renderings (HTML, terminal, matplotlib) of hand-built results: no model needed."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from matplotlib.figure import Figure
from rich.console import Console

from genattr import Attribution, Feature, Prompt, Settings, Target
from genattr.errors import InputError
from genattr.render import NEGATIVE, NEUTRAL, PALETTE, POSITIVE, colour, fmt, visible
from genattr.render.html import render_fragment, render_html
from genattr.render.plots import plot_attribution
from genattr.render.terminal import print_attribution

EVIL = ["<script>alert(1)</script>", '"quoted"', "'single'", "a & b", "<!-- c -->"]
TAGS = {
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
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
}


def make(
    prompt: str,
    scores=None,
    *,
    tokens=(" it", " ran"),
    token_scores=None,
    method: str = "demo",
    generated: bool = False,
    **kwargs,
) -> Attribution:
    """A result whose features are the whitespace-separated words of ``prompt``."""
    spans = [m.span() for m in re.finditer(r"\S+", prompt)]
    p = Prompt(
        prompt,
        tuple(range(len(spans))),
        tuple(spans),
        tuple(prompt[s:e] for s, e in spans),
        (True,) * len(spans),
    )
    features = [Feature(i, prompt[s:e], s, e, (i,)) for i, (s, e) in enumerate(spans)]
    scores = np.linspace(-1.0, 1.0, len(features)) if scores is None else scores
    target = Target(tuple(range(len(tokens))), "".join(tokens), tuple(tokens), generated)
    return Attribution(method, p, features, scores, target, token_scores, **kwargs)


class Page(HTMLParser):
    """Every element with its attributes and full (unescaped) text; checks that tags nest."""

    VOID = {"meta"}

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[dict] = []
        self.stack: list[dict] = []
        self.comments: list[str] = []
        self.feed(text)
        self.close()
        assert not self.stack, [e["tag"] for e in self.stack]

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.elements.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1]["tag"] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        for element in self.stack:
            element["text"] += data

    def handle_comment(self, data):
        self.comments.append(data)

    def find(self, tag: str | None = None, cls: str | None = None) -> list[dict]:
        return [
            e
            for e in self.elements
            if (tag is None or e["tag"] == tag)
            and (cls is None or cls in e["attrs"].get("class", "").split())
        ]


def rgb(style: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.search(r"background:rgb\((\d+),(\d+),(\d+)\)", style).groups())


@pytest.fixture
def evil() -> Attribution:
    prompt = "say " + " ".join(EVIL)
    tokens = tuple(" " + t for t in EVIL)
    n = len(prompt.split())
    return make(
        prompt,
        tokens=tokens,
        token_scores=np.arange(len(tokens) * n, dtype=float).reshape(len(tokens), n),
        method='<script>alert(1)</script>"m',
        params={"p": "<script>x</script>"},
        diagnostics={"model": "<!--m-->", "forward_passes": 3, "seconds": 0.5},
        settings=Settings(level="regex", pattern="<script>s</script>", seed=7),
    )


# --------------------------------------------------------------------------- HTML: escaping
def test_html_escapes_every_user_string(evil):
    page = render_html([evil], title='<script>t</script>"', captions=["<!-- cap -->&"], marks=[{1}])
    assert "<script" not in page.lower() and "<!--" not in page and "alert(1)</script>" not in page
    for escaped in (
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "&quot;quoted&quot;",
        "&#x27;single&#x27;",
        "a &amp; b",
        "&lt;!-- c --&gt;",
    ):
        assert escaped in page
    doc = Page(page)
    assert not doc.comments and {e["tag"] for e in doc.elements} <= TAGS
    assert doc.find("title")[0]["text"] == doc.find("h1")[0]["text"] == '<script>t</script>"'
    assert doc.find("h2")[0]["text"] == "<!-- cap -->&"
    assert doc.find(cls="ga-prompt")[0]["text"] == evil.prompt.text
    assert doc.find(cls="ga-target")[0]["text"] == evil.target.text
    assert [e["text"] for e in doc.find("span", "ga-f")] == [f.text for f in evil.features]
    assert [e["attrs"]["title"] for e in doc.find("span", "ga-f")] == [
        f"score {fmt(s)}" + (" (ground truth)" if i == 1 else "") for i, s in enumerate(evil.scores)
    ]
    head = doc.find(cls="ga-head")[0]["text"]
    assert evil.method in head and "<!--m-->" in head and "forward_passes 3" in head and "seconds 0.5" in head
    assert "p=<script>x</script>" in doc.find(cls="ga-params")[0]["text"]
    assert "pattern=<script>s</script>" in doc.find(cls="ga-settings")[0]["text"]
    cells = doc.find("td")
    assert [c["attrs"]["title"] for c in cells] == [
        f"{t} / {f.text}: score {fmt(v)}"
        for t, row in zip(evil.target.tokens, evil.token_scores, strict=True)
        for f, v in zip(evil.features, row, strict=True)
    ]


def test_the_viewer_holds_every_user_string_as_inert_script_data(evil):
    """The viewer's page: the header escaped as above, everything else inside its JSON, which
    neither closes its <script> nor opens a comment, and reads back as the result's own text."""
    from genattr.render.viewer import render_viewer

    page = render_viewer([evil], title='<script>t</script>"', marks=[{1}])
    assert page.lower().count("<script") == 2 and page.lower().count("</script") == 2
    assert "alert(1)</script>" not in page and "<!--" not in page
    data = json.loads(
        page.split('<script type="application/json" class="ga-data">', 1)[1].split("</script>")[0]
    )
    (entry,) = data["results"]
    rest = json.loads(entry["rest"])
    assert rest["method"] == evil.method and rest["target_text"] == evil.target.text
    assert rest["params"] == {"p": "<script>x</script>"} and rest["diagnostics"]["model"] == "<!--m-->"
    assert [f["text"] for f in data["feature_lists"][0]] == [f.text for f in evil.features]
    assert data["prompts"][0]["text"] == evil.prompt.text and entry["view"]["marks"] == [1]
    doc = Page(page.split("<script", 1)[0] + "</div></body></html>")
    assert doc.find("title")[0]["text"] == '<script>t</script>"'
    assert evil.method in doc.find(cls="ga-head")[0]["text"]


def test_fragment_is_a_scoped_div(evil):
    fragment = render_fragment(evil)
    assert fragment.startswith('<div class="genattr"><style>') and "<html" not in fragment
    assert "<script" not in fragment.lower() and "<!--" not in fragment
    doc = Page(fragment)
    assert doc.elements[0]["tag"] == "div" and doc.find(cls="ga-target")[0]["text"] == evil.target.text
    assert evil.to_html().startswith("<!DOCTYPE html>")


# --------------------------------------------------------------------------- HTML: content
def test_colours_follow_the_diverging_scale():
    res = make("top zero neg half", [2.0, 0.0, -2.0, 1.0])
    styles = [e["attrs"]["style"] for e in Page(render_fragment(res)).find("span", "ga-f")]
    assert rgb(styles[0]) == POSITIVE and rgb(styles[1]) == NEUTRAL and rgb(styles[2]) == NEGATIVE
    half = rgb(styles[3])
    assert half[0] > half[1] and half[0] > half[2] and half[1] > POSITIVE[1]  # red, lighter than the top
    blank = make("all zero inf", [0.0, 0.0, float("inf")])  # a non-finite score is white
    spans = Page(render_fragment(blank)).find("span", "ga-f")
    assert (
        all(rgb(e["attrs"]["style"]) == NEUTRAL for e in spans) and spans[2]["attrs"]["title"] == "score inf"
    )


def test_the_palette_is_colorbrewer_rdbu_through_its_stops():
    """At |score| / scale = k / 5 the colour is the k-th stop out from the centre, on the side of
    the sign; in between it is the channel-wise linear mix, rounded half up."""
    assert (NEGATIVE, NEUTRAL, POSITIVE) == ((5, 48, 97), (247, 247, 247), (103, 0, 31))
    for k in range(6):
        assert colour(k / 5 * 3.0, 3.0) == PALETTE[5 + k]
        assert colour(-k / 5 * 3.0, 3.0) == PALETTE[5 - k]
    mid = colour(0.5, 1.0)  # halfway between stops 2 and 3 of the red side
    expected = tuple(math.floor((a + b) / 2 + 0.5) for a, b in zip(PALETTE[7], PALETTE[8], strict=True))
    assert mid == expected == (229, 131, 104)
    assert colour(9.0, 1.0) == POSITIVE and colour(float("nan"), 1.0) == NEUTRAL


def test_context_between_features_is_kept_uncoloured():
    res = make("<|user|> hello there <|end|>", [0.0, 1.0, -1.0, 0.0])
    features = [dataclasses.replace(f, index=i) for i, f in enumerate(res.features[1:3])]
    res = dataclasses.replace(res, features=features, scores=res.scores[1:3])
    doc = Page(render_fragment(res))
    assert doc.find(cls="ga-prompt")[0]["text"] == res.prompt.text
    assert [e["text"] for e in doc.find("span", "ga-f")] == ["hello", "there"]


def test_matrix_only_with_token_scores():
    res = make("one two three", tokens=(" a", " b", " c", " d"), token_scores=np.ones((4, 3)), generated=True)
    doc = Page(render_html([res]))
    (table,) = doc.find("table", "ga-matrix")
    assert len(doc.find("tr")) == 1 + 4 and len(doc.find("td")) == 4 * 3 and len(doc.find("th")) == 1 + 3 + 4
    assert [e["text"] for e in doc.find("th")[1:4]] == ["one", "two", "three"]
    assert "target (generated by the model)" in [e["text"] for e in doc.find(cls="ga-label")]
    assert "<table" not in render_html([make("one two three")])


def test_marks_outline_ground_truth_and_extend_the_legend():
    a, b = make("one two three"), make("four five")
    doc = Page(render_html([a, b], marks=[{0, 2}, set()], captions=["first", "second"]))
    assert [e["text"] for e in doc.find("h2")] == ["first", "second"]
    assert [e["text"] for e in doc.find("span", "ga-mark") if "ga-f" in e["attrs"]["class"]] == [
        "one",
        "three",
    ]
    legends = [e["text"] for e in doc.find(cls="ga-legend")]
    assert "ground-truth" in legends[0] and "ground-truth" not in legends[1]
    marked = Page(render_fragment(a, mark={1}))
    assert [e["text"] for e in marked.find("span", "ga-mark")] == ["two", "outlined"]
    assert not Page(render_fragment(a)).find(cls="ga-mark")
    with pytest.raises(InputError, match="one per result"):
        render_html([a, b], marks=[{0}])


# --------------------------------------------------------------------------- terminal
def test_terminal_shows_prompt_target_and_legend():
    res = make(
        "[bold]x[/bold] cat sat", tokens=(" on", " mats"), token_scores=np.zeros((2, 3)), generated=True
    )
    console = Console(record=True, width=100)
    print_attribution(res, console=console, mark={1})
    text = console.export_text()
    for expected in (
        "[bold]x[/bold]",
        "cat",
        "sat",
        "on mats",
        "legend",
        "ground-truth",
        "generated",
        "method demo",
    ):
        assert expected in text


def test_terminal_prints_a_wide_matrix_completely(capsys):
    words = [f"w{i:02d}" for i in range(30)]
    res = make(
        " ".join(words), tokens=(" t1", " t2"), token_scores=np.random.default_rng(0).normal(size=(2, 30))
    )
    console = Console(record=True, width=100)
    res.show(console=console)
    matrix = console.export_text().split("legend", 1)[1]
    assert all(w in matrix for w in words) and matrix.count("t1") >= 3
    print_attribution(res)
    assert "w29" in capsys.readouterr().out


# --------------------------------------------------------------------------- plots
def test_heatmap_shape_and_labels():
    res = make("a $x$ $ c", tokens=(" p", "\n"), token_scores=np.arange(8.0).reshape(2, 4))
    fig = plot_attribution(res, kind="heatmap")
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and ax.images[0].get_array().shape == (2, 4)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "$x$", "$", "c"]
    assert [t.get_text() for t in ax.get_yticklabels()] == [" p", "\\n"]
    fig.savefig(io.BytesIO(), format="png")
    assert res.plot().axes[0].images


def test_bar_has_one_bar_per_feature():
    res = make("one two three", [1.0, -0.5, 0.0])
    fig = res.plot()
    assert [p.get_height() for p in fig.axes[0].patches] == [1.0, -0.5, 0.0]
    ax = Figure().add_subplot()
    assert plot_attribution(res, kind="bar", ax=ax) is ax.figure and len(ax.patches) == 3


def test_bad_plot_kind_raises():
    res = make("one two")
    with pytest.raises(InputError, match="auto, heatmap, bar"):
        plot_attribution(res, kind="pie")
    with pytest.raises(InputError, match="kind='bar'"):
        plot_attribution(res, kind="heatmap")


# --------------------------------------------------------------------------- terminal: hostile text
HOSTILE = {
    "ESC": "\x1b[2J",
    "OSC": "\x1b]0;pwned\x07",
    "BEL": "\x07",
    "CR": "over\rwrite",
    "C1": "\x9b31m",
    "DEL": "\x7f",
    "RLO": "\u202egnp.exe",
    "LRI": "\u2066x\u2069",
}
SGR = re.compile(r"\x1b\[[0-9;]*m")  # rich's own colour codes


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("\x1b]0;t\x07", "\\x1b]0;t\\x07"),
        ("a\rb\nc\td", "a\\rb\\nc\\td"),
        ("\x9b\x7f\x00", "\\x9b\\x7f\\x00"),
        ("\u202a\u202e\u2066\u2069\u200f", "\\u202a\\u202e\\u2066\\u2069\\u200f"),
        ("plain [b] é 猫", "plain [b] é 猫"),
    ],
)
def test_visible_escapes_control_and_bidi_characters(raw, shown):
    assert visible(raw) == shown
    assert visible("a\nb\tc\r", layout=True) == "a\nb\tc\\r"


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_terminal_never_prints_control_or_bidi_characters_from_a_result(kind):
    evil = HOSTILE[kind]
    prompt = f"cat {evil} sat"
    res = make(
        prompt,
        tokens=(f" {evil}", " ok"),
        token_scores=np.ones((2, len(prompt.split()))),
        method=f"m{evil}",
        params={f"k{evil}": f"v{evil}"},
        diagnostics={"model": f"model{evil}"},
        settings=Settings(level="regex", pattern=f"p{evil}", seed=1),
    )
    res = dataclasses.replace(res, target=dataclasses.replace(res.target, text=f"target{evil}"))
    for color in (True, False):
        out = io.StringIO()
        print_attribution(
            res, console=Console(file=out, force_terminal=color, width=200, color_system="truecolor")
        )
        text = SGR.sub("", out.getvalue())
        assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", text), repr(text)
        assert text.count(visible(evil)) >= 6  # prompt, token, method, parameters, settings, model, target


def test_terminal_prints_the_scores_of_a_result_without_matrix():
    res = make("one two three", [0.37, -0.21, 0.0])
    out = io.StringIO()
    print_attribution(res, console=Console(file=out, width=100))  # a pipe: no colours
    table = out.getvalue().split("legend", 1)[1]
    assert re.search(r"one\s+two\s+three", table) and re.search(r"score\s+0\.37\s+-0\.21\s+0\b", table)


# --------------------------------------------------------------------------- HTML: legends, parameters
def test_each_legend_spans_the_range_of_what_it_colours():
    res = make(
        "one two three", [0.5, -1.0, 0.25], tokens=(" a", " b"), token_scores=[[8.0, 0, 0], [0, -2.0, 0]]
    )
    doc = Page(render_fragment(res))
    prompt, matrix = doc.find(cls="ga-legend")
    assert prompt["text"].startswith("legend (prompt)") and matrix["text"].startswith("legend (token scores)")
    swatches = [(e["text"], rgb(e["attrs"]["style"])) for e in doc.find("span", "ga-sw")]
    assert swatches == [("-1", NEGATIVE), ("0", NEUTRAL), ("+1", POSITIVE)] + [
        ("-8", NEGATIVE),
        ("0", NEUTRAL),
        ("+8", POSITIVE),
    ]
    top = [e for e in doc.find("td") if e["text"] == "8"][0]
    assert rgb(top["attrs"]["style"]) == POSITIVE


def test_parameters_and_settings_leave_out_unset_values_and_the_header_gives_the_unit():
    res = make("one two", params={"n_samples": 3, "init": None}, settings=Settings(mask_token=0, seed=5))
    doc = Page(render_fragment(res))
    assert doc.find(cls="ga-params")[0]["text"] == "parameters: n_samples=3"
    assert doc.find(cls="ga-settings")[0]["text"] == "settings: mask=attention, mask_token=0, seed=5"
    assert "level word" in doc.find(cls="ga-head")[0]["text"]
    assert "objective log_prob (nats)" in doc.find(cls="ga-head")[0]["text"]
    prob = make("one two", settings=Settings(objective="prob"))
    assert "objective prob (probability)" in Page(render_fragment(prob)).find(cls="ga-head")[0]["text"]
    spans = make("one two", settings=Settings(level="spans", spans=[(0, 3)], max_new_tokens=4))
    shown = Page(render_fragment(spans)).find(cls="ga-settings")[0]["text"]
    assert shown == "settings: mask=attention, max_new_tokens=4, spans=((0, 3),)"
    out = io.StringIO()
    print_attribution(res, console=Console(file=out, width=200))
    assert "parameters: n_samples=3\nsettings: mask=attention, mask_token=0, seed=5\n" in out.getvalue()


# --------------------------------------------------------------------------- step scores
STEPS = {
    "prob": [0.123456, 1.0],
    "log_prob": [-2.0919, 0.0],
    "entropy": [3.5, 0.25],
    "rank": [17.0, 1.0],
    "contrast": [-1.5, 2.75],
}
STEP_CELLS = [["0.1235", "-2.092", "3.5", "17", "-1.5"], ["1", "0", "0.25", "1", "2.75"]]


def test_html_shows_the_step_scores_under_the_target():
    res = make("one two", tokens=(" it", " ran"), step_scores=STEPS)
    doc = Page(render_fragment(res))
    (table,) = doc.find("table", "ga-steps")
    heads = [e["text"] for e in doc.find("th")]
    assert heads == ["token", "p", "log p", "entropy", "rank", "contrast", " it", " ran"]
    assert [e["text"] for e in doc.find("td")] == STEP_CELLS[0] + STEP_CELLS[1]
    labels = [e["text"] for e in doc.find(cls="ga-label")]
    assert (
        labels.index(next(x for x in labels if x.startswith("step scores")))
        == labels.index("target (given)") + 1
    )
    assert not Page(render_fragment(make("one two"))).find("table", "ga-steps")


def test_html_escapes_step_score_names_and_tokens(evil):
    n = len(evil.target.ids)
    res = dataclasses.replace(evil, step_scores={"<script>s</script>&": [0.5] * n, "rank": [1.0] * n})
    page = render_html([res])
    assert "<script" not in page.lower() and "<!--" not in page
    doc = Page(page)
    (table,) = doc.find("table", "ga-steps")
    heads = [e["text"] for e in doc.find("th")][:3]
    assert heads == ["token", "<script>s</script>&", "rank"]
    rows = [e["text"] for e in doc.find("tr")[1 : 1 + n]]
    assert rows == [f"{visible(t)}0.51" for t in evil.target.tokens]


def test_terminal_prints_the_step_scores_after_the_attribution():
    res = make("one two", tokens=(" it", " ran"), token_scores=np.zeros((2, 2)), step_scores=STEPS)
    console = Console(record=True, width=120)
    print_attribution(res, console=console)
    text = console.export_text()
    steps = text.split("step scores:", 1)[1]
    assert text.index("step scores:") > text.index("token scores")
    assert re.search(r"token\s+p\s+log p\s+entropy\s+rank\s+contrast", steps)
    for token, cells in zip(("it", "ran"), STEP_CELLS, strict=True):
        assert re.search(rf"{token}\s+" + r"\s+".join(map(re.escape, cells)), steps), steps
    quiet = Console(record=True, width=120)
    print_attribution(res, console=quiet, steps=False)
    shown = quiet.export_text()
    assert "step scores" not in shown and "token scores" in shown


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_terminal_step_scores_never_print_control_characters(kind):
    evil = HOSTILE[kind]
    res = make("cat sat", tokens=(f" {evil}", " ok"), step_scores={f"s{evil}": [0.5, 0.25]})
    out = io.StringIO()
    print_attribution(
        res, console=Console(file=out, force_terminal=True, width=200, color_system="truecolor")
    )
    steps = SGR.sub("", out.getvalue()).split("step scores:", 1)[1]
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", steps), repr(steps)
    assert f"s{visible(evil)}" in steps and visible(evil) in steps.split(f"s{visible(evil)}", 1)[1]
