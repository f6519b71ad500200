"""Structure-derived residue labels: DSSP, relative solvent accessibility, B-factor / pLDDT.

A PDB or mmCIF file (gzip allowed) is read with Biopython; the protein residues of the
first model go into an mdtraj topology, where ``mdtraj.compute_dssp`` assigns DSSP
secondary structure (the Kabsch-Sander algorithm of DSSP 2.2) and
``mdtraj.shrake_rupley`` the per-residue solvent accessible surface, normalised by the
theoretical maximum of Tien et al. (2013).  Both are computed in the context of every
protein chain of the model, as DSSP does (hetero groups and water are left out).

The residues observed in the chosen chain are then aligned globally
(``Bio.Align.PairwiseAligner``) to the protein sequence (SEQRES, or one the caller
gives), so missing residues, insertion codes (52, 52A, 52B, ...) and modified residues
(MSE -> M, SEP -> S, ...) all land on the right 1-based sequence position.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import xarray as xr

from .labels import protein_rows, AA_SCALES, LabelError, concept, continuous, label_dataset, token_table

__all__ = [
    "SS8_CODES",
    "SS3_OF_SS8",
    "StructureError",
    "StructureRecord",
    "align_to_sequence",
    "read_structure",
    "structure_labels",
    "structure_records",
]

log = logging.getLogger(__name__)

SS8_CODES = "HBEGITSC"
"""DSSP 8-state codes in the order of the ``ss8_*`` labels; ``C`` is DSSP's blank (loop)."""
SS3_OF_SS8 = {"H": "H", "G": "H", "I": "H", "E": "E", "B": "E", "T": "C", "S": "C", "C": "C"}
"""The usual 8 -> 3 reduction (as ``mdtraj.compute_dssp(simplified=True)``)."""
MISSING = "-"
"""Symbol in ``ss8`` strings for a sequence position without observed coordinates."""
_MAX_ASA = AA_SCALES["max_asa"].values


class StructureError(ValueError):
    """A structure file cannot be read, lacks the chain, or does not match the sequence."""


@dataclass(frozen=True)
class StructureRecord:
    """Per-residue structure labels of one chain, aligned to its full sequence.

    All arrays have length ``len(sequence)``; positions not observed in the structure hold
    ``"-"`` in ``ss8`` and NaN elsewhere.
    """

    id: str
    """Protein id (the store's ``protein`` coordinate)."""
    sequence: str
    """Full sequence, one-letter codes (modified residues as their parent, unknown as X)."""
    ss8: str
    """DSSP 8-state per position (``HBEGITSC``, ``C`` = loop), ``-`` where not observed."""
    rsa: np.ndarray
    """``(L,)`` float32: relative solvent accessibility, SASA / max ASA (Tien 2013 theoretical)."""
    bfactor: np.ndarray
    """``(L,)`` float32: B-factor of the CA atom (angstrom^2), or pLDDT for predicted models."""
    bfactor_kind: Literal["bfactor", "plddt"] = "bfactor"
    """What ``bfactor`` holds."""
    resid: tuple[str, ...] = ()
    """Author residue number with insertion code per position (``""`` where not observed)."""
    meta: dict = field(default_factory=dict)
    """Provenance: file, chain, sequence source, alignment identity."""

    def __post_init__(self) -> None:
        n = len(self.sequence)
        lengths = {"ss8": len(self.ss8), "rsa": len(self.rsa), "bfactor": len(self.bfactor)}
        if self.resid:
            lengths["resid"] = len(self.resid)
        bad = {k: v for k, v in lengths.items() if v != n}
        if bad:
            raise ValueError(f"structure record {self.id!r}: sequence has {n} residues but {bad}")
        if set(self.ss8) - set(SS8_CODES + MISSING):
            raise ValueError(f"structure record {self.id!r}: ss8 has codes {sorted(set(self.ss8) - set(SS8_CODES + MISSING))}")


