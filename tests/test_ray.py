"""Dataset runs and the benchmark on a local Ray cluster started by the test (2 CPUs, 2 actors of
one torch thread each): results equal the single-process run's bit for bit, for a deterministic
method and, per seed, for a stochastic one on a model loaded by path; a run interrupted mid-way
resumes on Ray; a worker that dies loses no finished result and the re-run completes.
Skipped when Ray (the ``ray`` extra) is not installed."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'genattr[ray]' runs these tests")

from genattr.cluster import Cluster, ModelSpec, completed  # noqa: E402
from genattr.dataset import read_records, run_dataset  # noqa: E402
from genattr.errors import ClusterError  # noqa: E402
from genattr.evaluate.benchmark import load_items, run_benchmark  # noqa: E402
from genattr.testing import build  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::genattr.errors.UnknownTokensWarning")

ON_RAY = Cluster(workers=2, chunk=3, threads=1)


@pytest.fixture(scope="module")
def session():
    """One local Ray session for the module; the runs use it as it is."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the tasks defined here travel
    yield
    ray.shutdown()


def _lines(path: Path) -> dict[str, dict]:
    """The results by input, without the timings that differ from run to run."""
    found = {}
    for line in path.read_text().splitlines():
        data = json.loads(line)
        for key in ("seconds", "model_seconds"):
            data["diagnostics"].pop(key)
        found[data["request"]["input_hash"]] = data
    return found


def test_a_deterministic_method_on_ray_equals_the_local_run(session, tmp_path):
    records = read_records("zoo:recall", n=10, seed=1)
    run_dataset("zoo", records, tmp_path / "here.jsonl", threads=1, method="leave_one_out")
    counts = run_dataset("zoo", records, tmp_path / "ray.jsonl", cluster=ON_RAY, method="leave_one_out")
    assert counts == {"total": 10, "reused": 0, "computed": 10}
    here, there = _lines(tmp_path / "here.jsonl"), _lines(tmp_path / "ray.jsonl")
    assert len(there) == 10 and here == there


def test_a_stochastic_method_on_ray_interrupted_and_resumed_equals_the_local_run(session, tmp_path):
    model = ModelSpec(build("llama", tmp_path / "model", seed=3))  # saved with save_pretrained
    records = read_records("zoo:copy", n=10, seed=2)
    options = {"method": "shapley_sampling", "seed": 11, "params": {"n_samples": 4}}
    run_dataset(model, records, tmp_path / "here.jsonl", threads=1, **options)

    def interrupt_after_four(done, total, note):
        if done == 4:
            raise KeyboardInterrupt

    out = tmp_path / "ray.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_dataset(model, records, out, cluster=ON_RAY, progress=interrupt_after_four, **options)
    assert len(out.read_text().splitlines()) == 4
    counts = run_dataset(model, records, out, cluster=ON_RAY, **options)
    assert counts == {"total": 10, "reused": 4, "computed": 6}
    assert _lines(out) == _lines(tmp_path / "here.jsonl")


def _dies_once(lm, item: int, *, marker: str) -> int:
    """item x 10, but the first time, the worker's process ends a second into item 3 (the results
    it sent before are on their way: a process that ends at once may take them with it)."""
    if item == 3 and not os.path.exists(marker):
        Path(marker).touch()
        time.sleep(1)
        os._exit(1)
    return item * 10


def test_a_worker_that_dies_loses_no_finished_result_and_the_rerun_completes(session, tmp_path):
    task = functools.partial(_dies_once, marker=str(tmp_path / "died"))
    items = list(range(8))
    got: dict[int, int] = {}
    with pytest.raises(ClusterError, match="a Ray worker died .* run the same command again"):
        for index, result in completed(task, items, ModelSpec("zoo"), cluster=Cluster(workers=2, chunk=2)):
            got[items[index]] = result
    assert 2 in got and 3 not in got  # 2 finished before its worker died at 3
    left = [i for i in items if i not in got]
    for index, result in completed(task, left, ModelSpec("zoo"), cluster=Cluster(workers=2, chunk=2)):
        got[left[index]] = result
    assert got == {i: i * 10 for i in items}


def test_the_benchmark_on_ray_gives_the_local_rows(session, tmp_path):
    import genattr

    zoo = genattr.load("zoo")
    items, _ = load_items(["zoo:copy"], n=3, seed=4)
    settings = {"metrics": ["ground_truth", "erasure"], "max_new_tokens": 3}
    methods = ["leave_one_out", "random"]
    here = run_benchmark(zoo, methods, items, tmp_path / "here", threads=1, **settings)["rows"]
    there = run_benchmark(zoo, methods, items, tmp_path / "ray", cluster=ON_RAY, **settings)["rows"]

    def key(row):
        return row["method"], row["example"]

    def stable(row):
        return {k: v for k, v in row.items() if k not in ("seconds", "cpu_seconds", "peak_rss_mb")}

    assert len(there) == 6
    assert sorted(map(stable, here), key=key) == sorted(map(stable, there), key=key)
