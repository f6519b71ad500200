"""Sequence labels, per-protein table labels and the label-contract helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sciinterp_adapters.protein.labels import (
    AA_CLASSES,
    AMINO_ACIDS,
    LabelError,
    merge_labels,
    protein_rows,
    protein_table_labels,
    sequence_labels,
    token_table,
    tokens_from_sequences as make_tokens,
)


def test_sequence_labels_values_and_contract():
    tokens = make_tokens({"p1": "ACDKX", "p2": "wr"})
    ds = sequence_labels(tokens)
    assert ds.attrs["group"] == "protein" and ds.sizes == {"token": 7}
    assert len([v for v in ds.data_vars if v.startswith("aa_")]) == 20
    for name, var in ds.data_vars.items():
        assert var.dtype == np.float32 and var.dims == ("token",)
        assert var.attrs["kind"] in ("concept", "continuous"), name
        if var.attrs["kind"] == "continuous":
            assert "units" in var.attrs
        assert np.isnan(var.values[4]), f"{name} should be NaN for X"
    onehot = np.stack([ds[f"aa_{a}"].values for a in AMINO_ACIDS])
    assert onehot[:, [0, 1, 2, 3, 5, 6]].sum(0).tolist() == [1] * 6
    assert ds["aa_W"].values[5] == 1 and ds["aa_R"].values[6] == 1  # lower case read as upper
    np.testing.assert_allclose(ds["hydropathy_kd"].values[[0, 1, 2, 3, 5, 6]], [1.8, 2.5, -3.5, -3.9, -0.9, -4.5])
    np.testing.assert_allclose(ds["volume"].values[0], 88.6, rtol=1e-6)
    assert ds["volume"].attrs["units"] == "angstrom^3"
    # charge at pH 7: Asp about -1, Lys about +1, Ala 0
    np.testing.assert_allclose(ds["charge_ph7"].values[[0, 2, 3]], [0.0, -0.9996, 0.9997], atol=1e-3)
    assert ds["class_charged"].values[[0, 2, 3, 6]].tolist() == [0, 1, 1, 1]
    assert ds["class_aromatic"].values[5] == 1 and ds["class_tiny"].values[0] == 1


def test_classes_are_taylor_sets():
    assert AA_CLASSES["positive"] | AA_CLASSES["negative"] == AA_CLASSES["charged"]
    assert AA_CLASSES["tiny"] <= AA_CLASSES["small"] and AA_CLASSES["aliphatic"] <= AA_CLASSES["hydrophobic"]
    ds = sequence_labels(make_tokens({"p": AMINO_ACIDS}))
    assert int(ds["class_hydrophobic"].sum()) == 13 and int(ds["class_polar"].sum()) == 12


def test_ph_changes_histidine_charge():
    tokens = make_tokens({"p": "H"})
    low, high = (float(sequence_labels(tokens, ph=ph)["charge_ph7"][0]) for ph in (5.0, 8.0))
    assert low == pytest.approx(1 / (1 + 10 ** -1.0), rel=1e-5) and high == pytest.approx(1 / (1 + 10 ** 2.0), rel=1e-5)


def test_token_table_errors():
    with pytest.raises(LabelError, match="tokens have no coordinate 'residue'"):
        token_table({"protein": ["a"], "position": [1]})
    with pytest.raises(LabelError, match="differ in length"):
        token_table({"protein": ["a"], "position": [1, 2], "residue": ["A"]})
    with pytest.raises(LabelError, match="position 0; positions are 1-based"):
        token_table({"protein": ["a"], "position": [0], "residue": ["A"]})


def test_protein_rows_groups_once():
    groups = dict(protein_rows(np.array(["b", "a", "b", "c", "a"])))
    assert {k: v.tolist() for k, v in groups.items()} == {"a": [1, 4], "b": [0, 2], "c": [3]}


def test_protein_table_labels_csv(tmp_path):
    path = tmp_path / "meta.csv"
    pd.DataFrame({"id": ["p1", "p2", "p3"], "family": ["kinase", "protease", "kinase"],
                  "localisation": ["cytoplasm", None, "membrane"], "fitness": [0.5, -1.25, np.nan]}).to_csv(path, index=False)
    ds = protein_table_labels(path, id_column="id", items=["p3", "p1", "p9", "p2"], units={"fitness": "log2 ratio"})
    assert ds.sizes == {"item": 4} and ds["item"].values.tolist() == ["p3", "p1", "p9", "p2"]
    assert ds.attrs["group"] == "protein"
    np.testing.assert_array_equal(ds["family=kinase"].values, [1, 1, np.nan, 0])
    np.testing.assert_array_equal(ds["localisation=membrane"].values, [1, 0, np.nan, np.nan])
    assert ds["family=kinase"].attrs["kind"] == "concept" and ds["family=kinase"].dtype == np.float32
    np.testing.assert_array_equal(ds["fitness"].values, [np.nan, 0.5, np.nan, -1.25])
    assert ds["fitness"].attrs == {"kind": "continuous", "units": "log2 ratio"}


def test_protein_table_errors(tmp_path):
    path = tmp_path / "meta.csv"
    path.write_text("name,family\np1,a\np2,b\n")
    with pytest.raises(LabelError, match=r"meta.csv has no id column 'protein'; its columns are \['name', 'family'\]"):
        protein_table_labels(path)
    with pytest.raises(LabelError, match=r"1 ids are not proteins of the store, e.g. \['p2'\]"):
        protein_table_labels(path, id_column="name", items=["p1"])
    ds = protein_table_labels(path, id_column="name", items=["p1"], unknown_ids="ignore")
    assert ds["family=a"].values.tolist() == [1.0] and "family=b" not in ds  # categories of kept rows only
    path.write_text("protein,x\np1,1\np1,2\n")
    with pytest.raises(LabelError, match="id 'p1' occurs more than once"):
        protein_table_labels(path)
    with pytest.raises(LabelError, match="cannot read the protein table"):
        protein_table_labels(tmp_path / "missing.csv")
    df = pd.DataFrame({"protein": ["p1"], "score": ["high"]})
    with pytest.raises(LabelError, match="column 'score' is neither numeric"):
        protein_table_labels(df, categorical=[])


def test_merge_labels_rejects_duplicates():
    tokens = make_tokens({"p": "AC"})
    a = sequence_labels(tokens)
    merged = merge_labels(a[["aa_A"]], a[["volume"]])
    assert set(merged.data_vars) == {"aa_A", "volume"} and merged.attrs["group"] == "protein"
    with pytest.raises(LabelError, match="'aa_A' occurs in datasets 0 and 1"):
        merge_labels(a[["aa_A"]], a[["aa_A"]])
