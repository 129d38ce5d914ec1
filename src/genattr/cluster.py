"""One task over many items with a model, here or on a Ray cluster (the ``ray`` extra).

:func:`completed` applies ``task(lm, item)`` to every item and yields ``(index, result)`` as each
result is done. Without a :class:`Cluster` it runs here, in order, on one model. With one it starts
(``address="local"``) or joins (a Ray address) a Ray cluster and runs ``workers`` actors: each
loads the model once from its :class:`ModelSpec` (the spec travels, not the model), sets its torch
thread count to ``threads`` (Ray would set it from the actor's CPUs otherwise), takes the items in
chunks of ``chunk`` and sends each result back as soon as it is done, so results arrive in order of
completion. A task reads nothing but the model and its item, so a result does not depend on the
process that made it: with the same thread count it equals the result computed here bit for bit.

A worker that dies mid-run (killed, out of memory, its node lost) ends the run with a
:class:`~genattr.errors.ClusterError` once the other workers have sent what they were computing;
so does an error of a task (raised again here, with its own type). Ray's usage reporting is off
(``RAY_USAGE_STATS_ENABLED=0``) unless the environment says otherwise, and a local cluster starts
without its dashboard. When the process already has a Ray session (``ray.init`` called by the
caller), it is used as it is.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ClusterError, GenattrError, InvalidParameterError

if TYPE_CHECKING:
    from .model import LanguageModel

LOCAL = "local"
"""The address that starts a Ray cluster on this machine for the run."""

DEFAULT_CHUNK = 4
"""Items an actor takes at a time."""

Task = Callable[["LanguageModel", Any], Any]
"""A function of the model and one item; it must be picklable (a module-level function, or a
``functools.partial`` of one) to travel to the actors."""


@dataclass(frozen=True)
class ModelSpec:
    """What :func:`genattr.load` takes to load a model: a path (kept as text), hub id or catalog
    name, a device and a dtype (None: load's defaults), and whether to checkpoint its layers."""

    source: str
    device: str | None = None
    dtype: str | None = None
    checkpoint_layers: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", os.fspath(self.source))  # a path is kept as its text

    def load(self) -> LanguageModel:
        from .model import load

        return load(
            self.source, device=self.device, dtype=self.dtype, checkpoint_layers=self.checkpoint_layers
        )

    @classmethod
    def of(cls, lm: LanguageModel) -> ModelSpec:
        """The spec that loads ``lm`` again: its name (the path, hub id or catalog name it was
        loaded from) and dtype, on each worker's default device."""
        return cls(lm.name, None, str(lm.dtype).removeprefix("torch."))


@dataclass(frozen=True)
class Cluster:
    """Where and how to run on Ray: ``address`` (``"local"``, or a cluster's address such as
    ``"auto"`` or ``"HOST:6379"``), ``workers`` actors (None: the cluster's CPUs divided by
    ``threads``), ``chunk`` items per request, ``threads`` torch threads and CPUs per actor."""

    address: str = LOCAL
    workers: int | None = None
    chunk: int = DEFAULT_CHUNK
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("workers", "chunk", "threads"):
            value = getattr(self, name)
            if (value is not None or name != "workers") and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise InvalidParameterError(f"{name} must be an integer of at least 1, got {value!r}.")


def completed(
    task: Task,
    items: Sequence,
    spec: ModelSpec,
    *,
    cluster: Cluster | None = None,
    threads: int | None = None,
    lm: LanguageModel | None = None,
) -> Generator[tuple[int, Any], None, None]:
    """``(index, task(model, items[index]))`` for every item, as each is done.

    Here (``cluster`` None) on ``lm``, or the model of ``spec`` loaded once, with ``threads`` torch
    threads while it runs (None: as they are); on Ray with the cluster's workers and threads."""
    if cluster is None:
        return _here(task, items, lm or spec.load(), threads)
    return _on_ray(task, items, spec, cluster)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` while open (None: left as it is)."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _here(
    task: Task, items: Sequence, lm: LanguageModel, threads: int | None
) -> Generator[tuple[int, Any], None, None]:
    with torch_threads(threads):
        for index, item in enumerate(items):
            yield index, task(lm, item)


class Worker:
    """A Ray actor's state: the model, loaded once, and the task. A failure to load is kept and
    sent back by :meth:`run` as a value, so that it arrives here with its own type."""

    def __init__(self, spec: ModelSpec, threads: int, task: Task) -> None:
        import torch

        torch.set_num_threads(threads)
        self.task = task
        self.lm: LanguageModel | None = None
        self.error: GenattrError | None = None
        try:
            self.lm = spec.load()
        except GenattrError as exc:
            self.error = exc

    def run(self, chunk: list[tuple[int, Any]]) -> Iterator[tuple[int | None, Any, GenattrError | None]]:
        """``(index, result, None)`` for each item of the chunk in turn, or ``(index, None, error)``
        for the first that fails, and nothing after it."""
        if self.lm is None:
            yield None, None, self.error
            return
        for index, item in chunk:
            try:
                result = self.task(self.lm, item)
            except GenattrError as exc:
                yield index, None, exc
                return
            yield index, result, None


def import_ray():
    """The ``ray`` module, or a ClusterError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ClusterError(
            f"Ray is not installed ({exc}); install the extra: pip install 'genattr[ray]'."
        ) from exc
    return ray


def _connect(ray, cluster: Cluster) -> bool:
    """Start or join the cluster unless this process has a Ray session; whether it did."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if cluster.address == LOCAL:
            cpus = cluster.workers * cluster.threads if cluster.workers else None
            ray.init(num_cpus=cpus, include_dashboard=False)
        else:
            ray.init(address=cluster.address)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:  # or a token refused
        where = "a local Ray cluster" if cluster.address == LOCAL else f"the Ray cluster at {cluster.address}"
        raise ClusterError(
            f"cannot start or join {where}: {exc}; check the address (`ray status` on the head node "
            "prints it) and, with token authentication, that this machine has the cluster's token."
        ) from exc
    return True


def fitting(cluster: Cluster, cpus: int) -> int:
    """The actors of ``cluster`` on ``cpus`` CPUs: ``workers``, or as many as fit (``cpus //
    threads``); a ClusterError when they do not fit (an actor that cannot be placed waits forever)."""
    fit = cpus // cluster.threads
    if fit < 1 or (cluster.workers or 0) > fit:
        raise ClusterError(
            f"the Ray cluster has {cpus} CPUs, too few for {cluster.workers or 1} worker(s) of "
            f"{cluster.threads} thread(s) each (one CPU a thread): at most {fit} fit; ask for fewer "
            "--workers or --threads, or add nodes."
        )
    return cluster.workers or fit


def _on_ray(
    task: Task, items: Sequence, spec: ModelSpec, cluster: Cluster
) -> Generator[tuple[int, Any], None, None]:
    ray = import_ray()
    if not items:
        return
    started = _connect(ray, cluster)
    actors: list = []
    try:
        chunks = deque(_chunks(list(enumerate(items)), cluster.chunk))
        workers = min(fitting(cluster, int(ray.cluster_resources().get("CPU", 0))), len(chunks))
        remote = ray.remote(Worker).options(num_cpus=cluster.threads)
        actors = [remote.remote(spec, cluster.threads, task) for _ in range(workers)]
        running: dict = {}

        def submit(actor) -> None:
            if chunks:
                running[actor.run.remote(chunks.popleft())] = actor

        for actor in actors:
            submit(actor)
        failure: BaseException | None = None
        while running:
            (stream,), _ = ray.wait(list(running), num_returns=1)
            try:
                index, result, error = ray.get(next(stream))
            except StopIteration:
                actor = running.pop(stream)
                if failure is None:
                    submit(actor)
                continue
            except ray.exceptions.RayActorError as exc:
                running.pop(stream)
                failure = failure or ClusterError(
                    f"a Ray worker died ({str(exc).splitlines()[0]}); the results finished before it are "
                    "kept: run the same command again to compute the rest."
                )
                continue
            if error is not None:
                running.pop(stream)
                failure = failure or error
                continue
            yield index, result
        if failure is not None:
            raise failure
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
