"""Sources of activation rows for training: anything that yields ``(batch, d)`` tensors.

The trainer only needs :class:`RowSource`; an activation store (:class:`StoreSource`),
a ``.npy`` file and an in-memory array (:class:`ArraySource`) all fit it, and
:func:`as_source` picks the right one.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
import zarr

from sciinterp.store_format import DTYPE_ATTR, StoreError, decode_rows, read_commit, store_parts

__all__ = ["ArraySource", "HookSources", "RowSource", "StoreSource", "as_source", "read_ahead"]

log = logging.getLogger(__name__)


@runtime_checkable
class RowSource(Protocol):
    """Rows of activations, shape ``(n_rows, d_in)``, read in mini-batches."""

    @property
    def d_in(self) -> int: ...

    @property
    def n_rows(self) -> int: ...

    def batches(
        self, batch_size: int, *, seed: int = 0, shuffle: bool = True, start_row: int = 0
    ) -> Iterator[torch.Tensor]:
        """Yield float32 tensors ``(batch_size, d_in)`` (the last may be shorter).

        One call is one pass (epoch) over the rows, deterministic for ``seed``.
        ``start_row`` skips that many rows of the pass (to resume a run).
        """
        ...


class ArraySource:
    """Rows from an in-memory array/tensor or a ``(N, d)`` ``.npy`` file (memory-mapped).

    Parameters
    ----------
    data
        ``numpy.ndarray``, ``torch.Tensor`` or path to a ``.npy`` file, shape ``(N, d)``.
    """

    def __init__(self, data: np.ndarray | torch.Tensor | str | os.PathLike):
        self.origin = str(data) if isinstance(data, (str, os.PathLike)) else "<array>"
        if isinstance(data, (str, os.PathLike)):
            path = Path(data)
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist (expected an activation store directory or a (N, d) .npy file)")
            try:
                data = np.load(path, mmap_mode="r")
            except ValueError as err:
                raise ValueError(f"{path} is not a .npy array: {err}") from err
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu()
            data = (data.float() if data.dtype == torch.bfloat16 else data).numpy()  # numpy has no bfloat16
        if data.ndim != 2:
            raise ValueError(f"activation array {self.origin} has shape {data.shape}, expected (N, d)")
        if data.dtype.kind != "f":
            raise ValueError(f"activation array {self.origin} has dtype {data.dtype}, expected floats")
        self.data = data

    @property
    def d_in(self) -> int:
        return int(self.data.shape[1])

    @property
    def n_rows(self) -> int:
        return int(self.data.shape[0])

    def batches(
        self, batch_size: int, *, seed: int = 0, shuffle: bool = True, start_row: int = 0
    ) -> Iterator[torch.Tensor]:
        if batch_size < 1 or start_row < 0:
            raise ValueError(f"need batch_size >= 1 and start_row >= 0, got {batch_size} and {start_row}")
        n = self.n_rows
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        for i in range(start_row, n, batch_size):
            idx = order[i : i + batch_size]
            if shuffle:
                idx = np.sort(idx)  # sorted gathers are faster on memory maps
            yield torch.from_numpy(np.ascontiguousarray(self.data[idx], dtype=np.float32))


class _Chunk(NamedTuple):
    """Rows ``[start, stop)`` of part ``part`` of a store: one zarr chunk."""

    part: int
    start: int
    stop: int


class _Window(NamedTuple):
    """A filled shuffle window: pass-local index, buffer, and the rows of it in use."""

    index: int
    buffer: np.ndarray
    rows: int


class StoreSource:
    """Rows of one hook of an activation store, streamed in shuffled mini-batches.

    Memory stays bounded whatever the store's size: a pass visits the store's
    chunks in a random order (chunk-level shuffle), reads consecutive chunks of
    that order into a *shuffle window* of at most ``buffer_rows`` rows (at least
    one chunk), and yields the window's rows in a random order (a fresh
    permutation per window).  With ``prefetch`` a background thread fills the
    next window while the current one is consumed.  Chunks are decoded straight
    into the window (``float16``/``bfloat16`` -> ``float32``).

    Peak memory is about ``(1 + prefetch) * buffer_rows * d_in * 4`` bytes, plus
    two chunks' worth of zarr's decoding buffers and one batch.

    Parameters
    ----------
    path
        A store (``*.zarr``) or a directory of store parts (read as one, in rank order).
    hook
        The hook to read; may be omitted if the store holds exactly one.
    buffer_rows
        Rows per shuffle window.  Default: as many rows as fit in 128 MiB of
        float32 (so 256 MiB with ``prefetch``), at least one chunk.
    prefetch
        Fill the next window in a background thread (doubles the window memory).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        hook: str | None = None,
        *,
        buffer_rows: int | None = None,
        prefetch: bool = True,
    ) -> None:
        self.path = Path(path)
        parts = store_parts(self.path)
        self._arrays: list = []
        self._chunks: list[_Chunk] = []
        hooks: list[str] | None = None
        for i, part in enumerate(parts):
            rec = read_commit(part)
            group = zarr.open_group(part, mode="r", zarr_format=3)
            part_hooks = sorted(n for n in rec["arrays"] if group[n].ndim == 2)
            if hooks is None:
                hooks = part_hooks
                if not hooks:
                    raise StoreError(f"{part} holds no activations yet (nothing committed)")
                if hook is None and len(hooks) != 1:
                    raise StoreError(
                        f"{self.path} holds {len(hooks)} hooks {hooks}; choose one with hook=..., "
                        f"e.g. as_source({str(self.path)!r}, hook={hooks[0]!r})"
                    )
                hook = hook or hooks[0]
                if hook not in hooks:
                    raise StoreError(f"{self.path} has no hook {hook!r}; it holds {hooks}")
            elif part_hooks != hooks:
                raise StoreError(f"part {part.name} of {self.path} holds hooks {part_hooks}, part {parts[0].name} {hooks}")
            arr = group[hook]
            if self._arrays and arr.shape[1] != self._arrays[0].shape[1]:
                raise StoreError(
                    f"hook {hook!r} is {arr.shape[1]} wide in {part.name} but {self._arrays[0].shape[1]} in {parts[0].name}"
                )
            self._arrays.append(arr)
            step = arr.chunks[0]
            n = rec["n_rows"]
            self._chunks += [_Chunk(i, s, min(s + step, n)) for s in range(0, n, step)]
        self.hook: str = hook  # type: ignore[assignment]
        self.dtype: str = self._arrays[0].attrs.get(DTYPE_ATTR, "float32") if self._arrays else "float32"
        self._d = int(self._arrays[0].shape[1]) if self._arrays else 0
        self.chunk_rows = max((c.stop - c.start for c in self._chunks), default=1)
        if buffer_rows is None:
            buffer_rows = (128 << 20) // (4 * max(self._d, 1))
        if buffer_rows < 1:
            raise ValueError(f"buffer_rows must be >= 1, got {buffer_rows}")
        self.buffer_rows = max(int(buffer_rows), self.chunk_rows)
        self.prefetch = bool(prefetch)

    @property
    def d_in(self) -> int:
        return self._d

    @property
    def n_rows(self) -> int:
        return sum(c.stop - c.start for c in self._chunks)

    def __repr__(self) -> str:
        return f"StoreSource({str(self.path)!r}, hook={self.hook!r}, n_rows={self.n_rows}, d_in={self.d_in})"

    # -- reading -----------------------------------------------------------
    def _fill(self, chunks: Sequence[_Chunk], buf: np.ndarray, scratch: list) -> int:
        """Read ``chunks`` one after the other into ``buf`` (float32); return the rows filled."""
        from zarr.core.buffer import cpu

        row = 0
        for c in chunks:
            m = c.stop - c.start
            arr = self._arrays[c.part]
            if self.dtype == "float32":
                arr.get_basic_selection(slice(c.start, c.stop), out=cpu.NDBuffer.from_numpy_array(buf[row : row + m]))
            else:
                if not scratch:
                    scratch.append(np.empty((self.chunk_rows, self._d), arr.dtype))
                raw = scratch[0][:m]
                arr.get_basic_selection(slice(c.start, c.stop), out=cpu.NDBuffer.from_numpy_array(raw))
                buf[row : row + m] = decode_rows(raw, self.dtype)
            row += m
        return row

    def _filled(self, windows: Sequence[list[_Chunk]], first: int) -> Iterator[_Window]:
        """Windows ``first...`` read into (1 + prefetch) reusable buffers, ahead by a thread if ``prefetch``."""
        size = max((sum(c.stop - c.start for c in w) for w in windows), default=0)
        free: queue.Queue = queue.Queue()
        for _ in range(1 + self.prefetch):
            free.put(np.empty((size, self._d), np.float32))

        def fill() -> Iterator[_Window]:  # takes a buffer only once the consumer has handed one back
            scratch: list = []
            for i in range(first, len(windows)):
                if (buf := free.get()) is None:
                    return
                yield _Window(i, buf, self._fill(windows[i], buf, scratch))

        ahead = read_ahead(fill(), int(self.prefetch), name="StoreSource-prefetch")
        try:
            for w in ahead:
                yield w
                free.put(w.buffer)
        finally:
            free.put(None)  # unblock a reader waiting for a buffer, then stop it
            ahead.close()

    def _windows(self, seed: int, shuffle: bool) -> list[list[_Chunk]]:
        """The pass's chunk order, cut into windows of at most ``buffer_rows`` rows (at least one chunk)."""
        order = np.random.default_rng(seed).permutation(len(self._chunks)) if shuffle else range(len(self._chunks))
        windows: list[list[_Chunk]] = []
        rows = self.buffer_rows
        for i in order:
            c = self._chunks[i]
            if rows + (c.stop - c.start) > self.buffer_rows:
                windows.append([])
                rows = 0
            windows[-1].append(c)
            rows += c.stop - c.start
        return windows

    def batches(
        self, batch_size: int, *, seed: int = 0, shuffle: bool = True, start_row: int = 0
    ) -> Iterator[torch.Tensor]:
        """Yield float32 tensors ``(batch_size, d_in)`` (the last may be shorter).

        One call is one pass over the rows, deterministic for ``seed`` (and
        ``buffer_rows``); ``start_row`` skips that many rows of the pass, reading
        only from the window it falls in (``batches(b, start_row=k * b)`` yields
        what a full pass yields after ``k`` batches).  Without ``shuffle`` rows
        come in store order.
        """
        if batch_size < 1 or start_row < 0:
            raise ValueError(f"need batch_size >= 1 and start_row >= 0, got {batch_size} and {start_row}")
        windows = self._windows(seed, shuffle)
        sizes = [sum(c.stop - c.start for c in w) for w in windows]
        first, skip = 0, start_row
        while first < len(windows) and skip >= sizes[first]:
            skip -= sizes[first]
            first += 1
        carry: np.ndarray | None = None
        for w in self._filled(windows, first):
            window = w.buffer[: w.rows]
            perm = np.random.default_rng((seed, w.index)).permutation(w.rows) if shuffle else None
            pos = skip if w.index == first else 0
            while pos < w.rows:
                end = min(pos + batch_size - (0 if carry is None else len(carry)), w.rows)
                rows = window[perm[pos:end]] if perm is not None else window[pos:end].copy()  # buffers are reused
                pos = end
                if carry is not None:
                    rows, carry = np.concatenate([carry, rows]), None
                if len(rows) == batch_size:
                    yield torch.from_numpy(rows)
                else:
                    carry = rows
        if carry is not None and len(carry):
            yield torch.from_numpy(carry)


