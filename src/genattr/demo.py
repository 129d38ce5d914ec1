"""``genattr demo``: explain one prompt with every registered method and write an HTML report.

Until the model zoo ships a trained model, the demo runs on a tiny random Llama model built
here (:mod:`genattr.tiny`) and cached under ``$GENATTR_CACHE`` (default ``~/.cache/genattr``).
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from . import registry
from .api import explain
from .model import load
from .result import write_atomic

PROMPT = "The old king reads a letter in the quiet garden."


def _cache_dir() -> Path:
    return Path(os.environ.get("GENATTR_CACHE", Path.home() / ".cache" / "genattr"))


def demo_model_path() -> Path:
    path = _cache_dir() / "tiny-llama"
    if not (path / "config.json").exists():
        from .tiny import build

        build("llama", path, hidden=64, layers=2, heads=4)
    return path


def run_demo(out: str | os.PathLike = "demo.html", quick: bool = False) -> list:
    from .render.html import render_html

    console = Console()
    lm = load(demo_model_path())
    console.rule(f"genattr demo on {lm.name}")
    results = []
    for info in registry.methods():
        params = {"n_samples": 8} if quick and "n_samples" in info.params else {}
        res = explain(lm, PROMPT, target=None, method=info.name, max_new_tokens=6, **params)
        console.print(f"[bold]{info.name}[/bold] - {info.summary}")
        res.show(console=console)
        results.append(res)
    write_atomic(Path(out), render_html(results, title="genattr demo", captions=[r.method for r in results]))
    console.print(f"wrote {out}")
    return results
