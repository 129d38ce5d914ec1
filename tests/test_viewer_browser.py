"""The viewer in a real browser: Debian's Chromium (/usr/bin/chromium; ``.ci/run`` installs it)
driven through Playwright's sync API, headless, without the pytest plugin or Playwright's own
browser builds. Colours read back from the page are compared with :func:`genattr.render.colour`
of the result's own numbers; the latency figures are printed (``-s``) and kept with a screenshot
under the test's temporary directory."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest

from genattr import Attribution
from genattr.render import colour, fmt, max_abs, pieces, visible
from genattr.render.viewer import render_viewer, viewer_fragment

from .viewer_results import HOSTILE, hostile, long_results, result

CHROMIUM = Path("/usr/bin/chromium")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (the dev extra: pip install -e '.[dev]')"
)
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install -y chromium (.ci/run installs it)"
)
ARGS = ["--headless", "--no-sandbox", "--disable-background-networking"]
PROMPT = "the nurse said that the doctor opened the door"
TOKENS = (" and", " she", " smiled", " back")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


class View:
    """One page of the viewer: its errors, the requests it made, and reading helpers."""

    def __init__(self, browser, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1200, "height": 900}, accept_downloads=True)
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.as_uri())
        self.url = path.as_uri()

    def panel(self, r: int) -> str:
        return f".ga-panel[data-r='{r}']"

    def backgrounds(self, selector: str) -> list[tuple[int, ...]]:
        styles = self.page.eval_on_selector_all(
            selector, "els => els.map(e => getComputedStyle(e).backgroundColor)"
        )
        return [tuple(int(x) for x in re.findall(r"\d+", s)[:3]) for s in styles]

    def texts(self, selector: str) -> list[str]:
        return self.page.eval_on_selector_all(selector, "els => els.map(e => e.textContent)")

    def clean(self) -> bool:
        """No script error, nothing fetched but the page itself, no injected code run."""
        pwned = self.page.evaluate("() => typeof window.__pwned")
        return not self.errors and set(self.requests) <= {self.url} and pwned == "undefined"


@pytest.fixture
def open_view(browser, tmp_path):
    views: list[View] = []

    def open_(results, **kwargs) -> View:
        path = tmp_path / f"page{len(views)}.html"
        path.write_text(render_viewer(results, **kwargs), encoding="utf-8")
        views.append(View(browser, path))
        return views[-1]

    yield open_
    for view in views:
        view.page.close()


def scales(res: Attribution, row: int | None) -> tuple[float, float]:
    """The prompt's and the output tokens' scales: the largest |score| of their columns in the row."""
    values = res.scores if row is None else res.token_scores[row]
    F = len(res.features)
    return max_abs(values[:F]), max_abs(values[F:])


def expected(res: Attribution, row: int | None) -> tuple[list, list]:
    """The prompt's and the output tokens' colours (None where undefined) of ``row`` of
    ``token_scores``, or of the sequence scores when None, each on its own symmetric scale."""
    values = res.scores if row is None else res.token_scores[row]
    F = len(res.features)
    prompt_scale, output_scale = scales(res, row)
    prompt = [colour(values[i], prompt_scale) for _, i in pieces(res) if i is not None]
    outputs = [None if np.isnan(v) else colour(v, output_scale) for v in values[F:]]
    return prompt, outputs


def token_colours(view: View, r: int) -> list:
    undefined = view.page.eval_on_selector_all(
        view.panel(r) + " .ga-tt", "els => els.map(e => e.classList.contains('ga-undef'))"
    )
    colours = view.backgrounds(view.panel(r) + " .ga-tt")
    return [None if u else c for u, c in zip(undefined, colours, strict=True)]


def test_an_output_token_colours_the_prompt_and_the_earlier_tokens_by_its_row(open_view, tmp_path):
    res = result(PROMPT, TOKENS, attribute_target=True)
    view = open_view([res])
    prompt, tokens = view.panel(0) + " .ga-f", view.panel(0) + " .ga-tok"
    assert view.texts(prompt) == [f.text for f in res.features]
    assert (view.backgrounds(prompt), token_colours(view, 0)) == expected(res, None)
    view.page.click(f"{tokens}[data-k='2']")
    assert (view.backgrounds(prompt), token_colours(view, 0)) == expected(res, 2)
    assert token_colours(view, 0)[2:] == [None, None]  # a token's entry for itself and later ones
    for name, scale in zip(("prompt", "out"), scales(res, 2), strict=True):
        ends = view.texts(
            f"{view.panel(0)} .ga-legend-{name} .ga-lo, {view.panel(0)} .ga-legend-{name} .ga-hi"
        )
        assert ends == [f"-{fmt(scale)}", f"+{fmt(scale)}"]
    view.page.hover(f"{tokens}[data-k='1']")  # a hover previews another row ...
    assert view.backgrounds(prompt) == expected(res, 1)[0]
    view.page.mouse.move(5, 5)  # ... and leaving it shows the selected one again
    assert view.backgrounds(prompt) == expected(res, 2)[0]
    assert view.page.get_attribute(f"{tokens}[data-k='2']", "aria-pressed") == "true"
    view.page.click(view.panel(0) + " .ga-seq")
    view.page.mouse.move(5, 5)
    assert view.backgrounds(prompt) == expected(res, None)[0]
    steps = view.texts(f"{tokens}[data-k='3'] .ga-st")
    assert steps == [f"p {res.step_scores['prob'][3]:.2g}", f"H {res.step_scores['entropy'][3]:.2g}"]
    tip = view.page.get_attribute(f"{tokens}[data-k='3']", "title").splitlines()
    assert tip == [
        f"output token 4: {TOKENS[3]}",
        f"p = {fmt(res.step_scores['prob'][3])}",
        f"entropy = {fmt(res.step_scores['entropy'][3])}",
    ]
    view.page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
    assert view.clean()


def test_switching_methods_and_side_by_side_keep_the_selected_token(open_view):
    a = result(PROMPT, TOKENS, seed=1, method="first")
    b = result(PROMPT, TOKENS, seed=2, method="second", dtype=np.float32)
    view = open_view([a, b])
    assert view.page.is_visible(view.panel(0)) and not view.page.is_visible(view.panel(1))
    view.page.click(view.panel(0) + " .ga-tok[data-k='1']")
    view.page.click(".ga-method[data-r='1']")
    assert not view.page.is_visible(view.panel(0)) and view.page.is_visible(view.panel(1))
    assert view.backgrounds(view.panel(1) + " .ga-f") == expected(b, 1)[0]
    view.page.check(".ga-side")
    assert view.page.is_visible(view.panel(0)) and view.page.is_visible(view.panel(1))
    view.page.click(view.panel(1) + " .ga-tok[data-k='3']")
    for r, res in enumerate((a, b)):
        assert view.backgrounds(view.panel(r) + " .ga-f") == expected(res, 3)[0]
    assert view.clean()


def test_the_features_table_sorts_by_each_column(open_view):
    res = result(PROMPT, TOKENS, seed=4)
    view = open_view([res])
    cells = view.panel(0) + " .ga-rows .ga-cell:first-child"
    heads = view.panel(0) + " .ga-headrow button"
    words = [f.text for f in res.features]
    assert view.texts(cells) == [str(i) for i in range(len(words))]
    view.page.click(f"{heads} >> text=score")
    assert view.texts(cells) == [str(i) for i in np.argsort(-res.scores, kind="stable")]
    assert (
        view.page.get_attribute(view.panel(0) + " .ga-headrow .ga-cell:nth-child(3)", "aria-sort")
        == "descending"
    )
    view.page.click(view.panel(0) + " .ga-tok[data-k='2']")  # the order follows the row shown
    assert view.texts(cells) == [str(i) for i in np.argsort(-res.token_scores[2], kind="stable")]
    view.page.click(f"{heads} >> text=score")
    assert view.texts(cells) == [str(i) for i in np.argsort(res.token_scores[2], kind="stable")]
    view.page.click(f"{heads} >> text=feature")
    assert view.texts(cells) == [str(i) for i in sorted(range(len(words)), key=lambda i: (words[i], i))]
    view.page.click(f"{heads} >> text=#")
    assert view.texts(cells) == [str(i) for i in range(len(words))]
    assert view.clean()


def test_the_keyboard_reaches_moves_between_and_selects_output_tokens(open_view):
    res = result(PROMPT, TOKENS, attribute_target=True)
    view = open_view([res])
    page, prompt = view.page, view.panel(0) + " .ga-f"
    page.focus(view.panel(0) + " .ga-dl")
    page.keyboard.press("Tab")
    focused = "() => document.activeElement.getAttribute('data-k')"
    assert page.evaluate(focused) == "0"
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.evaluate(focused) == "2" and view.backgrounds(prompt) == expected(res, 2)[0]
    page.keyboard.press("Enter")
    assert page.get_attribute(view.panel(0) + " .ga-tok[data-k='2']", "aria-pressed") == "true"
    page.keyboard.press("End")
    page.keyboard.press(" ")
    assert page.evaluate(focused) == "3" and view.backgrounds(prompt) == expected(res, 3)[0]
    page.keyboard.press("Home")
    assert page.evaluate(focused) == "0"
    page.keyboard.press("Escape")
    assert view.backgrounds(prompt) == expected(res, None)[0]
    page.keyboard.press("Shift+Tab")  # one tab stop for the whole strip of tokens
    assert page.evaluate("() => document.activeElement.className") == "ga-dl"
    assert view.clean()


def test_a_hostile_result_runs_no_script_and_shows_its_text_as_text(open_view):
    res = hostile()
    view = open_view([res, result(PROMPT, TOKENS)], title=HOSTILE[2])
    page = view.page
    for k in range(len(res.target.tokens)):
        page.hover(view.panel(0) + f" .ga-tok[data-k='{k}']")
        page.click(view.panel(0) + f" .ga-tok[data-k='{k}']")
    page.click(view.panel(0) + " .ga-headrow button >> text=feature")
    assert view.clean()
    assert page.eval_on_selector_all("script", "els => els.length") == 2
    assert page.eval_on_selector_all("img, svg, iframe, object", "els => els.length") == 0
    shown = "".join(visible(text, layout=True) for text, _ in pieces(res))
    assert view.texts(view.panel(0) + " .ga-prompt") == [shown]
    assert view.texts(view.panel(0) + " .ga-tt") == [visible(t) for t in res.target.tokens]
    assert view.texts(view.panel(0) + " .ga-title") == [f"{HOSTILE[0]} (regex)"]
    assert page.title() == HOSTILE[2]


@pytest.mark.parametrize("make", [hostile, lambda: result(PROMPT, TOKENS, dtype=np.float32)])
def test_the_download_is_the_whole_result(open_view, tmp_path, make):
    """Integers beyond 2**53 (the seed), undefined entries, float64 and float32 matrices."""
    res = make()
    view = open_view([res])
    with view.page.expect_download() as info:
        view.page.click(view.panel(0) + " .ga-dl")
    path = tmp_path / "download.json"
    info.value.save_as(path)
    back = Attribution.load(path)
    assert (
        back.to_dict() == res.to_dict()
        and json.loads(path.read_text())["settings"] == res.to_dict()["settings"]
    )
    assert view.clean()


def test_the_notebook_fragment_binds_where_a_notebook_inserts_it(browser, tmp_path):
    """As JupyterLab does: the fragments set as innerHTML (their scripts inert), then each
    script replaced by a new one that runs; each viewer binds once, to its own data."""
    a, b = result(PROMPT, TOKENS, seed=5), result("other words here", (" x",), seed=6)
    shell = tmp_path / "notebook.html"
    shell.write_text("<!DOCTYPE html><html><body><div id='out'></div></body></html>", encoding="utf-8")
    view = View(browser, shell)
    view.page.evaluate(
        """(fragments) => { const out = document.getElementById('out');
        for (const f of fragments) { const cell = document.createElement('div'); cell.innerHTML = f; out.appendChild(cell);
          for (const old of cell.querySelectorAll('script')) { const s = document.createElement('script');
            for (const at of old.attributes) s.setAttribute(at.name, at.value); s.textContent = old.textContent;
            old.replaceWith(s); } } }""",
        [viewer_fragment([a]), viewer_fragment([b]), viewer_fragment([a])],
    )
    cells = [f"#out > div:nth-child({n}) .ga-f" for n in (1, 2, 3)]
    assert [view.backgrounds(c) for c in cells] == [
        expected(a, None)[0],
        expected(b, None)[0],
        expected(a, None)[0],
    ]
    assert view.page.eval_on_selector_all("#out .ga-tok", "els => els.length") == 4 + 1 + 4
    assert view.clean()


CLICKED = """(k) => { const box = document.querySelector(".ga-panel[data-r='0'] .ga-tok[data-k='" + k + "']");
    const t0 = performance.now(); box.click(); document.body.offsetHeight; return performance.now() - t0; }"""
WORK = ("EventDispatch", "UpdateLayoutTree", "Layout")  # the handlers, then styles and layout they dirtied


def click_costs(browser, view: View, tokens) -> list[tuple[float, float]]:
    """Per click on an output token of the first panel: the wall time from the click to the end of
    the layout it causes (``performance.now()``), and the renderer main thread's CPU time in that
    span (Chromium's trace: the click's event dispatch, style recalculation and layout), which other
    processes on a busy machine inflate far less than the wall time."""
    costs = []
    for k in tokens:
        browser.start_tracing(page=view.page, categories=["devtools.timeline"])
        wall = view.page.evaluate(CLICKED, k)
        trace = json.loads(browser.stop_tracing())
        events = trace["traceEvents"] if isinstance(trace, dict) else trace
        main = {
            e["tid"]
            for e in events
            if e.get("name") == "thread_name" and e["args"].get("name") == "CrRendererMain"
        }
        cpu = sum(e.get("tdur", 0) for e in events if e.get("tid") in main and e.get("name") in WORK) / 1000
        costs.append((wall, cpu))
    return costs


def test_three_long_results_stay_small_and_answer_a_click_quickly(browser, open_view, tmp_path):
    """3 methods x 2,000 prompt words x 64 output tokens (float64 scores, the largest page): one
    result shown, then all three side by side (three prompts to recolour per click)."""
    results = long_results(np.float64)
    view = open_view(results, title="three long results")
    size = Path(view.url.removeprefix("file://")).stat().st_size
    assert size < 5_000_000
    one = click_costs(browser, view, (5, 40, 63, 0, 17))
    view.page.check(".ga-side")
    three = click_costs(browser, view, (5, 40, 63, 0, 17, 17))  # 17 again: back to the sequence
    last, spans = results[2], view.panel(2) + " .ga-f"
    assert view.backgrounds(spans)[::999] == expected(last, None)[0][::999]
    view.page.click(view.panel(2) + " .ga-tok[data-k='9']")
    assert view.backgrounds(spans)[::999] == expected(last, 9)[0][::999]
    lines = [f"page {size / 1e6:.2f} MB"]
    for name, costs in (("one result shown", one), ("three side by side", three)):
        wall, cpu = zip(*costs, strict=True)
        lines.append(
            f"{name}: click to layout, wall ms {', '.join(f'{t:.0f}' for t in wall)} "
            f"(median {statistics.median(wall):.0f}); main-thread CPU ms {', '.join(f'{t:.0f}' for t in cpu)} "
            f"(median {statistics.median(cpu):.0f})"
        )
    print("\n".join(lines))
    (tmp_path / "latency.txt").write_text("\n".join(lines) + "\n")
    view.page.screenshot(path=str(tmp_path / "viewer-long.png"))
    assert all(0 < cpu < 1000 for _, cpu in one + three) and view.clean()