def _one_letter(resname: str) -> str | None:
    from Bio.Data.PDBData import protein_letters_3to1_extended

    if resname == "UNK":
        return "X"
    letter = protein_letters_3to1_extended.get(resname.upper())
    return letter if letter and letter in "ACDEFGHIKLMNPQRSTVWYUOX" else None


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"  # by content: some "*.gz" test files are plain text
    return gzip.open(path, "rt") if gzipped else open(path)


def _is_cif(path: Path) -> bool:
    return path.name.removesuffix(".gz").lower().endswith((".cif", ".mmcif"))


def read_structure(path: str | os.PathLike):
    """Parse a PDB or mmCIF file (optionally gzipped) and return its first model.

    Raises
    ------
    StructureError
        If the file is missing, unreadable, or holds no atoms.
    """
    from Bio.PDB import MMCIFParser, PDBParser

    path = Path(path)
    if not path.is_file():
        raise StructureError(f"structure file {path} does not exist")
    parser = MMCIFParser(QUIET=True) if _is_cif(path) else PDBParser(QUIET=True)
    try:
        with _open_text(path) as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            struct = parser.get_structure(path.stem, fh)
    except Exception as err:  # Biopython raises many kinds on malformed files
        raise StructureError(f"cannot read structure file {path}: {type(err).__name__}: {err}") from err
    models = list(struct)
    if not models or not any(True for _ in models[0].get_atoms()):
        raise StructureError(f"structure file {path} holds no atoms")
    return models[0]


def _protein_residues(chain) -> list:
    """Residues of a chain that are amino acids with a CA atom (modified ones included)."""
    out = []
    for res in chain:
        if res.id[0] == "W" or "CA" not in res:
            continue
        if _one_letter(res.get_resname()) is not None:
            out.append(res)
    return out


def _seqres(path: Path) -> dict[str, str]:
    """SEQRES (PDB) or entity_poly_seq (mmCIF) sequences by chain id; empty if absent."""
    from Bio import SeqIO

    fmt = "cif-seqres" if _is_cif(path) else "pdb-seqres"
    try:
        with _open_text(path) as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {r.annotations["chain"]: str(r.seq).upper() for r in SeqIO.parse(fh, fmt) if len(r.seq)}
    except Exception:  # no or malformed SEQRES: fall back to the observed residues
        return {}


def _slide_gaps_to_breaks(mapping: np.ndarray, observed: str, sequence: str, breaks: np.ndarray) -> None:
    """Move each gap between observed residues to a chain break where equal letters allow it.

    A gap after observed residue ``k`` (``mapping[k+1] - mapping[k] > 1``) can be shifted
    left by one if ``sequence[mapping[k] + g] == observed[k]`` (``g`` = gap length), or
    right if ``sequence[mapping[k+1] - g] == observed[k+1]``; repeats make both alignments
    score the same, and only the coordinates (a break) tell them apart.
    """
    n = len(mapping)
    for k in range(n - 1):
        a, b = mapping[k], mapping[k + 1]
        if a < 0 or b < 0 or b - a <= 1 or breaks[k]:
            continue
        g = b - a - 1
        for step in (-1, 1):
            trial, p = mapping.copy(), k  # the gap lies between observed p and p + 1
            while 0 <= p < n - 1 and not breaks[p]:
                r = p if step < 0 else p + 1  # the residue that crosses the gap
                target = trial[r] + g if step < 0 else trial[r] - g
                if trial[r] < 0 or not 0 <= target < len(sequence) or sequence[target] != observed[r]:
                    break
                trial[r] = target
                p += step
            if 0 <= p < n - 1 and breaks[p]:
                mapping[:] = trial
                break


