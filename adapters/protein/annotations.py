"""Annotation-derived residue labels: UniProt feature tables and HMM (Pfam) domain hits.

UniProt features are read from Swiss-Prot flat files (Biopython ``SeqIO`` "swiss"),
UniProt REST JSON, or UniProt GFF3.  Each feature kind becomes a concept
``uniprot_<kind>``: residues inside an annotated range are 1, other residues of an
annotated protein 0, residues of proteins without an entry NaN.  A disulfide bond labels
its two bonded cysteines only.

HMM domains come from ``pyhmmer.hmmer.hmmsearch`` of a user's HMM file (e.g. Pfam)
against the proteins' sequences; each HMM becomes a concept ``hmm_<name>`` covering the
envelopes of its included domain hits.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import xarray as xr

from .labels import protein_rows, LabelError, concept, label_dataset, token_table

__all__ = [
    "FEATURE_KINDS",
    "Feature",
    "ProteinAnnotation",
    "annotation_labels",
    "hmm_domain_labels",
    "read_annotations",
]

# canonical kind <- names used by the flat file (first) and by UniProt JSON / GFF
FEATURE_KINDS: dict[str, tuple[str, ...]] = {
    "helix": ("HELIX", "Helix"),
    "strand": ("STRAND", "Beta strand"),
    "turn": ("TURN", "Turn"),
    "transmembrane": ("TRANSMEM", "Transmembrane"),
    "intramembrane": ("INTRAMEM", "Intramembrane"),
    "signal_peptide": ("SIGNAL", "Signal", "Signal peptide"),
    "domain": ("DOMAIN", "Domain"),
    "binding_site": ("BINDING", "Binding site", "NP_BIND", "Nucleotide binding", "CA_BIND", "Calcium binding"),
    "active_site": ("ACT_SITE", "Active site"),
    "metal_binding": ("METAL", "Metal binding"),
    "disulfide": ("DISULFID", "Disulfide bond"),
    "modified_residue": ("MOD_RES", "Modified residue"),
    "glycosylation": ("CARBOHYD", "Glycosylation"),
    "zinc_finger": ("ZN_FING", "Zinc finger"),
    "coiled_coil": ("COILED", "Coiled coil"),
}
"""Concept ``uniprot_<kind>`` for each kind; other feature types are ignored."""
_KIND_OF = {name.lower(): kind for kind, names in FEATURE_KINDS.items() for name in names}


class Feature(NamedTuple):
    """One annotated feature, 1-based inclusive residue range."""

    kind: str
    start: int
    end: int
    note: str = ""


class ProteinAnnotation(NamedTuple):
    """Features of one protein, and its sequence when the source gives it."""

    accession: str
    names: tuple[str, ...]
    sequence: str | None
    features: tuple[Feature, ...]

    def positions(self, kind: str) -> np.ndarray:
        """1-based residue numbers labelled by ``kind`` (a disulfide labels its two ends)."""
        out: list[int] = []
        for f in self.features:
            if f.kind == kind:
                out.extend((f.start, f.end) if kind == "disulfide" else range(f.start, f.end + 1))
        return np.unique(np.asarray(out, np.int64))


def _feature(kind_name: str, start: object, end: object, note: str = "") -> Feature | None:
    kind = _KIND_OF.get(str(kind_name).strip().lower())
    try:
        s, e = int(start), int(end)
    except (TypeError, ValueError):  # unknown ("?") positions
        return None
    if kind is None or s < 1 or e < s:
        return None
    return Feature(kind, s, e, note)


def _open(path: Path) -> io.TextIOBase:
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def _read_swiss(path: Path) -> list[ProteinAnnotation]:
    from Bio import SeqIO

    out = []
    with _open(path) as fh:
        for rec in SeqIO.parse(fh, "swiss"):
            feats = []
            for f in rec.features:
                try:
                    start, end = int(f.location.start) + 1, int(f.location.end)
                except (TypeError, ValueError):
                    continue
                feat = _feature(f.type, start, end, str(f.qualifiers.get("note", "")))
                if feat:
                    feats.append(feat)
            names = tuple(dict.fromkeys([rec.id, *rec.annotations.get("accessions", []), rec.name]))
            out.append(ProteinAnnotation(rec.id, names, str(rec.seq), tuple(feats)))
    return out


def _read_json(path: Path) -> list[ProteinAnnotation]:
    with _open(path) as fh:
        data = json.load(fh)
    entries = data.get("results", [data]) if isinstance(data, dict) else data
    out = []
    for k, entry in enumerate(entries):
        if "primaryAccession" not in entry:
            raise LabelError(f"UniProt JSON {path}: entry {k} has no 'primaryAccession'")
        feats = []
        for f in entry.get("features", []):
            loc = f.get("location", {})
            feat = _feature(f.get("type", ""), loc.get("start", {}).get("value"), loc.get("end", {}).get("value"),
                            f.get("description", ""))
            if feat:
                feats.append(feat)
        acc = entry["primaryAccession"]
        names = tuple(dict.fromkeys([acc, *entry.get("secondaryAccessions", []), entry.get("uniProtkbId", acc)]))
        seq = entry.get("sequence", {}).get("value")
        out.append(ProteinAnnotation(acc, names, seq, tuple(feats)))
    return out


def _read_gff(path: Path) -> list[ProteinAnnotation]:
    feats: dict[str, list[Feature]] = {}
    with _open(path) as fh:
        for line_no, line in enumerate(fh, 1):
            if line.startswith("##FASTA"):
                break
            if line.startswith("##sequence-region"):
                feats.setdefault(line.split()[1], [])
            if line.startswith("#") or not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 5:
                raise LabelError(f"GFF {path} line {line_no}: expected 9 tab-separated columns, got {len(cols)}")
            feat = _feature(cols[2], cols[3], cols[4], cols[8] if len(cols) > 8 else "")
            feats.setdefault(cols[0], [])
            if feat:
                feats[cols[0]].append(feat)
    return [ProteinAnnotation(acc, (acc,), None, tuple(f)) for acc, f in feats.items()]


def read_annotations(
    path: str | os.PathLike, fmt: Literal["auto", "swiss", "json", "gff"] = "auto"
) -> dict[str, ProteinAnnotation]:
    """Read UniProt feature tables; returns annotations by every accession and entry name.

    ``fmt="auto"`` picks by suffix (``.json``, ``.gff``/``.gff3``, anything else Swiss-Prot
    flat file; ``.gz`` allowed).
    """
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"annotation file {path} does not exist")
    name = path.name.removesuffix(".gz").lower()
    if fmt == "auto":
        fmt = "json" if name.endswith(".json") else "gff" if name.endswith((".gff", ".gff3")) else "swiss"
    readers = {"swiss": _read_swiss, "json": _read_json, "gff": _read_gff}
    if fmt not in readers:
        raise ValueError(f"fmt must be one of {sorted(readers)} or 'auto', got {fmt!r}")
    try:
        entries = readers[fmt](path)
    except (ValueError, KeyError, UnicodeDecodeError) as err:
        if isinstance(err, LabelError):
            raise
        raise LabelError(f"cannot read {path} as {fmt}: {err}") from err
    if not entries:
        raise LabelError(f"{path} holds no {fmt} entries")
    return {n: e for e in entries for n in e.names}


def _lookup(pid: str, annotations: Mapping[str, ProteinAnnotation]) -> ProteinAnnotation | None:
    if pid in annotations:
        return annotations[pid]
    for part in pid.replace(" ", "|").split("|"):  # sp|P12345|NAME_HUMAN
        if part in annotations:
            return annotations[part]
    return None


def annotation_labels(
    tokens: xr.Dataset | Mapping[str, Iterable],
    annotations: Mapping[str, ProteinAnnotation],
    *,
    kinds: Iterable[str] | None = None,
) -> xr.Dataset:
    """Per-token concepts ``uniprot_<kind>`` from UniProt annotations.

    Parameters
    ----------
    tokens
        Store tokens (coords ``protein``, ``position``, ``residue``).
    annotations
        From :func:`read_annotations`; a token's protein id matches an accession or entry
        name, or one ``|``-separated part of it (``sp|P12345|NAME``).
    kinds
        Feature kinds (keys of :data:`FEATURE_KINDS`); default those present in ``annotations``.

    Raises
    ------
    LabelError
        If a matched protein's tokens disagree with the entry's sequence.
    """
    tab = token_table(tokens)
    present = sorted({f.kind for a in annotations.values() for f in a.features})
    kinds = present if kinds is None else list(kinds)
    for k in kinds:
        if k not in FEATURE_KINDS:
            raise LabelError(f"unknown feature kind {k!r}; known: {sorted(FEATURE_KINDS)}")
    values = {k: np.full(len(tab.protein), np.nan, np.float32) for k in kinds}
    for pid, rows in protein_rows(tab.protein):
        ann = _lookup(str(pid), annotations)
        if ann is None:
            continue
        pos = tab.position[rows]
        if ann.sequence:
            if pos.max() > len(ann.sequence):
                raise LabelError(f"protein {pid!r}: token position {pos.max()} beyond the {len(ann.sequence)} "
                                 f"residues of UniProt entry {ann.accession}")
            seq = np.array(list(ann.sequence.upper()))[pos - 1]
            bad = (seq != tab.residue[rows]) & (seq != "X") & (tab.residue[rows] != "X")
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise LabelError(f"protein {pid!r} position {pos[k]}: token residue {str(tab.residue[rows][k])!r} but UniProt "
                                 f"entry {ann.accession} has {str(seq[k])!r} ({int(bad.sum())} mismatches)")
        for k in kinds:
            values[k][rows] = np.isin(pos, ann.positions(k))
    out = {f"uniprot_{k}": concept(v, source="UniProt feature table") for k, v in values.items()}
    return label_dataset(out, len(tab.protein))


def _token_sequences(tab) -> dict[str, str]:
    seqs = {}
    for pid, rows in protein_rows(tab.protein):
        chars = np.full(tab.position[rows].max(), "X")
        chars[tab.position[rows] - 1] = tab.residue[rows]
        seqs[str(pid)] = "".join(chars)
    return seqs


def hmm_domain_labels(
    tokens: xr.Dataset | Mapping[str, Iterable],
    hmm_path: str | os.PathLike,
    *,
    sequences: Mapping[str, str] | None = None,
    coordinates: Literal["envelope", "alignment"] = "envelope",
    cpus: int = 1,
    search_options: Mapping[str, object] | None = None,
) -> xr.Dataset:
    """Per-token concepts ``hmm_<name>`` from ``hmmsearch`` of an HMM file against the proteins.

    Parameters
    ----------
    tokens
        Store tokens.
    hmm_path
        HMMER3 (or HMMER2 text) HMM file, e.g. Pfam-A.hmm or a subset.
    sequences
        Full sequence per protein id; default rebuilt from the tokens (uncovered positions as X).
    coordinates
        Label the domain ``envelope`` (env_from..env_to) or the ``alignment`` span.
    cpus
        Threads for pyhmmer.
    search_options
        Extra keyword arguments of ``pyhmmer.hmmer.hmmsearch`` (e.g. ``Z`` for the database
        size that E-values refer to, ``bit_cutoffs="gathering"`` for Pfam GA cut-offs).

    Only hits and domains that pass HMMER's default inclusion thresholds (E <= 0.01) count.
    Every searched protein gets 0/1; proteins of the tokens missing from ``sequences`` NaN.
    """
    import pyhmmer

    tab = token_table(tokens)
    seqs = _token_sequences(tab) if sequences is None else dict(sequences)
    try:
        with pyhmmer.plan7.HMMFile(os.fspath(hmm_path)) as fh:
            hmms = list(fh)
    except (OSError, ValueError, EOFError) as err:
        raise LabelError(f"cannot read HMM file {hmm_path}: {err}") from err
    alphabet = pyhmmer.easel.Alphabet.amino()
    names = list(seqs)
    digital = pyhmmer.easel.DigitalSequenceBlock(alphabet, [
        pyhmmer.easel.TextSequence(name=str(i).encode(), sequence=seqs[n].replace("*", "")).digitize(alphabet)
        for i, n in enumerate(names)
    ])
    spans: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for hits in pyhmmer.hmmer.hmmsearch(hmms, digital, cpus=cpus, **dict(search_options or {})):
        qname = hits.query.name
        qname = qname.decode() if isinstance(qname, bytes) else str(qname)
        per = spans.setdefault(qname, {})
        for hit in hits:
            if not hit.included:
                continue
            hname = hit.name.decode() if isinstance(hit.name, bytes) else str(hit.name)
            for dom in hit.domains:
                if dom.included:
                    span = (dom.env_from, dom.env_to) if coordinates == "envelope" else (
                        dom.alignment.target_from, dom.alignment.target_to)
                    per.setdefault(names[int(hname)], []).append(span)
    groups = dict(protein_rows(tab.protein))
    searched = np.zeros(len(tab.protein), bool)
    for pid in set(names) & set(groups):
        searched[groups[pid]] = True
    out = {}
    for hmm in hmms:
        qname = hmm.name.decode() if isinstance(hmm.name, bytes) else str(hmm.name)
        v = np.where(searched, 0.0, np.nan).astype(np.float32)
        for pid, ranges in spans.get(qname, {}).items():
            rows = groups.get(pid, np.zeros(0, np.int64))
            for a, b in ranges:
                v[rows[(tab.position[rows] >= a) & (tab.position[rows] <= b)]] = 1.0
        out[f"hmm_{qname}"] = concept(v, source=f"hmmsearch {Path(hmm_path).name}", coordinates=coordinates)
    return label_dataset(out, len(tab.protein))
