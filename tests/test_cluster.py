"""genattr.cluster without a cluster: how a Ray cluster is started or joined (a stand-in for the
``ray`` module records the calls), the options checked, a missing Ray reported with how to install
it, and the local run: results in order, torch's thread count set while it runs and restored."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from genattr.cli import main
from genattr.cluster import Cluster, ModelSpec, _connect, completed, fitting, import_ray
from genattr.errors import ClusterError, InvalidParameterError


class FakeRay:
    """Records ``ray.init``'s keywords and the usage-reporting setting it saw."""

    exceptions = SimpleNamespace(RayError=type("RayError", (Exception,), {}))

    def __init__(self, initialized: bool = False, fails: Exception | None = None) -> None:
        self.initialized, self.fails, self.calls = initialized, fails, []

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs) -> None:
        import os

        if self.fails is not None:
            raise self.fails
        self.calls.append((kwargs, os.environ.get("RAY_USAGE_STATS_ENABLED")))


def test_local_starts_a_cluster_of_the_workers_cpus_without_dashboard_or_usage_reports(monkeypatch):
    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    ray = FakeRay()
    assert _connect(ray, Cluster("local", workers=2, threads=3)) is True
    assert ray.calls == [({"num_cpus": 6, "include_dashboard": False}, "0")]
    ray = FakeRay()
    _connect(ray, Cluster("local"))
    assert ray.calls == [({"num_cpus": None, "include_dashboard": False}, "0")]


def test_a_usage_setting_of_the_user_is_kept_and_an_address_is_joined(monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    ray = FakeRay()
    assert _connect(ray, Cluster("10.0.0.5:6379", workers=4)) is True
    assert ray.calls == [({"address": "10.0.0.5:6379"}, "1")]


def test_a_session_of_the_caller_is_used_as_it_is():
    ray = FakeRay(initialized=True)
    assert _connect(ray, Cluster("local", workers=2)) is False and ray.calls == []


def test_an_address_that_cannot_be_reached_or_a_token_refused_is_a_cluster_error():
    ray = FakeRay(fails=ConnectionError("could not find any running Ray instance"))
    with pytest.raises(ClusterError, match="cannot start or join the Ray cluster at auto: could not find"):
        _connect(ray, Cluster("auto"))
    ray = FakeRay(fails=FakeRay.exceptions.RayError("token mismatch"))
    with pytest.raises(ClusterError, match="at h:1: token mismatch; .* the cluster's token"):
        _connect(ray, Cluster("h:1"))


@pytest.mark.parametrize(
    "kwargs, name", [({"workers": 0}, "workers"), ({"chunk": 0}, "chunk"), ({"threads": 1.5}, "threads")]
)
def test_cluster_options_are_checked(kwargs, name):
    with pytest.raises(InvalidParameterError, match=f"{name} must be an integer of at least 1"):
        Cluster(**kwargs)


def test_without_ray_installed_the_error_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ClusterError, match=r"pip install 'genattr\[ray\]'"):
        import_ray()
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "copy a b again a", "target": " b"}\n')
    args = ["explain", "--data", str(data), "--out", str(tmp_path / "r.jsonl"), "--ray", "local", "-q"]
    assert main(args) == 2
    assert "Ray is not installed" in capsys.readouterr().err and not (tmp_path / "r.jsonl").exists()


def test_a_local_run_gives_results_in_order_with_the_thread_count_it_was_given():
    before = torch.get_num_threads()
    lm = SimpleNamespace(name="stand-in")
    seen = []

    def task(model, item):
        seen.append(torch.get_num_threads())
        return model.name, item * 2

    got = list(completed(task, [3, 1, 2], ModelSpec("unused"), threads=1, lm=lm))
    assert got == [(0, ("stand-in", 6)), (1, ("stand-in", 2)), (2, ("stand-in", 4))]
    assert seen == [1, 1, 1] and torch.get_num_threads() == before


def test_the_workers_are_those_asked_for_or_as_many_as_fit_and_never_more():
    assert fitting(Cluster(workers=3, threads=2), 8) == 3
    assert fitting(Cluster(threads=3), 8) == 2 and fitting(Cluster(), 5) == 5
    with pytest.raises(
        ClusterError, match=r"has 8 CPUs, too few for 3 worker\(s\) of 3 thread\(s\) .* at most 2 fit"
    ):
        fitting(Cluster(workers=3, threads=3), 8)
    with pytest.raises(
        ClusterError, match=r"has 2 CPUs, too few for 1 worker\(s\) of 4 thread\(s\) .* at most 0 fit"
    ):
        fitting(Cluster(threads=4), 2)
