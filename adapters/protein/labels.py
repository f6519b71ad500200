"""Biological variables for protein tokens: sequence labels, per-protein tables, helpers.

Every builder follows the label contract of ``docs/architecture.md``: it takes the
store's tokens (an ``xr.Dataset`` whose coordinates ``protein`` (str), ``position``
(int, 1-based) and ``residue`` (one letter) run along dim ``token``) and returns an
``xr.Dataset`` along the same ``token`` dim, same length and order.  Concepts are
``float32`` 1/0/NaN with ``attrs["kind"] == "concept"``; continuous variables are
``float32`` with NaN for unknown and ``attrs["kind"] == "continuous"`` plus ``units``.
The dataset attribute ``group`` is ``"protein"``.

Structure labels live in :mod:`.structure`, annotation labels in :mod:`.annotations`,
the embedded demo dataset in :mod:`.demo`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

__all__ = [
    "AMINO_ACIDS",
    "AA_CLASSES",
    "AA_SCALES",
    "LabelError",
    "TokenTable",
    "concept",
    "continuous",
    "label_dataset",
    "merge_labels",
    "protein_rows",
    "protein_table_labels",
    "sequence_labels",
    "token_table",
    "tokens_from_sequences",
]

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
"""The 20 standard amino acids, one-letter codes, alphabetical."""

AA_CLASSES: dict[str, frozenset[str]] = {
    # Taylor (1986) J. Theor. Biol. 119:205, as tabulated by Livingstone & Barton (1993) CABIOS 9:745.
    "hydrophobic": frozenset("ACFGHIKLMTVWY"),
    "polar": frozenset("CDEHKNQRSTWY"),
    "small": frozenset("ACDGNPSTV"),
    "tiny": frozenset("ACGS"),
    "aliphatic": frozenset("ILV"),
    "aromatic": frozenset("FHWY"),
    "positive": frozenset("HKR"),
    "negative": frozenset("DE"),
    "charged": frozenset("DEHKR"),
    "proline": frozenset("P"),
}
"""Physicochemical classes (Taylor 1986); each becomes the concept ``class_<name>``."""


def _scale(values: str) -> dict[str, float]:
    return dict(zip(AMINO_ACIDS, map(float, values.split()), strict=True))


# pKa of ionisable side chains (Lehninger) for the Henderson-Hasselbalch charge at pH 7.
_PKA_ACID = {"D": 3.65, "E": 4.25, "C": 8.18, "Y": 10.07}
_PKA_BASE = {"H": 6.00, "K": 10.53, "R": 12.48}


def _charge(aa: str, ph: float = 7.0) -> float:
    if aa in _PKA_ACID:
        return -1.0 / (1.0 + 10 ** (_PKA_ACID[aa] - ph))
    if aa in _PKA_BASE:
        return 1.0 / (1.0 + 10 ** (ph - _PKA_BASE[aa]))
    return 0.0


class Scale(NamedTuple):
    """A per-residue numeric scale: values by one-letter code and their units."""

    values: dict[str, float]
    units: str
    reference: str


AA_SCALES: dict[str, Scale] = {
    "hydropathy_kd": Scale(
        _scale("1.8 2.5 -3.5 -3.5 2.8 -0.4 -3.2 4.5 -3.9 3.8 1.9 -3.5 -1.6 -3.5 -4.5 -0.8 -0.7 4.2 -0.9 -1.3"),
        "1",
        "Kyte & Doolittle (1982) J. Mol. Biol. 157:105",
    ),
    "charge_ph7": Scale(
        {aa: round(_charge(aa), 4) for aa in AMINO_ACIDS},
        "e",
        "side-chain Henderson-Hasselbalch charge at pH 7, Lehninger pKa values",
    ),
    "volume": Scale(
        _scale(
            "88.6 108.5 111.1 138.4 189.9 60.1 153.2 166.7 168.6 166.7 162.9 114.1 112.7 143.8 "
            "173.4 89.0 116.1 140.0 227.8 193.6"
        ),
        "angstrom^3",
        "Zamyatnin (1972) Prog. Biophys. Mol. Biol. 24:107",
    ),
    "mass": Scale(
        _scale(
            "71.0788 103.1388 115.0886 129.1155 147.1766 57.0519 137.1411 113.1594 128.1741 113.1594 "
            "131.1926 114.1038 97.1167 128.1307 156.1875 87.0782 101.1051 99.1326 186.2132 163.1760"
        ),
        "Da",
        "average residue mass (amino acid minus water)",
    ),
    "max_asa": Scale(
        _scale("129 167 193 223 240 104 224 197 236 201 224 195 159 225 274 155 172 174 285 263"),
        "angstrom^2",
        "theoretical maximum accessible surface area, Tien et al. (2013) PLoS ONE 8:e80635",
    ),
}
"""Continuous per-residue scales; each becomes a continuous variable of that name."""


class LabelError(ValueError):
    """Label input is missing, malformed, or does not match the tokens."""


class TokenTable(NamedTuple):
    """The token coordinates a label builder reads, as NumPy arrays of length ``n_tokens``."""

    protein: np.ndarray
    """``(n_tokens,)`` str: protein id."""
    position: np.ndarray
    """``(n_tokens,)`` int64: 1-based residue number in the full sequence."""
    residue: np.ndarray
    """``(n_tokens,)`` str: one-letter residue code (upper case)."""


def token_table(tokens: xr.Dataset | Mapping[str, Iterable]) -> TokenTable:
    """Read ``protein``, ``position`` and ``residue`` from a store's tokens.

    Parameters
    ----------
    tokens
        The ``xr.Dataset`` from ``open_store`` (only its coordinates are read, so a
        dask-backed store costs no activation reads) or any mapping with those keys.

    Raises
    ------
    LabelError
        If a coordinate is missing, lengths differ, or a position is below 1.
    """
    cols = {}
    for name in ("protein", "position", "residue"):
        if name not in tokens:
            have = sorted(map(str, getattr(tokens, "coords", tokens)))
            raise LabelError(f"tokens have no coordinate {name!r} (they have {have}); protein labels need "
                             "the coordinates protein, position and residue along dim 'token'")
        cols[name] = np.asarray(tokens[name].values if hasattr(tokens[name], "values") else tokens[name])
    n = {k: len(v) for k, v in cols.items()}
    if len(set(n.values())) != 1:
        raise LabelError(f"token coordinates differ in length: {n}")
    position = cols["position"].astype(np.int64)
    if len(position) and position.min() < 1:
        i = int(np.argmin(position))
        raise LabelError(f"token {i} of protein {cols['protein'][i]!r} has position {position[i]}; positions are 1-based")
    residue = np.char.upper(cols["residue"].astype(str))
    return TokenTable(cols["protein"].astype(str), position, residue)


def tokens_from_sequences(sequences: Mapping[str, str]) -> xr.Dataset:
    """Token coordinates (``protein``, ``position``, ``residue`` along ``token``) of whole
    sequences, in the order a store of those proteins holds them; for labelling without a store."""
    ids = list(sequences)
    lengths = np.array([len(sequences[i]) for i in ids], np.int64)
    protein = np.repeat(np.array(ids, dtype=str), lengths)
    position = np.concatenate([np.arange(1, n + 1) for n in lengths]) if len(ids) else np.zeros(0, np.int64)
    residue = np.array(list("".join(sequences[i] for i in ids)), dtype="<U1")
    return xr.Dataset(coords={"protein": ("token", protein), "position": ("token", position),
                              "residue": ("token", residue)})


def protein_rows(protein: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """``(protein id, token indices)`` per protein, in one sort (not one scan per protein)."""
    order = np.argsort(protein, kind="stable")
    ids, starts = np.unique(protein[order], return_index=True)
    for pid, rows in zip(ids, np.split(order, starts[1:]), strict=True):
        yield str(pid), rows


def concept(values: np.ndarray, dim: str = "token", **attrs: str) -> xr.DataArray:
    """A concept variable: float32 1/0/NaN with ``kind="concept"``."""
    return xr.DataArray(np.asarray(values, np.float32), dims=dim, attrs={"kind": "concept", **attrs})


def continuous(values: np.ndarray, units: str, dim: str = "token", **attrs: str) -> xr.DataArray:
    """A continuous variable: float32 with NaN unknown, ``kind="continuous"`` and ``units``."""
    return xr.DataArray(
        np.asarray(values, np.float32), dims=dim, attrs={"kind": "continuous", "units": units, **attrs}
    )


def label_dataset(variables: Mapping[str, xr.DataArray], n_tokens: int, **attrs: str) -> xr.Dataset:
    """Assemble token labels into the contract's dataset (``group="protein"``)."""
    ds = xr.Dataset(dict(variables), attrs={"group": "protein", **attrs})
    if ds.sizes.get("token", n_tokens) != n_tokens:
        raise LabelError(f"labels have {ds.sizes['token']} tokens, the store has {n_tokens}")
    return ds


