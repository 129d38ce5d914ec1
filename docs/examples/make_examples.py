"""Writes the examples in docs/examples: SmolLM2's answer to a chat question explained by two
methods with ``attribute_target``, as one viewer page (attribute_target_smollm2.html), and a
screenshot of that page, the methods side by side with the sixth output token selected (viewer.png; needs Playwright and
/usr/bin/chromium, as the browser tests do). About a minute on 2 CPU cores:

    PYTHONPATH=src python docs/examples/make_examples.py
"""

from __future__ import annotations

from pathlib import Path

import genattr
from genattr.files import write_atomic
from genattr.model import Batch
from genattr.render.viewer import render_viewer
from genattr.text import Prompt

HERE = Path(__file__).resolve().parent
QUESTION = "What is the capital of France? Answer in one sentence."
METHODS = ("leave_one_out", "input_x_gradient")
ANSWER_TOKENS = 12
SELECTED = 5  # the output token whose row the screenshot shows


def results() -> list[genattr.Attribution]:
    lm = genattr.load("smollm2")
    prompt = Prompt.from_messages(lm.tokenizer, [{"role": "user", "content": QUESTION}])
    answer = lm.generate(Batch.from_ids(prompt.input_ids), ANSWER_TOKENS).token_ids[0]
    return [
        genattr.explain(lm, prompt, target=answer, method=name, level="word", attribute_target=True)
        for name in METHODS
    ]


def screenshot(page: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-background-networking"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        view = browser.new_page(viewport={"width": 1400, "height": 700})
        view.goto(page.as_uri())
        view.check(".ga-side")
        view.click(f".ga-panel[data-r='0'] .ga-tok[data-k='{SELECTED}']")
        view.mouse.move(1, 1)
        view.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> None:
    page = HERE / "attribute_target_smollm2.html"
    title = f"genattr viewer: SmolLM2 answers {QUESTION!r}"
    write_atomic(page, render_viewer(results(), title=title))
    screenshot(page, HERE / "viewer.png")
    print(f"wrote {page} and {HERE / 'viewer.png'}")


if __name__ == "__main__":
    main()
