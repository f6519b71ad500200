"""The embedded protein dataset: sizes, consistency, and the demo FASTA <-> label round trip."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import xarray as xr

from sciinterp_adapters.protein.demo import (
    DATA_DIR,
    PROTEOME,
    STRUCTURES,
    TEST_PDB_DIR,
    demo_records,
    load_demo_dataset,
    read_records,
    record_from_json,
    record_to_json,
    structure_labels_from_shipped,
    write_records,
    write_structure_fasta,
)
from sciinterp_adapters.protein.labels import tokens_from_sequences
from sciinterp_adapters.protein.structure import SS8_CODES


def test_shipped_size_budget():
    files = [p for p in DATA_DIR.rglob("*") if p.is_file() and "esm2_demo" not in p.name]  # the model is not ours
    total = sum(p.stat().st_size for p in files)
    assert total < 5.0e6, f"shipped protein data is {total / 1e6:.2f} MB"
    assert (DATA_DIR / "README.md").read_text().count("licence") >= 3


def test_proteome_corpus():
    with gzip.open(PROTEOME, "rt") as fh:
        text = fh.read()
    seqs = [s.split("\n", 1)[1].replace("\n", "") for s in text.split(">")[1:]]
    assert len(seqs) == 2100 and sum(map(len, seqs)) == 680_484
    assert not any("*" in s for s in seqs)


def test_structure_records_are_consistent():
    recs = read_records()
    assert len(recs) >= 400
    residues = sum(len(r.sequence) for r in recs.values())
    assert residues >= 80_000
    assert len({r.sequence for r in recs.values()}) == len(recs)  # deduplicated by sequence
    sources = {r.meta["source"] for r in recs.values()}
    assert {"mdanalysistests", "biopython", "theseus", "emboss", "mustang", "pymol"} <= sources
    observed = 0
    for r in recs.values():
        assert set(r.ss8) <= set(SS8_CODES + "-")
        assigned = np.array([c != "-" for c in r.ss8])
        seen = np.isfinite(r.rsa)  # observed; DSSP leaves residues with an incomplete backbone unassigned
        assert seen[assigned].all() and (~assigned & seen).sum() <= 3, r.id
        assert r.meta["n_observed"] == seen.sum() >= 20
        observed += seen.sum()
    assert observed / residues > 0.85
    all_ss = "".join(r.ss8 for r in recs.values()).replace("-", "")
    frac = {c: all_ss.count(c) / len(all_ss) for c in "HEC"}
    assert 0.2 < frac["H"] < 0.5 and 0.1 < frac["E"] < 0.4  # typical globular protein composition


def test_record_json_roundtrip(tmp_path):
    rec = next(iter(read_records().values()))
    back = record_from_json(json.loads(json.dumps(record_to_json(rec))))
    assert back.sequence == rec.sequence and back.ss8 == rec.ss8 and back.meta == rec.meta
    np.testing.assert_array_equal(back.rsa, rec.rsa)
    out = write_records(tmp_path / "r.jsonl.gz", [rec])
    assert list(read_records(out)) == [rec.id]


def test_demo_fasta_ids_match_labels(tmp_path):
    from sciinterp_adapters.protein.fasta import as_records, read_fasta

    ids = write_structure_fasta(tmp_path / "s.fasta", max_length=1022)
    recs = read_fasta(tmp_path / "s.fasta")  # the ESM adapter's reader accepts it
    assert [r.id for r in recs] == ids and len(ids) >= 400
    demo = load_demo_dataset(max_length=1022)
    assert [i for i, _ in demo.records] == ids
    assert [r.id for r in as_records(demo_records(max_length=1022))] == ids  # the data=protein_structures config
    chosen = recs[:25]
    tokens = tokens_from_sequences({r.id: r.sequence for r in chosen})
    ds = demo.labels(tokens)
    assert ds.sizes["token"] == sum(len(r.sequence) for r in chosen) and ds.attrs["group"] == "protein"
    ss3 = np.stack([ds[f"ss3_{s}"].values for s in "HEC"])
    known = ~np.isnan(ss3[0])
    assert (ss3[:, known].sum(0) == 1).all() and known.mean() > 0.8
    assert np.isfinite(ds["aa_A"].values).mean() > 0.99 and np.isfinite(ds["rsa"].values).mean() > 0.8
    lookup = read_records()
    first = chosen[0]
    n = len(first.sequence)
    np.testing.assert_array_equal(ds["rsa"].values[:n], lookup[first.id].rsa)


def test_unknown_proteins_get_nan_structure_labels():
    tokens = xr.Dataset(coords={"protein": ("token", np.array(["not_shipped"] * 3)),
                                "position": ("token", np.array([1, 2, 3])),
                                "residue": ("token", np.array(list("MKV")))})
    ds = structure_labels_from_shipped(tokens)
    assert np.isnan(ds["ss3_H"].values).all() and ds["aa_M"].values.tolist() == [1, 0, 0]


def test_test_pdbs_present():
    assert sorted(p.name for p in TEST_PDB_DIR.glob("*.pdb.gz")) == ["1ahsA.pdb.gz", "3aqgA.pdb.gz", "3e8mA.pdb.gz"]
    assert STRUCTURES.stat().st_size < 3e6


@pytest.mark.slow
def test_every_shipped_record_labels_itself():
    recs = read_records()
    tokens = tokens_from_sequences({r.id: r.sequence for r in recs.values()})
    ds = structure_labels_from_shipped(tokens)
    assigned = sum(len(r.ss8) - r.ss8.count("-") for r in recs.values())
    assert int((~np.isnan(ds["ss3_H"].values)).sum()) == assigned
    assert int(np.isfinite(ds["rsa"].values).sum()) == sum(r.meta["n_observed"] for r in recs.values())


def test_labels_for_a_harvested_store(tmp_path):
    """The demo path end to end: harvest ESM-2 on shipped chains, label the store's tokens."""
    pytest.importorskip("esm")
    if not (DATA_DIR / "esm2_demo.pt").is_file():
        pytest.skip("the demo ESM-2 model is not shipped in this checkout")
    from sciinterp.harvest import harvest_to_store
    from sciinterp.store import open_store
    from sciinterp_adapters.protein.esm2 import ESM2Adapter

    recs = demo_records(max_length=1022)[:4]
    harvest_to_store(ESM2Adapter(model="demo"), recs, ["layer1"], tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    labels = structure_labels_from_shipped(store)
    assert labels.sizes["token"] == store.sizes["token"] == sum(len(s) for _, s in recs)
    lookup = read_records()
    first = store["protein"].values[0]
    rows = np.flatnonzero(store["protein"].values == first)
    rows = rows[np.argsort(store["position"].values[rows])]
    np.testing.assert_array_equal(labels["rsa"].values[rows], lookup[first].rsa)
    assert np.isfinite(labels["ss3_H"].values).mean() > 0.9