def merge_labels(*datasets: xr.Dataset) -> xr.Dataset:
    """Merge label datasets of the same tokens; a variable name may occur only once."""
    seen: dict[str, int] = {}
    for i, ds in enumerate(datasets):
        for name in ds.data_vars:
            if name in seen:
                raise LabelError(f"label variable {name!r} occurs in datasets {seen[name]} and {i}")
            seen[str(name)] = i
    out = xr.merge(datasets, combine_attrs="drop_conflicts")
    out.attrs["group"] = "protein"
    return out


def sequence_labels(tokens: xr.Dataset | Mapping[str, Iterable], *, ph: float = 7.0) -> xr.Dataset:
    """Labels that depend only on the residue letter.

    Variables (all ``(token,)`` float32):

    * ``aa_A`` ... ``aa_Y`` — one-hot amino-acid identity (concepts);
    * ``class_<name>`` for each of :data:`AA_CLASSES` (concepts);
    * each of :data:`AA_SCALES` (continuous; ``charge_ph7`` is recomputed at ``ph``).

    Non-standard letters (``X``, ``B``, ``Z``, ``U``, ``O``, gaps) get NaN in every variable.
    """
    tab = token_table(tokens)
    letters = np.array(list(AMINO_ACIDS))
    idx = np.searchsorted(letters, tab.residue)
    known = (idx < len(letters)) & (letters[np.minimum(idx, len(letters) - 1)] == tab.residue)
    nan = np.float32(np.nan)
    out: dict[str, xr.DataArray] = {}
    for k, aa in enumerate(AMINO_ACIDS):
        out[f"aa_{aa}"] = concept(np.where(known, idx == k, nan), description=f"residue is {aa}")
    for name, members in AA_CLASSES.items():
        table = np.array([aa in members for aa in AMINO_ACIDS], np.float32)
        out[f"class_{name}"] = concept(
            np.where(known, table[np.minimum(idx, 19)], nan),
            description=f"residue in Taylor (1986) class {name}: {''.join(sorted(members))}",
        )
    for name, scale in AA_SCALES.items():
        values = scale.values if name != "charge_ph7" else {aa: _charge(aa, ph) for aa in AMINO_ACIDS}
        table = np.array([values[aa] for aa in AMINO_ACIDS], np.float32)
        out[name] = continuous(np.where(known, table[np.minimum(idx, 19)], nan), scale.units,
                               reference=scale.reference)
    return label_dataset(out, len(tab.protein))


