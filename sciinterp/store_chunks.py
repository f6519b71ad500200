"""The store writer's own zarr v3 output: array metadata and whole chunks, written as files.

zarr-python 3 spends about a millisecond of CPU on every array operation (an asyncio
round trip, a thread-pool hop per chunk, metadata objects) on top of the bytes.  A
harvest appends to ~10 arrays at every flush, so against a small model's forward pass
that fixed cost dominated (``docs/store.md``, "Harvest overhead").  The writer therefore
writes the zarr v3 files itself — each array's ``zarr.json`` and its chunk files
``<name>/c/<i>[/0]``, encoded with the same codecs (numcodecs) that the metadata names —
and every reader goes through zarr as before.  Creating a file costs ~0.4 ms of CPU on a
VM's ext4 (more than writing 1 MB into it), so the writer creates few: chunk keys use
the ``.`` separator (``c.0.0``: no directory per chunk), and a chunk holding no
committed row is written in place under its final name (a crash can only tear rows
that no reader sees and a resume rewrites).  Every file that holds committed data —
metadata, the commit, a chunk that gains rows — is replaced atomically (temporary
``*.partial`` name, then ``os.replace``), as zarr's local store does.

Rows are appended along axis 0 in whole chunks; the rows of the last, partly filled
chunk are kept in memory (``tail``) so the next append rewrites that chunk whole,
without reading it back.  An activation array may be stored column-major (zarr's
``transpose`` codec, ``order="F"``): the chunk bytes are then ``(d, rows)``, the layout
in which a channels-first model (SFNO: ``(batch, channel, lat, lon)``) produces them, so
harvesting needs no element-wise transpose; zarr gives readers ``(token, d)`` either way.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["ChunkedArray", "atomic_write", "auto_chunk_rows", "codecs_for"]

_ZSTD = {"name": "zstd", "configuration": {"level": 0, "checksum": False}}
_BYTES = {"name": "bytes", "configuration": {"endian": "little"}}
_DTYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"}


def auto_chunk_rows(row_bytes: int, target: int = 8 << 20) -> int:
    """Rows per chunk: the power of two nearest below ``target`` bytes, within 8,192 to 65,536 rows.

    Chunks of ~8 MiB keep the number of files (each costs more to create than 1 MB costs to
    write) and the writer's chunk buffers small; readers shuffle within windows of chunks.
    """
    rows = max(1, target // max(1, row_bytes))
    return int(min(65536, max(8192, 1 << (rows.bit_length() - 1))))


def atomic_write(path: Path, data: Any, atomic: bool = True) -> None:
    """Write ``data`` (bytes or a buffer) to ``path``: via a temporary ``*.partial`` file and
    ``os.replace`` if ``atomic``, else in place.  Missing parent directories are created."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial") if atomic else path
    try:
        f = open(tmp, "wb")
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(tmp, "wb")
    with f:
        f.write(data)
    if atomic:
        os.replace(tmp, path)


def codecs_for(dtype: np.dtype | str, compression: str | None, order: Literal["C", "F"] = "C") -> list[dict[str, Any]]:
    """zarr v3 codec list of an array: ``compression`` ``"lz4"`` (Blosc, bit-shuffled), ``"zstd"``, ``"none"``.

    ``None`` means the coordinate default (zstd); strings are always ``vlen-utf8`` + zstd;
    ``order="F"`` prepends zarr's ``transpose`` codec (chunks stored column-major).
    """
    if dtype == "string":
        return [{"name": "vlen-utf8", "configuration": {}}, _ZSTD]
    head = [{"name": "transpose", "configuration": {"order": [1, 0]}}] if order == "F" else []
    itemsize = np.dtype(dtype).itemsize
    if compression == "lz4":
        blosc = {"typesize": itemsize, "cname": "lz4", "clevel": 1, "shuffle": "bitshuffle", "blocksize": 0}
        return [*head, _BYTES, {"name": "blosc", "configuration": blosc}]
    if compression in (None, "zstd"):
        return [*head, _BYTES, _ZSTD]
    if compression == "none":
        return [*head, _BYTES]
    raise ValueError(f"unknown compression {compression!r}")


