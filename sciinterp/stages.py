"""Stage bookkeeping: skip a stage whose inputs and config are unchanged.

Each stage writes into ``<out>/<stage>/`` with its resolved config and a
``stage.json`` marker holding a content hash of (config, inputs).  A stage
whose marker says *complete* with the same hash is skipped; one that was
interrupted with the same hash is resumed (the stage's own code resumes);
a different hash over existing outputs is an error unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["StageError", "fingerprint", "run_stage"]

log = logging.getLogger(__name__)
MARKER = "stage.json"


class StageError(RuntimeError):
    """A stage cannot run as asked (conflicting outputs, missing inputs)."""


def _hash_path(path: Path, h: hashlib._Hash) -> None:
    marker = path / MARKER
    if marker.is_file():  # an upstream stage: its own key stands for its content
        h.update(json.loads(marker.read_text())["key"].encode())
    elif (path.parent / MARKER).is_file() and (path / "zarr.json").is_file():  # a store inside a stage
        h.update(json.loads((path.parent / MARKER).read_text())["key"].encode() + path.name.encode())
    elif _is_activation_store(path):  # its metadata (provenance + commit) stands for its content
        for meta in sorted(path.rglob("zarr.json")):
            h.update(str(meta.relative_to(path)).encode() + meta.read_bytes())
    elif path.is_file():
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    elif path.is_dir():
        for sub in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(sub.relative_to(path)).encode())
            _hash_path(sub, h)
    else:
        raise StageError(f"stage input {path} does not exist")


def _is_activation_store(path: Path) -> bool:
    from sciinterp.store_format import is_store

    return path.is_dir() and (is_store(path) or any(is_store(p) for p in path.glob("part-*-of-*.zarr")))


def fingerprint(config: Mapping[str, Any], inputs: Iterable[str | os.PathLike] = ()) -> str:
    """SHA-256 over the JSON of ``config`` and the content of ``inputs``.

    Files and plain directories are hashed byte for byte; an upstream stage
    directory (or a store inside one) by its stage key; an activation store by
    its metadata (provenance and commit record), not its gigabytes of rows.
    """
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for p in inputs:
        _hash_path(Path(p), h)
    return h.hexdigest()[:16]


def _write_marker(path: Path, record: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, path)


def run_stage(
    name: str,
    out: str | os.PathLike,
    config: Mapping[str, Any],
    fn: Callable[[Path], Any],
    *,
    inputs: Iterable[str | os.PathLike] = (),
    force: bool = False,
) -> Path:
    """Run ``fn(stage_dir)`` unless an identical run already completed.

    Parameters
    ----------
    name
        Stage name; outputs go to ``<out>/<name>``.
    config
        The stage's resolved configuration (JSON-serialisable); saved as ``config.json``.
    fn
        Does the work, writing into the directory it is given.
    inputs
        Files or upstream stage directories whose content the result depends on.
    force
        Delete existing outputs and redo.
    """
    stage_dir = Path(out) / name
    marker = stage_dir / MARKER
    key = fingerprint(config, inputs)
    if marker.is_file() and not force:
        old = json.loads(marker.read_text())
        if old["key"] == key and old["complete"]:
            log.info("%s: up to date in %s (key %s), skipping; --force redoes it", name, stage_dir, key)
            return stage_dir
        if old["key"] != key:
            raise StageError(
                f"{stage_dir} holds a {name} run with a different config or inputs "
                f"(key {old['key']} vs {key}); pass --force to replace it, or choose another out="
            )
        log.info("%s: resuming interrupted run in %s", name, stage_dir)
    elif force and stage_dir.exists():
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir / ".config.json.tmp"
    tmp.write_text(json.dumps(config, indent=1, sort_keys=True, default=str))
    os.replace(tmp, stage_dir / "config.json")
    _write_marker(marker, {"key": key, "complete": False})
    fn(stage_dir)
    _write_marker(marker, {"key": key, "complete": True})
    return stage_dir