def protein_table_labels(
    table: str | os.PathLike | pd.DataFrame,
    *,
    id_column: str = "protein",
    items: Iterable[str] | None = None,
    categorical: Iterable[str] | None = None,
    units: Mapping[str, str] | None = None,
    unknown_ids: str = "error",
) -> xr.Dataset:
    """Per-protein variables from a CSV table (family, localisation, fitness, ...).

    Parameters
    ----------
    table
        A CSV path (``.csv``/``.tsv``, gzip allowed) or a DataFrame; one row per protein.
    id_column
        Column holding the protein ids (the store's ``protein`` coordinate values).
    items
        The store's protein ids.  If given, the result has exactly these items in this
        order (proteins absent from the table get NaN) and table ids not among them are
        handled by ``unknown_ids``.  If ``None``, the table's ids in table order.
    categorical
        Columns to one-hot as concepts ``<column>=<value>``.  Default: every
        non-numeric column.  Other columns must be numeric and become continuous.
    units
        Units per numeric column (default ``"1"``).
    unknown_ids
        ``"error"`` (default) raises for table ids not in ``items``; ``"ignore"`` drops them.

    Returns
    -------
    xr.Dataset
        Along dim ``item`` (coordinate ``item`` = protein ids), ``attrs["group"] = "protein"``.
    """
    name = str(table) if not isinstance(table, pd.DataFrame) else "<DataFrame>"
    if isinstance(table, pd.DataFrame):
        df = table.copy()
    else:
        sep = "\t" if str(table).removesuffix(".gz").endswith((".tsv", ".tab")) else ","
        try:
            df = pd.read_csv(table, sep=sep, dtype={id_column: str})
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
            raise LabelError(f"cannot read the protein table {name}: {err}") from err
    if id_column not in df.columns:
        raise LabelError(f"protein table {name} has no id column {id_column!r}; its columns are {list(df.columns)}")
    ids = df[id_column].astype(str)
    if ids.duplicated().any():
        raise LabelError(f"protein table {name}: id {ids[ids.duplicated()].iloc[0]!r} occurs more than once")
    if unknown_ids not in ("error", "ignore"):
        raise ValueError(f"unknown_ids must be 'error' or 'ignore', got {unknown_ids!r}")
    df = df.drop(columns=id_column).set_index(pd.Index(ids, name="item"))
    if items is not None:
        items = [str(i) for i in items]
        extra = sorted(set(df.index) - set(items))
        if extra and unknown_ids == "error":
            raise LabelError(f"protein table {name}: {len(extra)} ids are not proteins of the store, "
                             f"e.g. {extra[:5]}; pass unknown_ids='ignore' to drop them")
        df = df.reindex(items)
    cat = (
        [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
        if categorical is None else list(categorical)
    )
    for c in cat:
        if c not in df.columns:
            raise LabelError(f"protein table {name} has no column {c!r}; its columns are {list(df.columns)}")
    units = dict(units or {})
    out: dict[str, xr.DataArray] = {}
    for c in df.columns:
        col = df[c]
        if c in cat:
            present = col.notna().to_numpy()
            for value in sorted(col.dropna().astype(str).unique()):
                hit = (col.astype(str) == value).to_numpy()
                out[f"{c}={value}"] = concept(np.where(present, hit, np.nan), dim="item", column=str(c))
        else:
            try:
                values = pd.to_numeric(col).to_numpy(np.float64)
            except (ValueError, TypeError) as err:
                raise LabelError(f"protein table {name}: column {c!r} is neither numeric nor listed "
                                 f"as categorical ({err})") from err
            out[str(c)] = continuous(values, units.get(str(c), "1"), dim="item")
    return xr.Dataset(out, coords={"item": df.index.to_numpy(str)}, attrs={"group": "protein"})