def _encoder(codecs: Sequence[Mapping[str, Any]], where: str):
    """``chunk (on-disk layout) -> bytes`` for a codec list (the ones :func:`codecs_for` and older writers made)."""
    from numcodecs import Blosc, VLenUTF8, Zstd

    steps = []
    for c in codecs:
        name, cfg = c["name"], c.get("configuration", {})
        if name == "transpose":
            continue  # the chunk buffer is already laid out in the transposed order
        if name == "bytes":
            if cfg.get("endian", "little") != sys.byteorder:
                raise ValueError(f"{where}: cannot write {cfg['endian']}-endian chunks on this machine")
        elif name == "vlen-utf8":
            steps.append(VLenUTF8().encode)
        elif name == "blosc":
            shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}[cfg["shuffle"]]
            steps.append(Blosc(cfg["cname"], cfg["clevel"], shuffle, cfg.get("blocksize", 0), cfg.get("typesize")).encode)
        elif name == "zstd":
            steps.append(Zstd(cfg.get("level", 0), cfg.get("checksum", False)).encode)
        else:
            raise ValueError(f"{where}: the store writer cannot encode zarr codec {name!r}")

    def encode(chunk: np.ndarray) -> Any:
        out: Any = chunk
        for step in steps:
            out = step(out)
        return out if steps else memoryview(chunk).cast("B")

    return encode


