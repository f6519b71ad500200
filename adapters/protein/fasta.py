"""FASTA input for protein models: read, normalise and validate before anything runs.

The whole file is parsed and checked first, so a bad record stops a harvest before
a single activation is written (nothing already in a store is touched).

Rules (those of fair-esm's ``ESM-1b`` alphabet, used by every ESM-2 model):

* residues are the 20 standard amino acids plus ``X`` (unknown), ``B`` (D/N),
  ``Z`` (E/Q), ``U`` (selenocysteine) and ``O`` (pyrrolysine); each is its own
  token in ESM's vocabulary and is passed through unchanged;
* lowercase letters are upper-cased (ESM's vocabulary is upper case only);
* whitespace and digits-free line wrapping are removed;
* the gap symbols ``-`` and ``.`` and the stop symbol ``*`` are errors (they are not
  residues); ``strip_stop=True`` removes one terminal ``*`` as translated proteomes carry;
* an empty record, an empty id, text before the first header and a repeated id are errors
  that name the file, the record and its line.

>>> recs = read_fasta("proteome.fasta.gz")            # doctest: +SKIP
>>> recs[0].id, len(recs[0].sequence), recs[0].description  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RESIDUES", "FastaError", "ProteinRecord", "as_records", "protein_metadata", "read_fasta"]

RESIDUES = frozenset("LAGVSERTIDPKQNFYMHWCXBUZO")
"""Letters accepted as residues: the residue tokens of ESM's alphabet."""


class FastaError(ValueError):
    """A FASTA file (or a list of sequences) that cannot be fed to a protein model."""


@dataclass(frozen=True)
class ProteinRecord:
    """One protein.

    Attributes
    ----------
    id
        Record id: the header up to the first whitespace (unique within a file).
    sequence
        Upper-case residues, validated against :data:`RESIDUES`.
    description
        The rest of the header line (kept as per-protein metadata), may be empty.
    """

    id: str
    sequence: str
    description: str = ""

    def __len__(self) -> int:
        return len(self.sequence)


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _clean(seq: str, source: str, rid: str, line: int, strip_stop: bool) -> str:
    """Upper-case, strip a terminal stop if asked, and check every character."""
    seq = seq.upper()
    if strip_stop and seq.endswith("*"):
        seq = seq[:-1]
    if not seq:
        raise FastaError(f"{source}: record {rid!r} (line {line}) is empty: it has no residues")
    for pos, ch in enumerate(seq, start=1):
        if ch not in RESIDUES:
            hint = ""
            if ch in "-.":
                hint = " (a gap symbol: aligned FASTA is not supported, remove the gaps)"
            elif ch == "*":
                hint = " (a stop symbol; pass strip_stop=True to drop a terminal '*')"
            raise FastaError(
                f"{source}: record {rid!r} (line {line}): character {ch!r} at residue position {pos} "
                f"is not in the ESM alphabet{hint}; allowed: {''.join(sorted(RESIDUES))}"
            )
    return seq


def read_fasta(
    path: str | os.PathLike, *, strip_stop: bool = False, limit: int | None = None
) -> list[ProteinRecord]:
    """Read and validate a FASTA file (plain or gzip-compressed, detected by content).

    Parameters
    ----------
    path
        The FASTA file.
    strip_stop
        Remove one terminal ``*`` from each sequence (translated ORFs); any other
        ``*`` stays an error.
    limit
        Keep only the first ``limit`` records (after validating the whole file).

    Returns
    -------
    The records in file order.

    Raises
    ------
    FastaError
        On the first problem, naming the file, record id, line and residue position.
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FASTA file {path} does not exist")
    source = str(path)
    records: list[ProteinRecord] = []
    seen: dict[str, int] = {}
    rid, desc, start, chunks = None, "", 0, []

    def finish() -> None:
        if rid is None:
            return
        records.append(ProteinRecord(rid, _clean("".join(chunks), source, rid, start, strip_stop), desc))

    try:
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, start=1):
                line = line.strip()
                if line.startswith(">"):
                    finish()
                    head = line[1:].strip().split(None, 1)
                    if not head:
                        raise FastaError(f"{source}: header at line {lineno} has no record id")
                    rid, desc, start, chunks = head[0], head[1] if len(head) > 1 else "", lineno, []
                    if rid in seen:
                        raise FastaError(
                            f"{source}: duplicate record id {rid!r} (lines {seen[rid]} and {lineno}); ids must be unique"
                        )
                    seen[rid] = lineno
                elif line and not line.startswith(";"):
                    if rid is None:
                        raise FastaError(f"{source}: line {lineno} holds sequence before the first '>' header")
                    chunks.append("".join(line.split()))
            finish()
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as err:
        raise FastaError(f"{source}: not a readable FASTA file ({type(err).__name__}: {err})") from err
    if not records:
        raise FastaError(f"{source}: no FASTA records found")
    return records[:limit] if limit is not None else records


def as_records(data: Any, *, source: str = "sequences") -> list[ProteinRecord]:
    """Turn any supported protein input into validated records.

    Accepts a FASTA path, a list of :class:`ProteinRecord`, a ``{id: sequence}`` mapping
    or a sequence of ``(id, sequence)`` pairs.  Everything is validated before returning.
    """
    if isinstance(data, (str, os.PathLike)):
        return read_fasta(data)
    if isinstance(data, Mapping):
        pairs: Iterable = data.items()
    elif isinstance(data, Sequence):
        pairs = data
    else:
        raise TypeError(
            f"cannot read proteins from {type(data).__name__}: pass a FASTA path, a list of "
            "ProteinRecord, a {id: sequence} dict or (id, sequence) pairs"
        )
    out: list[ProteinRecord] = []
    seen: set[str] = set()
    for i, item in enumerate(pairs, start=1):
        if isinstance(item, ProteinRecord):
            rid, seq, desc = item.id, item.sequence, item.description
        else:
            rid, seq = item
            desc = ""
        rid = str(rid)
        if not rid or any(c.isspace() for c in rid):
            raise FastaError(f"{source}: record #{i} has an invalid id {rid!r} (empty or with whitespace)")
        if rid in seen:
            raise FastaError(f"{source}: duplicate record id {rid!r}; ids must be unique")
        seen.add(rid)
        out.append(ProteinRecord(rid, _clean(str(seq), source, rid, i, strip_stop=False), desc))
    if not out:
        raise FastaError(f"{source}: no proteins given")
    return out


def protein_metadata(records: Sequence[ProteinRecord]) -> Any:
    """Per-protein variables along dim ``item``: ``length`` (residues) and ``description``.

    Returns
    -------
    xarray.Dataset with coordinate ``item`` (protein ids), as the label contract's
    per-item variables.
    """
    import numpy as np
    import xarray as xr

    ids = np.array([r.id for r in records], dtype=str)
    return xr.Dataset(
        {
            "length": ("item", np.array([len(r) for r in records], dtype=np.int64), {"units": "residues"}),
            "description": ("item", np.array([r.description for r in records], dtype=str)),
        },
        coords={"item": ids},
    )
