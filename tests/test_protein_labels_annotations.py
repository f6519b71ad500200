"""UniProt feature-table labels (flat file, JSON, GFF) and pyhmmer domain labels."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from sciinterp_adapters.protein.annotations import annotation_labels, hmm_domain_labels, read_annotations
from sciinterp_adapters.protein.demo import PROTEOME, SWISSPROT
from sciinterp_adapters.protein.labels import LabelError
from sciinterp_adapters.protein.labels import tokens_from_sequences as make_tokens

SEQ = "MACDEFGHIKLCNPQRSTVW"
SWISS = f"""ID   TEST_HUMAN              Reviewed;          20 AA.
AC   P99999; Q11111;
DE   RecName: Full=Test protein;
OS   Homo sapiens (Human).
FT   SIGNAL          1..4
FT   HELIX           5..9
FT   DISULFID        3..12
FT   MOD_RES         7
FT                   /note="Phosphoserine"
FT   REGION          1..20
FT   TRANSMEM        14..?
SQ   SEQUENCE   20 AA;  2300 MW;  0000000000000000 CRC64;
     {SEQ[:10]} {SEQ[10:]}
//
"""
JSON = {"results": [{
    "primaryAccession": "P99999", "uniProtkbId": "TEST_HUMAN", "sequence": {"value": SEQ},
    "features": [
        {"type": "Signal", "location": {"start": {"value": 1}, "end": {"value": 4}}},
        {"type": "Helix", "location": {"start": {"value": 5}, "end": {"value": 9}}},
        {"type": "Disulfide bond", "location": {"start": {"value": 3}, "end": {"value": 12}}},
        {"type": "Modified residue", "location": {"start": {"value": 7}, "end": {"value": 7}}},
        {"type": "Region", "location": {"start": {"value": 1}, "end": {"value": 20}}},
    ],
}]}
GFF = """##gff-version 3
##sequence-region P99999 1 20
P99999\tUniProtKB\tSignal peptide\t1\t4\t.\t.\t.\t.
P99999\tUniProtKB\tHelix\t5\t9\t.\t.\t.\t.
P99999\tUniProtKB\tDisulfide bond\t3\t12\t.\t.\t.\t.
P99999\tUniProtKB\tModified residue\t7\t7\t.\t.\t.\tNote=Phosphoserine
P99999\tUniProtKB\tRegion\t1\t20\t.\t.\t.\t.
"""
PYHMMER_DATA = Path(__import__("pyhmmer").__file__).parent / "tests" / "data"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "t.dat").write_text(SWISS)
    (tmp_path / "t.json").write_text(json.dumps(JSON))
    (tmp_path / "t.gff").write_text(GFF)
    return tmp_path


@pytest.mark.parametrize("name", ["t.dat", "t.json", "t.gff"])
def test_feature_labels_from_each_format(files, name):
    ann = read_annotations(files / name)
    tokens = make_tokens({"sp|P99999|TEST_HUMAN": SEQ, "other": "ACD"})
    ds = annotation_labels(tokens, ann, kinds=["signal_peptide", "helix", "disulfide", "modified_residue"])
    assert ds.attrs["group"] == "protein" and ds.sizes["token"] == 23
    v = {k: ds[f"uniprot_{k}"].values for k in ("signal_peptide", "helix", "disulfide", "modified_residue")}
    assert np.flatnonzero(v["signal_peptide"][:20] == 1).tolist() == [0, 1, 2, 3]
    assert np.flatnonzero(v["helix"][:20] == 1).tolist() == [4, 5, 6, 7, 8]
    assert np.flatnonzero(v["disulfide"][:20] == 1).tolist() == [2, 11]  # the two cysteines, not the range
    assert SEQ[2] == SEQ[11] == "C"
    assert np.flatnonzero(v["modified_residue"][:20] == 1).tolist() == [6]
    assert np.isnan(v["helix"][20:]).all()  # no entry for "other"
    assert ds["uniprot_helix"].attrs["kind"] == "concept" and ds["uniprot_helix"].dtype == np.float32


def test_flat_file_names_and_unknown_positions(files):
    ann = read_annotations(files / "t.dat")
    assert {"P99999", "Q11111", "TEST_HUMAN"} <= set(ann)
    kinds = {f.kind for f in ann["P99999"].features}
    assert kinds == {"signal_peptide", "helix", "disulfide", "modified_residue"}  # REGION ignored, 14..? dropped


def test_annotation_errors(files, tmp_path):
    ann = read_annotations(files / "t.dat")
    with pytest.raises(LabelError, match=r"protein 'P99999' position 2: token residue 'W' but UniProt entry P99999 has 'A'"):
        annotation_labels(make_tokens({"P99999": "MW"}), ann)
    with pytest.raises(LabelError, match="beyond the 20 residues of UniProt entry P99999"):
        annotation_labels(make_tokens({"P99999": SEQ + "AA"}), ann)
    with pytest.raises(LabelError, match="unknown feature kind 'sheet'"):
        annotation_labels(make_tokens({"P99999": SEQ}), ann, kinds=["sheet"])
    with pytest.raises(LabelError, match="annotation file .*missing.dat does not exist"):
        read_annotations(tmp_path / "missing.dat")
    bad = tmp_path / "bad.json"
    bad.write_text('{"results": [{"features": []}]}')
    with pytest.raises(LabelError, match="bad.json: entry 0 has no 'primaryAccession'"):
        read_annotations(bad)
    empty = tmp_path / "empty.dat"
    empty.write_text("")
    with pytest.raises(LabelError, match="empty.dat holds no swiss entries"):
        read_annotations(empty)


def test_shipped_swissprot_subset():
    ann = read_annotations(SWISSPROT)
    entries = {a.accession for a in ann.values()}
    assert len(entries) >= 120
    kinds = {f.kind for a in ann.values() for f in a.features}
    assert {"helix", "strand", "transmembrane", "disulfide", "modified_residue", "domain",
            "binding_site", "metal_binding", "active_site", "signal_peptide"} <= kinds


def _domtbl() -> list[tuple[str, float, int, int]]:
    rows = []
    for line in (PYHMMER_DATA / "tables" / "PF02826.domtbl").read_text().splitlines():
        if not line.startswith("#"):
            f = line.split()
            rows.append((f[0], float(f[12]), int(f[19]), int(f[20])))  # target, i-Evalue, env from, env to
    return rows


def test_hmm_domains_match_hmmer_domtbl():
    rows = _domtbl()
    with gzip.open(PROTEOME, "rt") as fh:
        from Bio import SeqIO

        seqs = {r.id: str(r.seq) for r in SeqIO.parse(fh, "fasta")}
    hit_ids = sorted({r[0] for r in rows})
    ids = hit_ids + sorted(set(seqs) - set(hit_ids))[:30]
    tokens = make_tokens({i: seqs[i] for i in ids})
    # Z: E-values as in the full 2,100-protein search that wrote the domtbl
    ds = hmm_domain_labels(tokens, PYHMMER_DATA / "hmms" / "txt" / "PF02826.hmm", search_options={"Z": 2100})
    v = ds["hmm_2-Hacid_dh_C"].values
    assert ds["hmm_2-Hacid_dh_C"].attrs["kind"] == "concept" and not np.isnan(v).any()
    prot, pos = tokens.protein.values, tokens.position.values
    strong = [r for r in rows if r[1] <= 0.01]
    assert len(strong) == 12
    for pid, _, a, b in strong:  # every significant domain envelope is labelled exactly
        m = prot == pid
        assert (v[m & (pos >= a) & (pos <= b)] == 1).all(), pid
    envelopes = np.zeros(len(v), bool)
    for pid, _, a, b in rows:
        envelopes |= (prot == pid) & (pos >= a) & (pos <= b)
    assert not (v[~envelopes] == 1).any()  # nothing outside HMMER's reported envelopes
    assert (v[~np.isin(prot, hit_ids)] == 0).all()


def test_hmm_file_error(tmp_path):
    bad = tmp_path / "bad.hmm"
    bad.write_text("not an hmm\n")
    with pytest.raises(LabelError, match="cannot read HMM file .*bad.hmm"):
        hmm_domain_labels(make_tokens({"p": "ACDE"}), bad)