class ChunkedArray:
    """A zarr v3 array of rows, appended chunk by chunk by writing its files directly.

    Rows pushed are copied into one reused chunk buffer (in the on-disk layout); each
    chunk is written as soon as it is full, so a caller may drop its arrays right after
    :meth:`push`.  :meth:`sync` also writes the partly filled last chunk, padded with the
    fill value as zarr does; later pushes complete it and rewrite it.

    Parameters
    ----------
    path
        The array's directory (``<store>/<name>``).
    meta
        Its ``zarr.json`` as a dict (shape, data type, chunk shape, fill value, codecs).
    tail
        Rows of the last, partly filled chunk already stored (``rows % chunk_rows`` of them).

    Attributes
    ----------
    rows
        Rows written to disk.
    pushed
        Rows pushed (written, or waiting in the chunk buffer).
    """

    def __init__(self, path: Path, meta: dict[str, Any], tail: np.ndarray | None = None):
        self.path, self.meta = Path(path), meta
        self.rows = self.pushed = self._meta_rows = int(meta["shape"][0])
        self.chunk_rows = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        self.width = tuple(meta["shape"][1:])
        self.string = meta["data_type"] == "string"
        self.dtype = np.dtype(object if self.string else meta["data_type"])
        transpose = [c["configuration"]["order"] for c in meta["codecs"] if c["name"] == "transpose"]
        self.order = "F" if transpose and list(transpose[0]) == [1, 0] else "C"
        if self.order == "F" and len(self.width) != 1:
            raise ValueError(f"{path}: a column-major array must be 2-d, this one has shape {meta['shape']}")
        self.fill = meta["fill_value"]
        self._encode = _encoder(meta["codecs"], str(path))
        key = meta["chunk_key_encoding"]
        if key["name"] != "default":
            raise ValueError(f"{path}: the store writer cannot write chunk key encoding {key['name']!r}")
        self._sep = key.get("configuration", {}).get("separator", "/")
        self._suffix = f"{self._sep}0" * len(self.width)
        self._buf: np.ndarray | None = None
        self._filled = self.rows % self.chunk_rows  # rows in the buffer's chunk
        if self._filled:
            if tail is None or len(tail) != self._filled:
                raise ValueError(f"{path}: {self.rows} rows need a tail of {self._filled} rows")
            self._put(0, tail)

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        width: tuple[int, ...],
        chunk_rows: int,
        dtype: np.dtype | str,
        compression: str | None = None,
        order: Literal["C", "F"] = "C",
        dimension_names: Sequence[str],
        attributes: Mapping[str, Any] | None = None,
    ) -> ChunkedArray:
        """Write the metadata of an empty array ``(0, *width)`` and return it."""
        if dtype != "string":
            dtype = np.dtype(dtype)
            if dtype.name not in _DTYPES:
                raise ValueError(f"{path.name}: cannot store dtype {dtype} (bool, int, uint, float or str)")
        fill: Any = "" if dtype == "string" else False if dtype.kind == "b" else 0.0 if dtype.kind == "f" else 0
        meta = {
            "shape": [0, *width],
            "data_type": "string" if dtype == "string" else dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [chunk_rows, *width]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}},
            "fill_value": fill,
            "codecs": codecs_for(dtype, compression, order),
            "attributes": dict(attributes or {}),
            "dimension_names": list(dimension_names),
            "zarr_format": 3,
            "node_type": "array",
            "storage_transformers": [],
        }
        path.mkdir(parents=True, exist_ok=True)
        arr = cls(path, meta)
        arr._meta_rows = -1
        arr.write_meta()
        return arr

    @classmethod
    def open(cls, path: Path) -> ChunkedArray:
        """An existing array, its partly filled last chunk read back (through zarr) into the buffer."""
        meta = json.loads((Path(path) / "zarr.json").read_text())
        n, c = int(meta["shape"][0]), int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        tail = None
        if n % c:
            import zarr

            tail = np.asarray(zarr.open_array(path, mode="r")[n - n % c : n])
        return cls(path, meta, tail)

    # -- writing -----------------------------------------------------------------
    def write_meta(self) -> None:
        """Record the rows written as the array's shape (before a commit that covers them)."""
        if self.rows != self._meta_rows:
            self.meta["shape"][0] = self._meta_rows = self.rows
            atomic_write(self.path / "zarr.json", json.dumps(self.meta, indent=2).encode())

    def _put(self, at: int, rows: np.ndarray) -> None:
        if self._buf is None:
            shape = (*self.width, self.chunk_rows) if self.order == "F" else (self.chunk_rows, *self.width)
            self._buf = np.empty(shape, self.dtype)
        if self.order == "F":
            self._buf[:, at : at + len(rows)] = rows.T
        else:
            self._buf[at : at + len(rows)] = rows

    def _write_chunk(self, index: int, buf: np.ndarray, filled: int) -> None:
        if filled < self.chunk_rows:  # the edge chunk: zarr pads it with the fill value
            (buf[:, filled:] if self.order == "F" else buf[filled:]).fill(self.fill)
        stored = index * self.chunk_rows < self.rows  # it holds stored rows: replace it atomically
        atomic_write(self.path / f"c{self._sep}{index}{self._suffix}", self._encode(buf), atomic=stored)
        self.rows = index * self.chunk_rows + filled

    def push(self, rows: np.ndarray) -> None:
        """Append ``rows`` ``(n, *width)`` (any memory layout); every chunk that fills is written."""
        rows = np.asarray(rows, dtype=object) if self.string else np.asarray(rows)
        k = 0
        while k < len(rows):
            take = min(self.chunk_rows - self._filled, len(rows) - k)
            self._put(self._filled, rows[k : k + take])
            self._filled, k = self._filled + take, k + take
            if self._filled == self.chunk_rows:
                self._write_chunk(self.pushed // self.chunk_rows, self._buf, self._filled)
                self._filled = 0
            self.pushed += take

    def sync(self) -> None:
        """Write the partly filled last chunk too, so that every row pushed is on disk."""
        if self.pushed > self.rows:
            self._write_chunk(self.pushed // self.chunk_rows, self._buf, self._filled)