def align_to_sequence(
    observed: str, sequence: str, *, breaks: np.ndarray | None = None, name: str = "", min_identity: float = 0.9
) -> np.ndarray:
    """Map observed residues onto a sequence by a global alignment.

    Parameters
    ----------
    observed
        One letter per observed residue, in chain order (gaps simply absent).
    sequence
        The full protein sequence.
    breaks
        ``(len(observed) - 1,)`` bool: a chain break (CA-CA > 4.2 angstrom) between
        observed residues ``k`` and ``k + 1``.  Gaps that repeats let slide are moved there.
    name
        Used in error messages (file and chain).
    min_identity
        Smallest accepted fraction of observed residues aligned to an identical letter
        (``X`` on either side counts as identical).

    Returns
    -------
    np.ndarray
        ``(len(observed),)`` int64: 0-based sequence index of each observed residue, -1
        where it falls in an insertion relative to the sequence.
    """
    from Bio.Align import PairwiseAligner

    if not observed:
        raise StructureError(f"{name}: no observed amino-acid residues to align")
    # target = sequence, query = observed.  Missing residues (gaps in the observed chain)
    # are cheap, free at the ends; observed residues absent from the sequence are dear.
    aligner = PairwiseAligner(mode="global", match_score=2.0, mismatch_score=-10.0,
                              open_gap_score=-5.0, extend_gap_score=-0.1)
    aligner.wildcard = "X"
    aligner.left_deletion_score = aligner.right_deletion_score = 0.0
    aligner.open_insertion_score, aligner.extend_insertion_score = -20.0, -2.0
    aln = aligner.align(sequence, observed)[0]
    seq_idx, obs_idx = aln.indices
    mapping = np.full(len(observed), -1, np.int64)
    both = (seq_idx >= 0) & (obs_idx >= 0)
    mapping[obs_idx[both]] = seq_idx[both]
    s, o = np.array(list(sequence)), np.array(list(observed))
    hit = mapping >= 0
    same = hit.copy()
    same[hit] = (s[mapping[hit]] == o[hit]) | (s[mapping[hit]] == "X") | (o[hit] == "X")
    identity = same.mean()
    if identity < min_identity:
        raise StructureError(
            f"{name}: the {len(observed)} observed residues do not align to the sequence "
            f"({len(sequence)} residues): {identity:.0%} identical < {min_identity:.0%}; "
            "is it the right sequence for this chain?"
        )
    mapping[hit & ~same] = -1
    if breaks is not None:
        _slide_gaps_to_breaks(mapping, observed, sequence, np.asarray(breaks, bool))
    return mapping


def _element(md, symbol: str, atom_name: str):
    """mdtraj element of an atom: its element column, else its name's first letter, else carbon."""
    for guess in (symbol, atom_name.lstrip("0123456789")[:1]):
        try:
            return md.element.get_by_symbol(guess)
        except KeyError:
            continue
    return md.element.carbon


def _model_traj(model):
    """An mdtraj trajectory of every protein residue (heavy atoms) of a Biopython model."""
    import mdtraj as md

    top = md.Topology()
    xyz, residues = [], []
    for chain in model:
        res_list = _protein_residues(chain)
        if not res_list:
            continue
        c = top.add_chain()
        for res in res_list:
            letter = _one_letter(res.get_resname())
            name = res.get_resname() if len(res.get_resname()) == 3 else "UNK"
            r = top.add_residue("PRO" if letter == "P" else name, c, resSeq=res.id[1])
            for atom in res:
                symbol = (atom.element or atom.get_id()[0]).strip().capitalize()
                if symbol in ("H", "D"):
                    continue
                element = _element(md, symbol, atom.get_id())
                top.add_atom(atom.get_id(), element, r)
                xyz.append(atom.coord / 10.0)  # angstrom -> nm
            residues.append((chain.id, res))
    traj = md.Trajectory(np.asarray(xyz, np.float32).reshape(1, -1, 3), top)
    return traj, residues


