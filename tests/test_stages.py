import pytest

from sciinterp.stages import StageError, run_stage


def test_stage_skips_resumes_and_refuses_conflicts(tmp_path):
    calls = []

    def work(d):
        calls.append(d)
        (d / "result.txt").write_text("42")

    inp = tmp_path / "input.txt"
    inp.write_text("a")
    run_stage("s", tmp_path / "out", {"x": 1}, work, inputs=[inp])
    run_stage("s", tmp_path / "out", {"x": 1}, work, inputs=[inp])
    assert len(calls) == 1  # unchanged: skipped

    inp.write_text("b")  # input content changed: conflict unless forced
    with pytest.raises(StageError, match="different config or inputs.*--force"):
        run_stage("s", tmp_path / "out", {"x": 1}, work, inputs=[inp])
    run_stage("s", tmp_path / "out", {"x": 1}, work, inputs=[inp], force=True)
    assert len(calls) == 2

    def crash(d):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage("t", tmp_path / "out", {"y": 1}, crash)
    run_stage("t", tmp_path / "out", {"y": 1}, work)  # same key: resumed, not refused
    assert (tmp_path / "out" / "t" / "result.txt").read_text() == "42"


def test_upstream_stage_key_propagates(tmp_path):
    up = run_stage("up", tmp_path, {"a": 1}, lambda d: None)
    seen = []
    run_stage("down", tmp_path, {}, seen.append, inputs=[up])
    run_stage("up", tmp_path, {"a": 2}, lambda d: None, force=True)
    with pytest.raises(StageError):
        run_stage("down", tmp_path, {}, seen.append, inputs=[up])


def test_store_inputs_are_fingerprinted_by_metadata_not_bytes(tmp_path, monkeypatch):
    import numpy as np
    import torch

    from sciinterp.adapter import TokenBatch
    from sciinterp.stages import fingerprint
    from sciinterp.store import StoreWriter

    path = tmp_path / "s.zarr"
    w = StoreWriter(path, chunk_rows=4, attrs={"model_checksum": "abc"})
    w.append(TokenBatch({"h": torch.zeros(4, 2)}, {"i": np.arange(4)}, ["a"]))
    w.flush()
    k1 = fingerprint({}, [path])
    w.append(TokenBatch({"h": torch.ones(4, 2)}, {"i": np.arange(4)}, ["b"]))
    w.close()
    k2 = fingerprint({}, [path])
    assert k1 != k2  # more rows committed -> new key
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    assert fingerprint({}, [path]) == k2
    assert not [f for f in opened if "/h/c/" in f]  # chunk files were not read



def test_a_store_inside_a_stage_is_fingerprinted_by_the_stage_key(tmp_path):
    from sciinterp.stages import fingerprint

    def make(d):
        (d / "store.zarr").mkdir()
        (d / "store.zarr" / "zarr.json").write_text("{}")

    up = run_stage("harvest", tmp_path, {"a": 1}, make)
    k1 = fingerprint({}, [up / "store.zarr"])
    (up / "store.zarr" / "zarr.json").write_text('{"changed": 1}')  # same stage key: same fingerprint
    assert fingerprint({}, [up / "store.zarr"]) == k1
    run_stage("harvest", tmp_path, {"a": 2}, make, force=True)
    assert fingerprint({}, [up / "store.zarr"]) != k1
