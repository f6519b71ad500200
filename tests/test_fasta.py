"""FASTA reading and validation for protein models (sciinterp_adapters.protein.fasta)."""

import gzip

import numpy as np
import pytest

from sciinterp_adapters.protein.fasta import FastaError, ProteinRecord, as_records, protein_metadata, read_fasta


def _write(tmp_path, text, name="p.fasta", gz=False):
    path = tmp_path / name
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_reads_plain_and_gzip_identically_with_descriptions(tmp_path):
    text = ">sp|P1 first protein OS=x\nMKT\nayi\n\n>P2\nXBZUO\n"
    plain = read_fasta(_write(tmp_path, text))
    gz = read_fasta(_write(tmp_path, text, "p.fa.gz", gz=True))
    assert plain == gz == [
        ProteinRecord("sp|P1", "MKTAYI", "first protein OS=x"),  # wrapped lines joined, lowercase upper-cased
        ProteinRecord("P2", "XBZUO", ""),  # ESM's extra residue tokens pass through
    ]
    # gzip is detected by content, not by the file name
    assert read_fasta(_write(tmp_path, text, "gz-without-suffix.txt", gz=True)) == plain


def test_character_outside_alphabet_names_file_record_and_position(tmp_path):
    path = _write(tmp_path, ">ok\nMKV\n>bad one\nMKVJL\n")
    with pytest.raises(FastaError) as e:
        read_fasta(path)
    msg = str(e.value)
    assert str(path) in msg and "record 'bad' (line 3)" in msg and "'J' at residue position 4" in msg


def test_gaps_and_stops_get_specific_hints(tmp_path):
    with pytest.raises(FastaError, match="position 3 .*gap symbol"):
        read_fasta(_write(tmp_path, ">a\nMK-V\n"))
    with pytest.raises(FastaError, match="position 4 .*strip_stop=True"):
        read_fasta(_write(tmp_path, ">a\nMKV*\n"))
    assert read_fasta(_write(tmp_path, ">a\nMKV*\n"), strip_stop=True)[0].sequence == "MKV"
    with pytest.raises(FastaError, match="'\\*' at residue position 2"):  # only a terminal stop is stripped
        read_fasta(_write(tmp_path, ">a\nM*KV*\n"), strip_stop=True)


def test_empty_record_duplicate_id_and_structure_errors(tmp_path):
    p = _write(tmp_path, ">a\nMKV\n>empty desc\n>c\nMK\n")
    with pytest.raises(FastaError, match=f"{p}: record 'empty' \\(line 3\\) is empty"):
        read_fasta(p)
    p = _write(tmp_path, ">a\nMKV\n>b\nMK\n>a\nMV\n")
    with pytest.raises(FastaError, match=f"{p}: duplicate record id 'a' \\(lines 1 and 5\\)"):
        read_fasta(p)
    with pytest.raises(FastaError, match="line 1 holds sequence before the first '>' header"):
        read_fasta(_write(tmp_path, "MKV\n>a\nMK\n"))
    with pytest.raises(FastaError, match="header at line 3 has no record id"):
        read_fasta(_write(tmp_path, ">a\nMK\n> \nMK\n"))
    with pytest.raises(FastaError, match="no FASTA records"):
        read_fasta(_write(tmp_path, "\n\n"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_fasta(tmp_path / "missing.fasta")


def test_error_anywhere_in_file_is_raised_before_returning_anything(tmp_path):
    # the bad record is the last of many: validation covers the whole file
    good = "".join(f">p{i}\nMKVLA\n" for i in range(500))
    with pytest.raises(FastaError, match="record 'last'"):
        read_fasta(_write(tmp_path, good + ">last\nMKQ1\n"))


def test_limit_keeps_first_records_after_full_validation(tmp_path):
    p = _write(tmp_path, ">a\nMK\n>b\nMV\n>c\nM#\n")
    with pytest.raises(FastaError, match="record 'c'"):
        read_fasta(p, limit=1)
    assert [r.id for r in read_fasta(_write(tmp_path, ">a\nMK\n>b\nMV\n"), limit=1)] == ["a"]


def test_as_records_accepts_dicts_pairs_and_records_with_the_same_checks():
    assert as_records({"x": "mkv"}) == [ProteinRecord("x", "MKV")]
    assert as_records([("x", "MK"), ("y", "AV")])[1] == ProteinRecord("y", "AV")
    with pytest.raises(FastaError, match="duplicate record id 'x'"):
        as_records([("x", "MK"), ("x", "AV")])
    with pytest.raises(FastaError, match="record 'y' \\(line 2\\): character '1' at residue position 2"):
        as_records([("x", "MK"), ("y", "A1")])
    with pytest.raises(FastaError, match="invalid id 'a b'"):
        as_records([("a b", "MK")])
    with pytest.raises(TypeError, match="cannot read proteins from int"):
        as_records(3)


def test_protein_metadata_is_per_item_dataset():
    ds = protein_metadata([ProteinRecord("a", "MKV", "kinase"), ProteinRecord("b", "MK", "")])
    assert list(ds.item.values) == ["a", "b"]
    np.testing.assert_array_equal(ds.length.values, [3, 2])
    assert ds.description.values[0] == "kinase" and ds.length.attrs["units"] == "residues"