def _chain_features(model) -> dict[str, tuple[list, str, np.ndarray]]:
    """Per chain: (residues, DSSP 8-state string, RSA array) for every protein chain."""
    import mdtraj as md

    traj, residues = _model_traj(model)
    if not residues:
        return {}
    ss = md.compute_dssp(traj, simplified=False)[0]
    sasa = md.shrake_rupley(traj, mode="residue")[0] * 100.0  # nm^2 -> angstrom^2
    out: dict[str, tuple[list, list, list]] = {}
    for (chain_id, res), code, area in zip(residues, ss, sasa, strict=True):
        letter = _one_letter(res.get_resname())
        max_asa = _MAX_ASA.get(letter, np.nan)
        # " " is DSSP's loop; "NA" marks an incomplete backbone, which DSSP leaves unassigned
        code = {" ": "C", "NA": MISSING}.get(code, code)
        lst = out.setdefault(chain_id, ([], [], []))
        lst[0].append(res)
        lst[1].append(code)
        lst[2].append(area / max_asa)
    return {k: (v[0], "".join(v[1]), np.asarray(v[2], np.float32)) for k, v in out.items()}


def _looks_predicted(path: Path) -> bool:
    with _open_text(path) as fh:
        head = fh.read(8192).upper()
    return "ALPHAFOLD" in head or "_MA_QA_METRIC" in head or "ESMFOLD" in head


def structure_records(
    path: str | os.PathLike,
    chains: Iterable[str] | None = None,
    *,
    sequences: Mapping[str, str] | None = None,
    ids: Mapping[str, str] | None = None,
    bfactor: Literal["auto", "bfactor", "plddt"] = "auto",
    sequence_from: Literal["seqres", "observed"] = "seqres",
    min_identity: float = 0.9,
) -> list[StructureRecord]:
    """Structure labels of protein chains of one PDB/mmCIF file.

    Parameters
    ----------
    path
        PDB or mmCIF file, gzip allowed.
    chains
        Chain ids to return (default: every chain with amino-acid residues).
    sequences
        Full sequence per chain id; default SEQRES / entity_poly_seq, else the observed residues.
    ids
        Protein id per chain id; default ``"<file stem>_<chain>"``.
    bfactor
        Whether the B-factor column is a B-factor or pLDDT; ``"auto"`` says pLDDT for
        files that mention AlphaFold / ESMFold or carry ``_ma_qa_metric``.
    sequence_from
        Without ``sequences``: ``"seqres"`` uses SEQRES / entity_poly_seq where the file
        has it, ``"observed"`` always the observed residues.
    min_identity
        See :func:`align_to_sequence`.
    """
    path = Path(path)
    model = read_structure(path)
    feats = _chain_features(model)
    wanted = list(feats) if chains is None else list(chains)
    for c in wanted:
        if c not in feats:
            raise StructureError(f"chain {c!r} not found in {path} (protein chains: {', '.join(feats) or 'none'})")
    if sequence_from not in ("seqres", "observed"):
        raise ValueError(f"sequence_from must be 'seqres' or 'observed', got {sequence_from!r}")
    seqres = _seqres(path) if sequences is None and sequence_from == "seqres" else {}
    kind = ("plddt" if _looks_predicted(path) else "bfactor") if bfactor == "auto" else bfactor
    stem = path.name.split(".")[0]
    records = []
    for c in wanted:
        residues, ss8_obs, rsa_obs = feats[c]
        observed = "".join(_one_letter(r.get_resname()) for r in residues)
        given = (sequences or {}).get(c)
        sequence, source = (given, "given") if given else (seqres.get(c), "seqres") if seqres.get(c) else (observed, "observed")
        sequence = sequence.upper()
        where = f"{path} chain {c}"
        ca = np.array([r["CA"].coord for r in residues], np.float32)
        breaks = np.linalg.norm(np.diff(ca, axis=0), axis=1) > 4.2
        mapping = np.arange(len(observed)) if sequence == observed else align_to_sequence(
            observed, sequence, breaks=breaks, name=where, min_identity=min_identity)
        n = len(sequence)
        ss8, rsa, bf, resid = np.full(n, MISSING), np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32), [""] * n
        for k, (res, j) in enumerate(zip(residues, mapping, strict=True)):
            if j < 0:
                continue
            ss8[j], rsa[j] = ss8_obs[k], rsa_obs[k]
            atom = res["CA"]
            bf[j] = atom.get_bfactor()
            resid[j] = f"{res.id[1]}{res.id[2].strip()}"
        records.append(StructureRecord(
            id=(ids or {}).get(c, f"{stem}_{c}"), sequence=sequence, ss8="".join(ss8), rsa=rsa,
            bfactor=bf, bfactor_kind=kind, resid=tuple(resid),
            meta={"file": path.name, "chain": c, "sequence_from": source, "n_observed": int((mapping >= 0).sum())},
        ))
    return records