T = TypeVar("T")


def read_ahead(items: Iterable[T], depth: int = 2, name: str = "sciinterp-read-ahead") -> Iterator[T]:
    """Yield ``items`` while a background thread (called ``name``) produces up to ``depth`` of them ahead.

    Overlaps reading (memory-mapped files, stores) with the consumer's compute.  An
    exception in the producer is raised in the consumer; closing the generator stops
    the producer.  ``depth=0`` iterates in the caller's thread.
    """
    if depth <= 0:
        yield from items
        return
    done = object()
    full: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        full.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            full.put(done)
        except BaseException as err:  # handed to the consumer
            full.put(err)

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while (item := full.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                full.get_nowait()
            except queue.Empty:
                thread.join(0.05)


class HookSources:
    """Several hooks' rows of the same tokens, read in lockstep: batches are ``{hook: (B, d_hook)}``.

    Lets one pass over the data train SAEs on several hook points (each ``SAEConfig.hook``
    picks its rows).  Every hook's source sees the same ``seed``/``start_row``, so row
    ``i`` of every batch is the same token; for stores this needs every hook chunked
    alike (true of what :func:`sciinterp.harvest.harvest_to_store` writes) and one
    shuffle window size, which is set to the smallest default of the hooks.

    Parameters
    ----------
    sources
        ``{hook: RowSource}`` with equal ``n_rows``.
    """

    def __init__(self, sources: dict[str, RowSource]):
        if not sources:
            raise ValueError("HookSources needs at least one hook")
        self.sources = dict(sources)
        n = {h: s.n_rows for h, s in self.sources.items()}
        if len(set(n.values())) != 1:
            raise ValueError(f"hooks hold different numbers of rows {n}; they must describe the same tokens")
        layouts = {h: getattr(s, "_chunks", None) for h, s in self.sources.items()}
        first = next(iter(layouts.values()))
        if any(v != first for v in layouts.values()):
            raise ValueError(f"hooks {list(layouts)} are chunked differently, so shuffled batches would not align; "
                             "harvest them into one store with one chunk_rows")

    @classmethod
    def from_store(cls, path: str | os.PathLike, hooks: Sequence[str], **kwargs) -> HookSources:
        """``hooks`` of the store at ``path`` (``kwargs``: :class:`StoreSource`'s ``buffer_rows``, ``prefetch``)."""
        if not hooks:
            raise ValueError(f"no hooks named for {path}")
        if kwargs.get("buffer_rows") is None:  # one window size, so every hook shuffles alike
            kwargs["buffer_rows"] = min(StoreSource(path, h, prefetch=False).buffer_rows for h in hooks)
        return cls({h: StoreSource(path, h, **kwargs) for h in hooks})

    @property
    def hooks(self) -> list[str]:
        return list(self.sources)

    @property
    def d_ins(self) -> dict[str, int]:
        """Width of every hook's rows."""
        return {h: s.d_in for h, s in self.sources.items()}

    @property
    def n_rows(self) -> int:
        return next(iter(self.sources.values())).n_rows

    def __repr__(self) -> str:
        return f"HookSources({self.d_ins}, n_rows={self.n_rows})"

    def batches(
        self, batch_size: int, *, seed: int = 0, shuffle: bool = True, start_row: int = 0
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield ``{hook: float32 (batch_size, d_hook)}`` of the same tokens (see :meth:`RowSource.batches`)."""
        its = {h: s.batches(batch_size, seed=seed, shuffle=shuffle, start_row=start_row) for h, s in self.sources.items()}
        for parts in zip(*its.values(), strict=True):
            yield dict(zip(its, parts))


def as_source(
    data: RowSource | HookSources | np.ndarray | torch.Tensor | str | os.PathLike,
    hook: str | Sequence[str] | None = None, **kwargs,
) -> RowSource | HookSources:
    """Turn what a user has into a :class:`RowSource`.

    Parameters
    ----------
    data
        A :class:`RowSource` (returned as is); a store or directory of store parts
        (:class:`StoreSource`); a ``(N, d)`` ``.npy`` file, ``numpy.ndarray`` or
        ``torch.Tensor`` (:class:`ArraySource`).
    hook
        For stores: which hook to read (required if the store holds several), or a
        list of hooks read in lockstep (:class:`HookSources`).  Ignored for arrays,
        which hold one hook.
    kwargs
        Passed to :class:`StoreSource` (``buffer_rows``, ``prefetch``).
    """
    if isinstance(data, (RowSource, HookSources)):
        return data
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
        if hook is not None and not isinstance(hook, str):
            return HookSources.from_store(data, list(hook), **kwargs)
        return StoreSource(data, hook, **kwargs)
    if isinstance(data, (str, os.PathLike, np.ndarray, torch.Tensor)):
        return ArraySource(data)
    raise TypeError(
        f"cannot read activation rows from {type(data).__name__}; pass a store path, a .npy path, "
        "a numpy array, a torch tensor, or an object with d_in, n_rows and batches()"
    )
