"""Structure labels: DSSP agreement with mkdssp, residue alignment (gaps, insertion codes, MSE), errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("mdtraj")
pytest.importorskip("Bio")

from sciinterp_adapters.protein.demo import TEST_PDB_DIR  # noqa: E402
from sciinterp_adapters.protein.labels import LabelError, tokens_from_sequences  # noqa: E402
from sciinterp_adapters.protein.structure import (  # noqa: E402
    SS3_OF_SS8,
    StructureError,
    align_to_sequence,
    structure_labels,
    structure_records,
)

PDB = TEST_PDB_DIR / "1ahsA.pdb.gz"
THREE_TO_ONE = {"ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E", "GLY": "G",
                "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P", "SER": "S",
                "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V"}


def _atoms() -> list[str]:
    return [ln for ln in gzip.open(PDB, "rt").read().splitlines() if ln.startswith("ATOM")]


def _residue_keys(atoms: list[str]) -> list[str]:
    return list(dict.fromkeys(ln[17:27] for ln in atoms))


def _seqres(chain: str, names: list[str]) -> list[str]:
    return [f"SEQRES {i // 13 + 1:3d} {chain} {len(names):4d}  " + " ".join(names[i : i + 13])
            for i in range(0, len(names), 13)]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\nEND\n")
    return path


@pytest.fixture(scope="module")
def full():
    (rec,) = structure_records(PDB)
    return rec


def tokens_of(records) -> xr.Dataset:
    return tokens_from_sequences({r.id: r.sequence for r in records})


def test_dssp_matches_mkdssp_on_shipped_reference_chains():
    ref = json.loads((TEST_PDB_DIR / "mkdssp_reference.json").read_text())
    assert ref["ss8_agreement"] == 1.0 and ref["residues"] == 6860  # all 50 MDAnalysis reference chains
    for name, theirs in ref["mkdssp_ss8_of_test_pdbs"].items():
        ours = "".join(c for r in structure_records(TEST_PDB_DIR / name) for c in r.ss8 if c != "-")
        assert ours == theirs, name


def test_dssp_vs_mdanalysis_reference_strings():
    # MDAnalysis' own DSSP port (pydssp) wrote these 3-state strings; it is not mkdssp, so ~97% agree
    agree = total = 0
    for f in sorted(TEST_PDB_DIR.glob("*.pdb.gz")):
        ref = f.with_suffix("").with_suffix(".pdb.dssp").read_text().split()[0]
        ours = "".join(SS3_OF_SS8[c] for r in structure_records(f) for c in r.ss8 if c != "-").replace("C", "-")
        assert len(ours) == len(ref)
        agree += sum(a == b for a, b in zip(ours, ref, strict=True))
        total += len(ref)
    assert total == 423 and agree / total > 0.95


def test_record_contents(full):
    assert full.id == "1ahsA_A" and len(full.sequence) == 126 and full.meta["sequence_from"] == "observed"
    assert full.sequence.startswith("TGPYAGAVEV")
    assert full.resid[0] == "126" and full.resid[-1] == "251"
    assert np.isfinite(full.rsa).all() and 0 < np.median(full.rsa) < 1
    assert full.bfactor_kind == "bfactor" and np.all(full.bfactor == 100.0)  # the file's B-factor column


def test_gap_with_seqres_maps_every_residue_to_its_position(tmp_path, full):
    atoms = _atoms()
    keys = _residue_keys(atoms)
    missing = set(keys[50:56])
    kept = [ln for ln in atoms if ln[17:27] not in missing]
    path = _write(tmp_path / "gap.pdb", _seqres("A", [k[:3] for k in keys]) + kept)
    (rec,) = structure_records(path)
    assert rec.sequence == full.sequence and rec.meta["sequence_from"] == "seqres"
    assert rec.ss8[50:56] == "------" and np.isnan(rec.rsa[50:56]).all()
    assert rec.resid[:50] == full.resid[:50] and rec.resid[56:] == full.resid[56:]
    assert rec.resid[49] == "175" and rec.resid[56] == "182"
    # far from the gap, secondary structure is unchanged
    assert rec.ss8[:45] == full.ss8[:45] and rec.ss8[62:] == full.ss8[62:]


def test_insertion_codes_keep_order(tmp_path, full):
    atoms = _atoms()
    keys = _residue_keys(atoms)
    renumber = {k: f"{k[:5]} 140{'ABCDE'[i]}" for i, k in enumerate(keys[15:20])}  # residues 141-145 -> 140A..E
    lines = [ln[:17] + renumber.get(ln[17:27], ln[17:27]) + ln[27:] for ln in atoms]
    (rec,) = structure_records(_write(tmp_path / "icode.pdb", lines))
    assert rec.sequence == full.sequence and rec.ss8 == full.ss8
    assert rec.resid[14:21] == ("140", "140A", "140B", "140C", "140D", "140E", "146")
    np.testing.assert_allclose(rec.rsa, full.rsa, atol=1e-6)


def test_selenomethionine_is_methionine(tmp_path, full):
    atoms = _atoms()
    keys = _residue_keys(atoms)
    mets = [k for k in keys if k.startswith("MET")]
    lines = []
    for ln in atoms:
        if ln[17:27] in mets:
            ln = "HETATM" + ln[6:17] + "MSE" + ln[20:]
            if ln[12:16] == " SD ":
                ln = ln[:12] + "SE  " + ln[16:76].ljust(64) + "SE"
        lines.append(ln)
    names = ["MSE" if k in mets else k[:3] for k in keys]
    (rec,) = structure_records(_write(tmp_path / "mse.pdb", _seqres("A", names) + lines))
    assert rec.sequence == full.sequence and rec.meta["sequence_from"] == "seqres"
    assert rec.ss8 == full.ss8
    met_pos = [i for i, aa in enumerate(rec.sequence) if aa == "M"]
    assert len(met_pos) == 2 and np.isfinite(rec.rsa[met_pos]).all()


def test_given_sequence_longer_than_structure(full):
    seq = "MKHHHHHH" + full.sequence + "GSLE"
    (rec,) = structure_records(PDB, sequences={"A": seq}, ids={"A": "his_tagged"})
    assert rec.id == "his_tagged" and rec.meta["sequence_from"] == "given"
    assert rec.ss8[:8] == "-" * 8 and rec.ss8[-4:] == "----" and rec.ss8[8:-4] == full.ss8


def test_align_to_sequence_gap_and_identity():
    m = align_to_sequence("ACDEFKLMNPQ", "ACDEFGHIKLMNPQ")
    assert m.tolist() == [0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13]
    # LA..VM: the gap may sit before or after the second A; the chain break decides
    assert align_to_sequence("LAVM", "LAPRRGDAVM").tolist() == [0, 7, 8, 9]
    assert align_to_sequence("LAVM", "LAPRRGDAVM", breaks=np.array([0, 1, 0], bool)).tolist() == [0, 1, 8, 9]
    with pytest.raises(StructureError, match=r"chainX: the 11 observed residues do not align"):
        align_to_sequence("ACDEFKLMNPQ", "WWWWWWWWWWWWWW", name="chainX")


def test_errors_name_file_and_chain(tmp_path):
    bad = tmp_path / "garbage.pdb"
    bad.write_text("this is not a PDB file\n")
    with pytest.raises(StructureError, match="garbage.pdb holds no atoms"):
        structure_records(bad)
    with pytest.raises(StructureError, match="does not exist"):
        structure_records(tmp_path / "nope.pdb")
    with pytest.raises(StructureError, match=r"chain 'B' not found in .*1ahsA.pdb.gz \(protein chains: A\)"):
        structure_records(PDB, chains=["B"])
    with pytest.raises(StructureError, match=r"1ahsA.pdb.gz chain A: .* do not align"):
        structure_records(PDB, sequences={"A": "W" * 126})


def test_plddt_detected_and_mmcif_roundtrip(tmp_path, full):
    from Bio.PDB import MMCIFIO, PDBParser

    lines = ["HEADER    ALPHAFOLD MODEL"] + _atoms()
    (rec,) = structure_records(_write(tmp_path / "af.pdb", lines))
    assert rec.bfactor_kind == "plddt"
    struct = PDBParser(QUIET=True).get_structure("x", gzip.open(PDB, "rt"))
    io = MMCIFIO()
    io.set_structure(struct)
    io.save(str(tmp_path / "x.cif"))
    (cif,) = structure_records(tmp_path / "x.cif")
    assert cif.sequence == full.sequence and cif.ss8 == full.ss8
    np.testing.assert_allclose(cif.rsa, full.rsa, atol=1e-6)


def test_structure_labels_contract(full):
    other = structure_records(TEST_PDB_DIR / "3aqgA.pdb.gz")[0]
    tokens = tokens_of([full, other])
    tokens = tokens.assign_coords(protein=("token", np.where(tokens.protein == other.id, "unlabelled", tokens.protein)))
    ds = structure_labels(tokens, [full])
    assert ds.attrs["group"] == "protein" and ds.sizes["token"] == tokens.sizes["token"]
    assert {"ss3_H", "ss3_E", "ss3_C", "ss8_G", "rsa", "bfactor", "buried"} <= set(ds.data_vars)
    n = len(full.sequence)
    assert all(ds[v].dtype == np.float32 for v in ds.data_vars)
    assert ds["ss3_H"].attrs["kind"] == "concept" and ds["rsa"].attrs["units"] == "1"
    ss3 = np.stack([ds[f"ss3_{s}"].values[:n] for s in "HEC"])
    assert np.all(ss3.sum(0) == 1)
    assert "".join("HEC"[i] for i in ss3.argmax(0)) == "".join(SS3_OF_SS8[c] for c in full.ss8)
    assert np.isnan(ds["ss3_H"].values[n:]).all() and np.isnan(ds["rsa"].values[n:]).all()
    np.testing.assert_array_equal(ds["rsa"].values[:n], full.rsa)


def test_structure_labels_reject_mismatched_residues(full):
    tokens = tokens_of([full])
    res = tokens.residue.values.copy()
    res[3] = "W"
    with pytest.raises(LabelError, match=r"protein '1ahsA_A' position 4: token residue 'W' but the structure record has 'Y'"):
        structure_labels(tokens.assign_coords(residue=("token", res)), [full])