def structure_labels(
    tokens: xr.Dataset | Mapping[str, Iterable],
    records: Mapping[str, StructureRecord] | Iterable[StructureRecord],
    *,
    buried_below: float = 0.2,
) -> xr.Dataset:
    """Per-token structure labels from structure records.

    Variables (``(token,)`` float32): concepts ``ss3_H/E/C``, ``ss8_H/B/E/G/I/T/S/C``,
    ``buried`` (RSA < ``buried_below``); continuous ``rsa`` (fraction of max ASA) and
    ``bfactor`` (angstrom^2) or ``plddt`` (0-100).  Tokens of proteins without a record,
    or at positions not observed in the structure, are NaN.

    Raises
    ------
    LabelError
        If a token's residue letter or position disagrees with its record's sequence.
    """
    tab = token_table(tokens)
    recs = dict(records) if isinstance(records, Mapping) else {r.id: r for r in records}
    n = len(tab.protein)
    code = np.full(n, -1, np.int8)  # index into SS8_CODES, -1 unknown
    rsa = np.full(n, np.nan, np.float32)
    bf = {"bfactor": np.full(n, np.nan, np.float32), "plddt": np.full(n, np.nan, np.float32)}
    lookup = {c: i for i, c in enumerate(SS8_CODES)}
    for pid, rows in protein_rows(tab.protein):
        rec = recs.get(str(pid))
        if rec is None:
            continue
        pos = tab.position[rows] - 1
        if pos.max() >= len(rec.sequence):
            raise LabelError(f"protein {pid!r}: token position {pos.max() + 1} beyond its structure "
                             f"record's sequence of {len(rec.sequence)} residues")
        seq = np.array(list(rec.sequence))[pos]
        bad = (seq != tab.residue[rows]) & (seq != "X") & (tab.residue[rows] != "X")
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise LabelError(f"protein {pid!r} position {pos[k] + 1}: token residue {str(tab.residue[rows][k])!r} but the "
                             f"structure record has {str(seq[k])!r} ({int(bad.sum())} mismatches); ids or sequences differ")
        codes = np.array([lookup.get(ch, -1) for ch in rec.ss8], np.int8)
        code[rows] = codes[pos]
        rsa[rows] = rec.rsa[pos]
        bf[rec.bfactor_kind][rows] = rec.bfactor[pos]
    known = code >= 0
    out: dict[str, xr.DataArray] = {}
    for state in "HEC":
        members = [i for i, c in enumerate(SS8_CODES) if SS3_OF_SS8[c] == state]
        out[f"ss3_{state}"] = concept(np.where(known, np.isin(code, members), np.nan), description=f"DSSP 3-state {state}")
    for i, c in enumerate(SS8_CODES):
        out[f"ss8_{c}"] = concept(np.where(known, code == i, np.nan), description=f"DSSP 8-state {c} (C = loop)")
    out["buried"] = concept(np.where(np.isnan(rsa), np.nan, rsa < buried_below), description=f"RSA < {buried_below}")
    out["rsa"] = continuous(rsa, "1", description="relative solvent accessibility, SASA / max ASA (Tien 2013)")
    if np.isfinite(bf["bfactor"]).any() or not np.isfinite(bf["plddt"]).any():
        out["bfactor"] = continuous(bf["bfactor"], "angstrom^2", description="CA B-factor")
    if np.isfinite(bf["plddt"]).any():
        out["plddt"] = continuous(bf["plddt"], "1", description="predicted lDDT (0-100) from the B-factor column")
    return label_dataset(out, n)
