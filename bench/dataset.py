"""Throughput of a dataset run (``genattr explain --data``) on one process and on a local Ray
cluster of 1 and 2 actors of one torch thread each: the zoo model, ``zoo:recall`` prompts,
``shapley_sampling`` with 16 permutations (about 100 model evaluations a prompt).

Printed per setting: the wall time, the time to the first result (model loading; on Ray also the
cluster's start and each actor's imports) and the results per second after it. Ray's results are
checked equal to the single process's, timings left out.

Run from the repository root (Ray from the ``ray`` extra):

    nice -n 10 .venv/bin/python bench/dataset.py [--n 40]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

from genattr.cluster import Cluster
from genattr.dataset import read_records, run_dataset

OPTIONS = {"method": "shapley_sampling", "params": {"n_samples": 16}, "seed": 0}


def _timed(records, out: Path, cluster: Cluster | None) -> tuple[float, float, float]:
    """Wall seconds, seconds to the first result, results per second after it."""
    stamps: list[float] = []
    start = time.perf_counter()
    run_dataset(
        "zoo",
        records,
        out,
        cluster=cluster,
        threads=None if cluster else 1,
        progress=lambda *_: stamps.append(time.perf_counter()),
        **OPTIONS,
    )
    wall = time.perf_counter() - start
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return wall, stamps[0] - start, rate


def _scores(path: Path) -> dict[str, list]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return {line["request"]["input_hash"]: line["scores"] for line in lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="prompts")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    records = read_records("zoo:recall", n=args.n)
    tmp = Path(tempfile.mkdtemp())
    print(f"{args.n} zoo:recall prompts, shapley_sampling n_samples=16, 1 torch thread per process\n")
    print("| run | wall s | first result s | results/s after it |")
    print("| --- | ---: | ---: | ---: |")
    settings = [
        ("one process", None),
        *((f"Ray, {w} actor{'s' * (w > 1)}", Cluster("local", workers=w, chunk=4)) for w in (1, 2)),
    ]
    for name, cluster in settings:
        out = tmp / f"{name.replace(' ', '_').replace(',', '')}.jsonl"
        wall, first, rate = _timed(records, out, cluster)
        print(f"| {name} | {wall:.1f} | {first:.1f} | {rate:.2f} |", flush=True)
        if cluster is not None:
            assert _scores(out) == _scores(tmp / "one_process.jsonl"), "Ray's scores differ"


if __name__ == "__main__":
    main()
