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
