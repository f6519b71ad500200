"""The embedded protein dataset: proteome, structure chains with DSSP labels, Swiss-Prot subset.

Files in ``sciinterp_adapters/protein/data`` (rebuilt by ``build_data.py``; provenance
and licences in ``data/README.md``):

* ``proteome.fasta.gz`` — 2,100 bacterial proteins, the demo training corpus;
* ``structures.jsonl.gz`` — one JSON object per unique chain: id, source, sequence,
  DSSP 8-state string, RSA, CA B-factor and author residue numbers per sequence position;
* ``swissprot.dat.gz`` — Swiss-Prot flat-file entries with feature tables;
* ``pdb/`` — a few small PDB files for tests of the structure code path.

The demo pipeline harvests ESM activations for the structure chains (FASTA from
:func:`write_structure_fasta`) and labels the store's tokens with
:func:`structure_labels_from_shipped`; the ids are the same in both.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import xarray as xr

from .labels import merge_labels, sequence_labels
from .structure import StructureRecord, structure_labels

__all__ = [
    "DATA_DIR",
    "DemoDataset",
    "demo_records",
    "load_demo_dataset",
    "read_records",
    "structure_labels_from_shipped",
    "write_records",
    "write_structure_fasta",
]

DATA_DIR = Path(__file__).parent / "data"
STRUCTURES = DATA_DIR / "structures.jsonl.gz"
SWISSPROT = DATA_DIR / "swissprot.dat.gz"
PROTEOME = DATA_DIR / "proteome.fasta.gz"
TEST_PDB_DIR = DATA_DIR / "pdb"


def _nan_list(a: np.ndarray, ndigits: int) -> list[float | None]:
    return [None if not np.isfinite(x) else round(float(x), ndigits) for x in a]


def record_to_json(rec: StructureRecord) -> dict:
    """A JSON-ready dict of a record (RSA to 3 decimals, B-factor to 1, NaN as null)."""
    return {
        "id": rec.id, "sequence": rec.sequence, "ss8": rec.ss8,
        "rsa": _nan_list(rec.rsa, 3), "bfactor": _nan_list(rec.bfactor, 1),
        "bfactor_kind": rec.bfactor_kind, "resid": list(rec.resid), **rec.meta,
    }


def record_from_json(obj: Mapping) -> StructureRecord:
    """Inverse of :func:`record_to_json`."""
    fields = {"id", "sequence", "ss8", "rsa", "bfactor", "bfactor_kind", "resid"}
    return StructureRecord(
        id=obj["id"], sequence=obj["sequence"], ss8=obj["ss8"],
        rsa=np.array([np.nan if x is None else x for x in obj["rsa"]], np.float32),
        bfactor=np.array([np.nan if x is None else x for x in obj["bfactor"]], np.float32),
        bfactor_kind=obj.get("bfactor_kind", "bfactor"), resid=tuple(obj.get("resid", ())),
        meta={k: v for k, v in obj.items() if k not in fields},
    )


def write_records(path: str | os.PathLike, records: Iterable[StructureRecord]) -> Path:
    """Write records as gzipped JSON lines, atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as raw:
        for rec in records:
            raw.write((json.dumps(record_to_json(rec), separators=(",", ":")) + "\n").encode())
    os.replace(tmp, path)
    return path


def read_records(path: str | os.PathLike | None = None) -> dict[str, StructureRecord]:
    """Read structure records (default: the shipped ``structures.jsonl.gz``), by id."""
    return dict(_read_records(str(path or STRUCTURES)))


@functools.lru_cache(maxsize=4)
def _read_records(path: str) -> tuple[tuple[str, StructureRecord], ...]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"structure records {path} not found; rebuild them with "
                                "python adapters/protein/build_data.py")
    out = []
    with gzip.open(path, "rt") as fh:
        for line_no, line in enumerate(fh, 1):
            try:
                rec = record_from_json(json.loads(line))
            except (KeyError, ValueError) as err:
                raise ValueError(f"{path} line {line_no}: bad structure record: {err}") from err
            out.append((rec.id, rec))
    return tuple(out)


def write_structure_fasta(path: str | os.PathLike, *, max_length: int | None = None) -> list[str]:
    """Write the shipped structure chains' sequences as FASTA; returns the ids written.

    Headers are ``>id source=... file=... chain=...``; the id (first word) is what
    :func:`structure_labels_from_shipped` looks up.  ``max_length`` drops longer chains
    (ESM-2 takes at most 1,022 residues).
    """
    path = Path(path)
    ids = []
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        for rec in read_records().values():
            if max_length is not None and len(rec.sequence) > max_length:
                continue
            desc = " ".join(f"{k}={rec.meta[k]}" for k in ("source", "file", "chain") if k in rec.meta)
            fh.write(f">{rec.id} {desc}\n")
            for i in range(0, len(rec.sequence), 60):
                fh.write(rec.sequence[i : i + 60] + "\n")
            ids.append(rec.id)
    os.replace(tmp, path)
    return ids


def structure_labels_from_shipped(tokens: xr.Dataset | Mapping[str, Iterable]) -> xr.Dataset:
    """Structure labels (ss3, ss8, buried, rsa, bfactor) plus sequence labels for tokens
    of the shipped structure chains; tokens of other proteins get NaN structure labels."""
    return merge_labels(structure_labels(tokens, read_records()), sequence_labels(tokens))


class DemoDataset(NamedTuple):
    """The shipped structure chains and the label builder that matches them."""

    records: list[tuple[str, str]]
    """``(id, sequence)`` per chain, FASTA-like."""
    labels: Callable[[xr.Dataset], xr.Dataset]
    """Builds the token labels of a store harvested from ``records``."""


def demo_records(max_length: int | None = None) -> list[tuple[str, str]]:
    """``(id, sequence)`` of the shipped structure chains (at most ``max_length`` residues),
    in file order; the ids are those :func:`structure_labels_from_shipped` looks up."""
    return [(r.id, r.sequence) for r in read_records().values() if max_length is None or len(r.sequence) <= max_length]


def load_demo_dataset(*, max_length: int | None = None) -> DemoDataset:
    """The shipped structures as ``(id, sequence)`` records plus their label builder."""
    return DemoDataset(demo_records(max_length), structure_labels_from_shipped)
