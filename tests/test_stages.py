from types import SimpleNamespace

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


# -- the train stage with downstream evaluators (train.loss_recovered in the CLI) ---------------
class _ToyEval:
    """A DownstreamEval that reports the SAE's width, so eval.json shows it ran on the trained SAE."""

    name = "toy"

    def __init__(self, scale=1.0):
        self.scale = scale

    def __call__(self, sae):
        return {"loss_recovered": 0.5 * self.scale, "d_sae": float(sae.d_sae)}

    def __repr__(self):
        return f"_ToyEval(scale={self.scale})"


def test_train_stage_writes_eval_json_and_keys_on_the_evaluators(tmp_path):
    import json

    import numpy as np

    from sciinterp.pipeline import train
    from sciinterp.sae import SAEConfig, TrainerConfig

    x = np.random.default_rng(0).normal(size=(256, 8)).astype("float32")
    sae, tc = SAEConfig(architecture="topk", d_sae=16, k=2), TrainerConfig(batch_size=64, progress=False, device="cpu")
    sae_dir, = train(x, None, [sae], tc, tmp_path, evaluators={"toy": _ToyEval()})
    assert json.loads((sae_dir / "eval.json").read_text()) == {"toy": {"loss_recovered": 0.5, "d_sae": 16.0}}
    assert json.loads((tmp_path / "train" / "config.json").read_text())["evaluators"] == {"toy": "_ToyEval(scale=1.0)"}
    assert train(x, None, [sae], tc, tmp_path, evaluators={"toy": _ToyEval()}) == [sae_dir]  # same repr: skipped
    with pytest.raises(StageError, match="different config or inputs"):  # other evaluator settings: a new key
        train(x, None, [sae], tc, tmp_path, evaluators={"toy": _ToyEval(2.0)})
    with pytest.raises(StageError, match="different config or inputs"):  # and dropping them too
        train(x, None, [sae], tc, tmp_path)
    plain, = train(x, None, [sae], tc, tmp_path / "plain")  # no evaluators: no eval.json, no key entry
    assert not (plain / "eval.json").exists()
    assert "evaluators" not in json.loads((tmp_path / "plain" / "train" / "config.json").read_text())


def test_evaluator_description_is_stable_without_a_repr():
    from sciinterp.pipeline import _describe_evaluator

    class NoRepr:
        def __call__(self, sae):
            return {}

    assert _describe_evaluator(NoRepr()) == _describe_evaluator(NoRepr())  # not the memory address
    assert _describe_evaluator(NoRepr()).endswith("NoRepr")
    assert _describe_evaluator(_ToyEval(3.0)) == "_ToyEval(scale=3.0)"


def test_loss_recovered_eval_dispatches_by_adapter_and_names_what_is_missing():
    from sciinterp.intervene import loss_recovered_eval
    from sciinterp.testing import FakeAdapter
    from sciinterp_adapters.protein.esm2 import ESM2Adapter
    from sciinterp_adapters.protein.esm2_load import random_esm2
    from sciinterp_adapters.protein.interventions import ProteinLossRecovered

    with pytest.raises(ValueError, match=r"adapter 'fake' has no loss-recovered evaluator: known \['esm2', 'fcn2', 'sfno'\]"):
        loss_recovered_eval(FakeAdapter(), "hidden", [5, 7])

    class OwnEval(FakeAdapter):  # a plugin adapter offering its own evaluator
        def loss_recovered_eval(self, hook, data, max_items=None):
            return _ToyEval(float(max_items))

    got = loss_recovered_eval(OwnEval(), "hidden", [5, 7], max_items=3)
    assert list(got) == ["toy"] and got["toy"].scale == 3.0
    with pytest.raises(ValueError, match="hook 'nope' cannot be spliced"):
        loss_recovered_eval(OwnEval(), "nope", [5, 7])
    with pytest.raises(ValueError, match="max_items=0: score at least one item"):
        loss_recovered_eval(OwnEval(), "hidden", [5, 7], max_items=0)

    esm = ESM2Adapter(module=random_esm2(2, 32, 4, seed=1), model_id="tiny")
    proteins = {"long": "A" * 1100, "a": "MKVLAAGIVG", "b": "ACDEFGHIKL", "c": "MMMMKKKK"}
    ev = loss_recovered_eval(esm, "layer1", proteins, max_items=2)["masked_lm"]
    assert isinstance(ev, ProteinLossRecovered) and list(ev.data) == ["a", "b"]  # > 1,022 residues left out
    assert repr(ev) == "ProteinLossRecovered(hook='layer1', proteins=2, first='a')"
    assert ev(SimpleNamespace(provenance={"hook_name": "layer2"})) == {}  # an SAE of another hook: not scored
    with pytest.raises(ValueError, match="no protein of at most 1022 residues"):
        loss_recovered_eval(esm, "layer1", {"long": "A" * 1100})


def test_loss_recovered_eval_for_a_weather_adapter_rolls_out_as_far_as_it_harvests(tmp_path):
    pytest.importorskip("torch_harmonics")
    from test_interventions_pipeline import save_identity_sae
    from test_interventions_weather import fields, tiny_adapter

    from sciinterp.intervene import loss_recovered_eval
    from sciinterp.sae import SparseAutoencoder

    ad = tiny_adapter()
    ad.n_steps = 2
    ev = loss_recovered_eval(ad, "block1", fields(), max_items=2)["forecast"]
    assert repr(ev) == "ForecastLossRecovered(hook='block1', n_steps=2, max_times=2)"
    out = ev(SparseAutoencoder.load(save_identity_sae(tmp_path / "sae", 8, "block1")))  # reconstructs exactly
    assert out["loss_recovered"] == pytest.approx(1.0, abs=1e-6) and out["recovered"] == pytest.approx(1.0, abs=1e-6)
    assert set(out) >= {"fve", "recovered_z", "rmse_sae_z", "rmse_mean_z"}
    other = SparseAutoencoder.load(tmp_path / "sae")
    other.provenance = {**other.provenance, "hook_name": "block0"}  # same width, another hook
    assert ev(other) == {}
