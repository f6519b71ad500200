"""Run an adapter over its data and write the activations into a store.

``harvest_to_store`` is the one place that drives an :class:`~sciinterp.adapter.Adapter`:
it resumes a store that exists (committed items are skipped), shows progress,
records provenance, and can split the items across processes (``part=(rank, world)``),
each process writing its own part of one store (see :func:`sciinterp.store.open_store`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from sciinterp.adapter import Adapter
from sciinterp.provenance import environment, file_checksum
from sciinterp.store import StoreError, StoreWriter, is_store, part_path

__all__ = ["describe_data", "harvest_to_store"]

log = logging.getLogger(__name__)


def _rank_of(key: str, world: int) -> int:
    """Stable item -> process assignment (independent of Python's hash seed)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % world


def describe_data(data: Any) -> tuple[str, str]:
    """``(description, content hash)`` of a harvest's input, recorded in the store's provenance.

    Paths are hashed by content (SHA-256 of the file, or of every file below a
    directory); lists of scalars by their JSON; other objects by
    ``dask.base.tokenize`` (deterministic for arrays, xarray objects and dataclasses).
    """
    if isinstance(data, (str, os.PathLike)) and Path(data).exists():
        return str(data), file_checksum(data)
    if isinstance(data, (list, tuple)) and all(isinstance(x, (int, float, str, bool)) for x in data):
        text = json.dumps(list(data))
        return (text if len(text) <= 200 else f"{type(data).__name__} of {len(data)}"), hashlib.sha256(
            text.encode()
        ).hexdigest()[:16]
    from dask.base import tokenize

    return f"{type(data).__module__}.{type(data).__qualname__}", tokenize(data)[:16]


class _Skip(Collection[str]):
    """Items not to run: already stored, or owned by another process."""

    def __init__(self, done: frozenset[str], rank: int, world: int):
        self.done, self.rank, self.world = done, rank, world

    def __contains__(self, key: object) -> bool:
        return key in self.done or (self.world > 1 and _rank_of(str(key), self.world) != self.rank)

    def __iter__(self) -> Iterator[str]:
        return iter(self.done)

    def __len__(self) -> int:
        return len(self.done)


def harvest_to_store(
    adapter: Adapter,
    data: Any,
    hooks: Sequence[str],
    path: str | os.PathLike,
    *,
    dtype: Literal["float32", "float16", "bfloat16"] = "float32",
    chunk_rows: int | None = None,
    flush_rows: int | None = None,
    nonfinite: Literal["error", "drop"] = "error",
    compression: Literal["lz4", "zstd", "none"] = "lz4",
    attrs: Mapping[str, Any] | None = None,
    part: tuple[int, int] | None = None,
    progress: bool = True,
    write_behind: bool = True,
) -> Path:
    """Record ``hooks`` of ``adapter`` over ``data`` into the store at ``path``.

    Parameters
    ----------
    adapter, data
        Any object fitting :class:`~sciinterp.adapter.Adapter` and its input.
    hooks
        Hook names, a subset of ``adapter.hook_names()``.
    path
        Store directory.  An existing store is resumed: its committed items are skipped.
    dtype, chunk_rows, flush_rows, nonfinite, compression
        See :class:`~sciinterp.store.StoreWriter`.
    attrs
        Extra provenance (e.g. ``{"config": resolved_config}``), added to the store's
        attributes next to ``adapter``, ``hooks``, the adapter's ``provenance()``
        (``model_id``, ``model_checksum``), ``dtype``, ``data_source``, ``data_hash``
        and ``sciinterp_version``.
    part
        ``(rank, world)``: this process harvests only its share of the items into
        ``<path>/part-<rank>-of-<world>.zarr``; ``open_store(path)`` reads all parts as one.
    progress
        Show a progress bar (tokens harvested).
    write_behind
        Write to the store in a background thread while the model computes the next batch.

    Returns
    -------
    Path of the store (or of this process's part).
    """
    unknown = [h for h in hooks if h not in adapter.hook_names()]
    if unknown:
        raise ValueError(f"unknown hooks {unknown} for adapter {adapter.name!r}; it has {adapter.hook_names()}")
    rank, world = part or (0, 1)
    if not 0 <= rank < world:
        raise ValueError(f"part=(rank={rank}, world={world}) needs 0 <= rank < world")
    if part and is_store(path):
        raise StoreError(f"{path} is a single store; cannot add part {rank} of {world} to it (use another path)")
    if not part and Path(path).is_dir() and any(Path(path).glob("part-*-of-*.zarr")):
        raise StoreError(f"{path} holds store parts; pass part=(rank, world) or choose another path")
    target = part_path(path, rank, world) if part else Path(path)
    source, source_hash = describe_data(data)
    env = environment()
    record = {
        "adapter": adapter.name,
        "hooks": list(hooks),
        **adapter.provenance(),
        "dtype": dtype,
        "data_source": source,
        "data_hash": source_hash,
        "sciinterp_version": env["sciinterp"],
        **{f"env_{k}": v for k, v in env.items()},
        **dict(attrs or {}),
    }
    writer = StoreWriter(
        target, dtype=dtype, chunk_rows=chunk_rows, flush_rows=flush_rows, attrs=record, nonfinite=nonfinite,
        compression=compression,
    )
    skip = _Skip(writer.done_items, rank, world)
    bar = tqdm(desc=f"harvest {adapter.name}", unit="tok", initial=writer.n_rows, disable=not progress)
    completed = False
    sink = _WriteBehind(writer) if write_behind else None
    try:
        try:
            for batch in adapter.harvest(data, list(hooks), skip=skip):
                sink.put(batch) if sink else writer.append(batch)
                bar.update(batch.n_tokens)
        finally:
            if sink:
                sink.finish()  # writes what is queued (whole items); re-raises the writer's error
        completed = True
    finally:
        bar.close()
        writer.close(complete=completed)
    log.info("harvested %d tokens into %s", writer.n_rows, target)
    return target


class _WriteBehind:
    """Append batches to a :class:`StoreWriter` from a background thread.

    The model computes the next batch while the previous one is converted,
    compressed and written (torch and zarr's codecs release the GIL).  At most
    ``depth`` batches wait; order, commits and crash safety are the writer's own.
    """

    def __init__(self, writer: StoreWriter, depth: int = 2):
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="harvest-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.writer.append(batch)
                except BaseException as err:  # handed to the harvesting thread
                    self.error = err

    def put(self, batch: Any) -> None:
        if self.error is not None:
            self.finish()
        self.queue.put(batch)

    def finish(self) -> None:
        """Wait until every queued batch is written; re-raise the writer's error, if any."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            err, self.error = self.error, None
            raise err
