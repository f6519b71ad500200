"""Trainer: ground-truth recovery, every architecture, sweeps, resume, NaN stop, logs, CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sciinterp.sae import SAEConfig, SparseAutoencoder, StepInfo, TrainerConfig, evaluate, fit, train
from sciinterp.synthetic import planted_superposition


@pytest.fixture(scope="module")
def planted():
    return planted_superposition(24_000, d_in=32, n_features=128, mean_active=4, seed=0)


def _recovered(sae: SparseAutoencoder, directions: np.ndarray, cos: float = 0.9) -> float:
    W = sae.W_dec.detach().cpu().numpy()
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    return float(((directions @ W.T).max(1) > cos).mean())


def test_topk_recovers_planted_directions_small():
    data = planted_superposition(14_000, d_in=16, n_features=48, mean_active=3, power=0.0, seed=1)
    sae = fit(data.x[:12_000], [SAEConfig("topk", d_sae=96, k=3, lr=2e-2)],
              TrainerConfig(batch_size=64, epochs=1, progress=False))[0]
    assert _recovered(sae, data.directions) > 0.6
    assert evaluate(sae, data.x[12_000:]).fve > 0.6


def test_all_architectures_in_one_pass(planted):
    """A quick sweep over the four architectures (the slow test below checks each more tightly)."""
    archs = ["topk", "batchtopk", "relu", "jumprelu"]
    saes = fit(planted.x[:8_000], [SAEConfig(a, d_sae=128, k=6, lr=5e-3) for a in archs],
               TrainerConfig(batch_size=128, epochs=1, progress=False))
    for arch, sae in zip(archs, saes):
        ev = evaluate(sae, planted.x[20_000:])
        assert sae.cfg.architecture == arch
        assert ev.fve > 0.4, (arch, ev.fve)
        assert 1 <= ev.l0 <= 48, (arch, ev.l0)


@pytest.mark.slow
def test_topk_recovers_planted_directions():
    data = planted_superposition(40_000, d_in=32, n_features=256, mean_active=4, power=0.0, seed=1)
    sae = fit(data.x[:36_000], [SAEConfig("topk", d_sae=512, k=4, lr=1e-2)],
              TrainerConfig(batch_size=256, epochs=2, progress=False))[0]
    assert _recovered(sae, data.directions) > 0.75
    assert evaluate(sae, data.x[36_000:]).fve > 0.75


@pytest.mark.slow
@pytest.mark.parametrize("arch, min_fve, l0_range", [
    ("topk", 0.75, (6, 6)), ("batchtopk", 0.6, (3, 12)), ("relu", 0.55, (2, 40)), ("jumprelu", 0.55, (2, 40)),
])
def test_each_architecture_trains_to_a_sensible_fve(planted, arch, min_fve, l0_range):
    sae = fit(planted.x[:20_000], [SAEConfig(arch, d_sae=256, k=6, lr=4e-3)],
              TrainerConfig(batch_size=256, epochs=2, progress=False))[0]
    ev = evaluate(sae, planted.x[20_000:])
    assert ev.fve > min_fve
    assert l0_range[0] <= ev.l0 <= l0_range[1]
    if arch == "batchtopk":
        assert float(sae.threshold.min()) > 0  # inference threshold learnt from the batches


def test_sweep_in_one_pass_equals_separate_runs(planted):
    cfgs = [SAEConfig("topk", d_sae=128, k=4, lr=3e-3), SAEConfig("relu", d_sae=96, lr=3e-3)]
    tc = TrainerConfig(batch_size=128, max_rows=3_000, progress=False)
    together = fit(planted.x[:4_000], cfgs, tc)
    for cfg, sae in zip(cfgs, together):
        alone = fit(planted.x[:4_000], [cfg], tc)[0]
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            torch.testing.assert_close(getattr(sae, name), getattr(alone, name), rtol=0, atol=0)


class _Kill(RuntimeError):
    pass


def test_killed_run_resumes_to_the_same_result(planted, tmp_path):
    cfgs = [SAEConfig("topk", d_sae=128, k=4, lr=3e-3, dead_tokens=500), SAEConfig("jumprelu", d_sae=64, lr=3e-3)]
    tc = TrainerConfig(batch_size=100, max_rows=2_500, progress=False, checkpoint_every=4, log_every=1)
    ref = [SparseAutoencoder.load(p) for p in train(planted.x[:2_000], cfgs, tc, tmp_path / "ref")]

    def kill(info: StepInfo) -> None:
        if info.step == 14:  # after the checkpoint of step 12
            raise _Kill

    with pytest.raises(_Kill):
        train(planted.x[:2_000], cfgs, tc, tmp_path / "run", callbacks=[kill])
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    steps = []
    paths = train(planted.x[:2_000], cfgs, tc, tmp_path / "run", callbacks=[lambda i: steps.append(i.step)])
    assert steps[0] == 13 and steps[-1] == 25  # resumed after step 12 (2 epochs of 20 batches, cut at 2500 rows)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    for a, p in zip(ref, paths):
        b = SparseAutoencoder.load(p)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-6, atol=1e-7)
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "topk-128-k4.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 26))  # no duplicated steps after the resume


def test_nan_stops_with_step_and_batch(planted):
    x = planted.x[:1_000].copy()
    order = np.random.default_rng(0).permutation(1_000)
    x[order[300]] = np.nan  # batch 4 of the first pass (rows 300-400), not the first batch used for init
    with pytest.raises(FloatingPointError,
                       match=r"SAE 'topk-64-k4': non-finite loss \(nan\) at step 4 \(epoch 0, batch rows 300-400"):
        fit(x, [SAEConfig("topk", d_sae=64, k=4)], TrainerConfig(batch_size=100, seed=0, progress=False))


def test_train_writes_sae_dirs_and_csv_log(planted, tmp_path):
    tc = TrainerConfig(batch_size=200, max_rows=2_000, progress=False, log_every=2)
    paths = train(planted.x[:2_000], [SAEConfig("topk", d_sae=64, k=4, hook="blocks.3")], tc, tmp_path)
    assert paths == [tmp_path / "topk-64-k4"]
    sae = SparseAutoencoder.load(paths[0], d_in=32, hook="blocks.3")
    assert sae.provenance["hook_name"] == "blocks.3"
    rows = list(csv.DictReader((tmp_path / "logs" / "topk-64-k4.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10]
    assert all(0 <= float(r["dead"]) <= 1 and 3.9 <= float(r["l0"]) <= 4 for r in rows)  # relu after top-k: <= k


def test_cli_train_on_npy(planted, tmp_path):
    np.save(tmp_path / "acts.npy", planted.x[:3_000])
    cmd = [sys.executable, "-m", "sciinterp.cli", "train", f"+data.path={tmp_path / 'acts.npy'}", "sae=topk",
           "sae.d_sae=64", "sae.k=4", "trainer.batch_size=250", "trainer.max_rows=3000", "trainer.progress=false",
           f"out={tmp_path / 'run'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    sae = SparseAutoencoder.load(tmp_path / "run" / "train" / "topk-64-k4", d_in=32)
    assert sae.d_sae == 64 and sae.cfg.k == 4


def test_train_from_store_records_provenance(tmp_path):
    from sciinterp.harvest import harvest_to_store
    from sciinterp.sources import as_source
    from sciinterp.testing import FakeAdapter

    adapter = FakeAdapter()
    store = harvest_to_store(adapter, [40, 30, 50, 20, 60, 45, 35, 25] * 4, ["hidden"], tmp_path / "s.zarr",
                             progress=False)
    paths = train(as_source(store, hook="hidden"), [SAEConfig("topk", d_sae=32, k=2)],
                  TrainerConfig(batch_size=128, epochs=1, progress=False), tmp_path / "sae")
    prov = SparseAutoencoder.load(paths[0]).provenance
    checksum = adapter.provenance()["model_checksum"]
    assert prov["hook_name"] == "hidden" and prov["model_checksum"] == checksum and len(prov["store_hash"]) == 16
    SparseAutoencoder.load(paths[0], d_in=16, hook="hidden", model_checksum=checksum)
    with pytest.raises(ValueError, match="was trained on model checksum"):
        SparseAutoencoder.load(paths[0], model_checksum="0" * 16)


def test_several_hooks_train_in_one_pass(tmp_path):
    """SAEs on two hook points of one store train in one pass, each as if trained alone on its hook."""
    from sciinterp.harvest import harvest_to_store
    from sciinterp.sources import HookSources, StoreSource, as_source
    from sciinterp.testing import FakeAdapter

    adapter = FakeAdapter()
    store = harvest_to_store(adapter, [40, 30, 50, 20, 60, 45, 35, 25] * 4, ["hidden", "out"], tmp_path / "s.zarr",
                             chunk_rows=256, progress=False)
    src = as_source(store, hook=["hidden", "out"], buffer_rows=512)
    assert isinstance(src, HookSources) and src.d_ins == {"hidden": 16, "out": 8}
    # lockstep: row i of every hook's batch is the same token (out = a fixed function of hidden)
    ref = {h: torch.cat(list(StoreSource(store, h, buffer_rows=512).batches(100, seed=3))) for h in src.hooks}
    got = {h: torch.cat([b[h] for b in src.batches(100, seed=3)]) for h in src.hooks}
    for h in src.hooks:
        torch.testing.assert_close(got[h], ref[h], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(adapter.model[2](got["hidden"]), got["out"], rtol=1e-5, atol=1e-5)

    cfgs = [SAEConfig("topk", d_sae=32, k=2, hook="hidden"), SAEConfig("topk", d_sae=24, k=3, hook="out"),
            SAEConfig("relu", d_sae=32, hook="hidden")]
    tc = TrainerConfig(batch_size=128, epochs=1, progress=False)
    together = fit(src, cfgs, tc)
    for cfg, sae in zip(cfgs, together):
        assert sae.d_in == src.d_ins[cfg.hook] and sae.provenance["hook_name"] == cfg.hook
        alone = fit(as_source(store, hook=[cfg.hook], buffer_rows=512), [cfg], tc)[0]
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            torch.testing.assert_close(getattr(sae, name), getattr(alone, name), rtol=0, atol=0)
    paths = train(src, cfgs[:2], tc, tmp_path / "saes")
    assert [p.name for p in paths] == ["hidden-topk-32-k2", "out-topk-24-k3"]
    assert SparseAutoencoder.load(paths[1], d_in=8, hook="out").d_sae == 24
    with pytest.raises(ValueError, match=r"SAEConfig.hook='nope'.*\['hidden', 'out'\]"):
        fit(src, [SAEConfig("topk", d_sae=8, k=2, hook="nope")], tc)


def test_matryoshka_prefix_reconstructs_alone(planted):
    """The first latents of a Matryoshka SAE reconstruct on their own; a plain TopK SAE's do not."""
    x, held = planted.x[:16_000], torch.as_tensor(planted.x[20_000:])
    tc = TrainerConfig(batch_size=256, max_rows=16_000, progress=False)

    def fve(sae, m):
        z = sae.encode_dense(held)
        x_hat = z[:, :m] @ sae.W_dec[:m] + sae.b_dec
        return float(1 - (held - x_hat).pow(2).sum() / (held - held.mean(0)).pow(2).sum())

    plain, nested = fit(x, [SAEConfig("topk", d_sae=128, k=4, lr=1e-2),
                            SAEConfig("topk", d_sae=128, k=4, lr=1e-2, matryoshka_widths=[16])], tc)
    with torch.no_grad():
        assert fve(nested, 128) > 0.6 and fve(nested, 128) > fve(plain, 128) - 0.1  # full reconstruction kept
        assert fve(nested, 16) > 0.25 + fve(plain, 16)


def test_a_failing_evaluator_loses_no_trained_sae(planted, tmp_path):
    def broken(sae):
        raise RuntimeError("model checkpoint missing")

    with pytest.raises(RuntimeError, match="checkpoint missing"):
        train(planted.x[:1_000], [SAEConfig("topk", d_sae=32, k=2)], TrainerConfig(batch_size=250, progress=False),
              tmp_path, evaluators={"lm": broken})
    sae = SparseAutoencoder.load(tmp_path / "topk-32-k2", d_in=32)
    assert sae.d_sae == 32 and not (tmp_path / "topk-32-k2" / "eval.json").exists()
    paths = train(planted.x[:1_000], [SAEConfig("topk", d_sae=32, k=2)], TrainerConfig(batch_size=250, progress=False),
                  tmp_path / "ok", evaluators={"lm": lambda sae: {"loss_recovered": 0.5}})
    assert json.loads((paths[0] / "eval.json").read_text()) == {"lm": {"loss_recovered": 0.5}}
