import numpy as np
import pytest

from sciinterp.harvest import _rank_of, describe_data, harvest_to_store
from sciinterp.provenance import file_checksum
from sciinterp.store import StoreError, open_store, stored_items
from sciinterp.testing import FakeAdapter


def test_describe_data_hashes_content_not_identity(tmp_path):
    f = tmp_path / "seqs.fasta"
    f.write_text(">a\nMKV\n")
    desc, h = describe_data(f)
    assert desc == str(f) and h == file_checksum(f)
    f.write_text(">a\nMKW\n")
    assert describe_data(f)[1] != h  # content changed -> hash changed
    assert describe_data([1, 2, 3]) == ("[1, 2, 3]", describe_data((1, 2, 3))[1])
    assert describe_data(list(range(500)))[0] == "list of 500"
    a, b = np.arange(10.0), np.arange(10.0)
    assert describe_data(a) == describe_data(b) and describe_data(a)[0] == "numpy.ndarray"
    assert describe_data(a)[1] != describe_data(a + 1)[1]


def test_item_split_across_parts_is_stable_and_balanced():
    keys = [f"prot{i}" for i in range(2000)]
    ranks = [_rank_of(k, 4) for k in keys]
    assert ranks == [_rank_of(k, 4) for k in keys]  # not Python's per-process hash()
    counts = np.bincount(ranks, minlength=4)
    assert counts.min() > 400 and counts.sum() == 2000


def test_parts_in_one_process_cover_every_item_once(tmp_path):
    a = FakeAdapter(items_per_batch=2)
    lengths = [3, 5, 2, 7, 4, 6, 1, 8, 3, 2]
    for rank in range(3):
        harvest_to_store(a, lengths, ["out"], tmp_path / "p", part=(rank, 3), chunk_rows=4, progress=False)
    per_part = [stored_items(p) for p in sorted((tmp_path / "p").glob("part-*"))]
    assert sorted(i for items in per_part for i in items) == sorted(f"seq{i}" for i in range(10))
    ds = open_store(tmp_path / "p")
    assert ds.sizes["token"] == sum(lengths) and ds.attrs["complete"]
    # rerunning a finished part is a no-op: nothing duplicated
    harvest_to_store(a, lengths, ["out"], tmp_path / "p", part=(1, 3), chunk_rows=4, progress=False)
    assert open_store(tmp_path / "p").sizes["token"] == sum(lengths)


def test_part_argument_is_validated(tmp_path):
    with pytest.raises(ValueError, match=r"part=\(rank=2, world=2\) needs 0 <= rank < world"):
        harvest_to_store(FakeAdapter(), [3], ["out"], tmp_path / "p", part=(2, 2), progress=False)


class _Broken(FakeAdapter):
    """Fails after ``after`` batches: in the model, or with a batch the store must refuse."""

    def __init__(self, after, how):
        super().__init__(items_per_batch=2)
        self.after, self.how = after, how

    def harvest(self, data, hooks, *, skip=()):
        for i, b in enumerate(super().harvest(data, hooks, skip=skip)):
            if i == self.after:
                if self.how == "model":
                    raise RuntimeError("CUDA out of memory (simulated)")
                b.acts["out"] = b.acts["out"][:, :3]  # wrong width
            yield b


@pytest.mark.parametrize("write_behind", [True, False])
def test_failures_keep_whole_items_and_resume(tmp_path, write_behind):
    lengths = [3, 5, 2, 7, 4, 6, 1, 8, 3, 2]
    ref = tmp_path / "ref.zarr"
    harvest_to_store(FakeAdapter(items_per_batch=2), lengths, ["out"], ref, chunk_rows=4, progress=False)
    path = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        harvest_to_store(_Broken(3, "model"), lengths, ["out"], path, chunk_rows=4, write_behind=write_behind,
                         progress=False)  # fmt: skip
    assert stored_items(path) == [f"seq{i}" for i in range(6)] and not open_store(path).attrs["complete"]
    with pytest.raises(StoreError, match="hook 'out' is stored with width 8, cannot append width 3"):
        harvest_to_store(_Broken(1, "width"), lengths, ["out"], path, chunk_rows=4, write_behind=write_behind,
                         progress=False)  # fmt: skip
    assert stored_items(path) == [f"seq{i}" for i in range(8)] and not open_store(path).attrs["complete"]
    harvest_to_store(FakeAdapter(items_per_batch=2), lengths, ["out"], path, chunk_rows=4,
                     write_behind=write_behind, progress=False)  # fmt: skip
    got, want = open_store(path), open_store(ref)
    assert got.attrs["complete"]
    np.testing.assert_array_equal(got.out.values, want.out.values)
    np.testing.assert_array_equal(got.seq.values, want.seq.values)
