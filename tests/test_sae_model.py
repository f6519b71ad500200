"""SparseAutoencoder: fast kernels vs dense reference, encode/decode, folding, save/load, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sciinterp.sae import SAEConfig, SparseAutoencoder, SparseCodes, TrainerConfig
from sciinterp.sae.kernels import sparse_decode, topk_encode


def _sae(arch: str, d_in: int = 16, d_sae: int = 64, k: int = 4, **kw) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(arch, d_sae=d_sae, k=k, **kw), d_in, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(d_in, generator=g))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
    return sae


@pytest.mark.parametrize("arch,widths", [("topk", None), ("batchtopk", None), ("topk", [8, 24]), ("batchtopk", [16])])
def test_fast_path_gradients_equal_dense_reference(arch, widths, monkeypatch):
    x = torch.randn(50, 16, generator=torch.Generator().manual_seed(2))
    grads, losses = [], []
    for fast in ("0", "1"):
        monkeypatch.setenv("SCIINTERP_NO_FAST_KERNELS", "1" if fast == "0" else "0")
        sae = _sae(arch, matryoshka_widths=widths)
        out = sae.loss_terms(x, var=1.0)
        (out.loss - sae.cfg.auxk_alpha * out.aux_loss if widths else out.fvu).backward()
        losses.append(float(out.fvu.detach()))
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n,k", [(5120, 32), (4096, 64), (48, 5), (100, 7), (30, 8), (6144, 1)])
def test_grouped_row_topk_is_exact(n, k):
    """The CPU grouped top-k keeps exactly the k largest values per row (ties: equal values)."""
    from sciinterp.sae.kernels import _group_size, _row_topk

    g = torch.Generator().manual_seed(n + k)
    pre = torch.randn(64, n, generator=g)
    pre[:8] = pre[:8].round()  # many ties
    pre[8:16, : n // 2] = -5.0  # the winners all in one half
    vals, idx = torch.empty(64, k), torch.empty(64, k, dtype=torch.long)
    _row_topk(pre, k, vals, idx)
    ref = pre.topk(k, dim=1).values
    torch.testing.assert_close(vals.sort(1, descending=True).values, ref, rtol=0, atol=0)
    torch.testing.assert_close(pre.gather(1, idx), vals, rtol=0, atol=0)
    assert all(len(set(r)) == k for r in idx.tolist())  # no latent twice in a row
    if (n, k) == (5120, 32):
        assert _group_size(n, k) == 16  # the benchmark shape takes the grouped path


def test_kernels_match_autograd_of_dense_formula():
    """topk_encode + sparse_decode (incl. the AuxK selection over dead latents) vs plain autograd."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 12, generator=g, dtype=torch.float64)
    W, b, bd = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((12, 48), (48,), (12,)))
    Wd = torch.randn(48, 12, generator=g, dtype=torch.float64)
    dead = torch.tensor([3, 8, 21, 30, 47])
    leaves = [t.clone().requires_grad_() for t in (W, b, bd, Wd)]
    enc = topk_encode(x, *leaves[:3], 5, dead=dead, k_aux=2)
    y = sparse_decode(enc.values, enc.indices, leaves[3]) + sparse_decode(enc.aux_values, enc.aux_indices, leaves[3])
    (y.sin().sum()).backward()
    ref = [t.clone().requires_grad_() for t in (W, b, bd, Wd)]
    pre = (x - ref[2]) @ ref[0] + ref[1]
    mask = torch.zeros_like(pre).scatter(1, enc.indices, 1.0)
    mask_aux = torch.zeros_like(pre).scatter(1, enc.aux_indices, 1.0)
    y_ref = (pre.relu() * mask) @ ref[3] + (pre.relu() * mask_aux) @ ref[3]
    (y_ref.sin().sum()).backward()
    torch.testing.assert_close(y, y_ref)
    assert set(enc.aux_indices.unique().tolist()) <= set(dead.tolist())
    for a, r in zip(leaves, ref):
        torch.testing.assert_close(a.grad, r.grad)


def test_encode_topk_and_padding_for_relu():
    x = torch.randn(30, 16, generator=torch.Generator().manual_seed(4))
    codes = _sae("topk").encode(x)
    assert isinstance(codes, SparseCodes) and codes.values.shape == (30, 4) and codes.indices.shape == (30, 4)
    relu = _sae("relu")
    dense = relu.encode_dense(x)
    codes = relu.encode(x)
    assert codes.values.shape[1] == int((dense > 0).sum(1).max())
    assert ((codes.indices == -1) == (codes.values == 0)).all()
    torch.testing.assert_close(relu.decode(codes), dense @ relu.W_dec + relu.b_dec, rtol=1e-4, atol=1e-4)
    capped = relu.encode(x, max_active=3)
    assert capped.values.shape == (30, 3)
    torch.testing.assert_close(capped.values, dense.topk(3, dim=1).values)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
def test_folded_normalisation_gives_same_codes_on_raw_inputs(arch):
    sae = _sae(arch)
    x = 3.0 + 5.0 * torch.randn(20, 16, generator=torch.Generator().manual_seed(5))
    mean, scale = x.mean(0), x.std(0)
    folded = sae.folded(mean, scale)
    xn = (x - mean) / scale
    torch.testing.assert_close(folded.encode_dense(x), sae.encode_dense(xn), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(folded.decode(folded.encode(x)), sae.decode(sae.encode(xn)) * scale + mean,
                               rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
def test_save_load_round_trip(arch, tmp_path):
    sae = _sae(arch)
    if arch == "batchtopk":
        sae.batch_threshold.fill_(0.25)
    sae.provenance = {"model_id": "esm2_t6", "model_checksum": "abc123", "hook_name": "layer3", "store_hash": "s1"}
    sae.save(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["sciinterp_architecture"] == arch and cfg["d_in"] == 16 and cfg["d_sae"] == 64 and cfg["format_version"] == 1
    assert cfg["hook_name"] == "layer3" and cfg["model_name"] == "esm2_t6" and cfg["apply_b_dec_to_input"] is True
    assert cfg["provenance"]["store_hash"] == "s1" and cfg["normalize_activations"] == "none"
    from safetensors.torch import load_file

    w = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))
    assert w["W_enc"].shape == (16, 64) and w["W_dec"].shape == (64, 16)
    assert ("threshold" in w) == (arch in ("jumprelu", "batchtopk"))
    back = SparseAutoencoder.load(tmp_path / "sae", d_in=16, hook="layer3", model_checksum="abc123")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name))
    x = torch.randn(10, 16)
    torch.testing.assert_close(back.encode_dense(x), sae.encode_dense(x))


def test_load_refuses_wrong_width_hook_and_model(tmp_path):
    sae = _sae("topk")
    sae.provenance = {"model_checksum": "abc123", "hook_name": "layer3"}
    sae.save(tmp_path / "sae")
    with pytest.raises(ValueError, match=r"has d_in=16 but the activations have width 32"):
        SparseAutoencoder.load(tmp_path / "sae", d_in=32)
    with pytest.raises(ValueError, match=r"trained on hook 'layer3', not 'layer5'"):
        SparseAutoencoder.load(tmp_path / "sae", hook="layer5")
    with pytest.raises(ValueError, match=r"model checksum 'abc123', not 'zzz'"):
        SparseAutoencoder.load(tmp_path / "sae", model_checksum="zzz")
    with pytest.raises(FileNotFoundError, match="is not an SAE directory"):
        SparseAutoencoder.load(tmp_path)


def test_matryoshka_loss_is_the_mean_prefix_fvu():
    sae = _sae("topk", matryoshka_widths=[16, 40])
    assert sae.cfg.matryoshka_widths == [16, 40, 64] and sae.cfg.run_name == "topk-64-k4-matryoshka"
    x = torch.randn(30, 16, generator=torch.Generator().manual_seed(5))
    out = sae.loss_terms(x, var=2.0)
    z = sae.encode_dense(x)
    prefix = [((x - (z[:, :m] @ sae.W_dec[:m] + sae.b_dec)).pow(2).sum() / (30 * 2.0)) for m in (16, 40, 64)]
    torch.testing.assert_close(out.fvu, prefix[-1])
    torch.testing.assert_close(out.loss - sae.cfg.auxk_alpha * out.aux_loss, torch.stack(prefix).mean())
    with pytest.raises(ValueError, match=r"matryoshka_widths=\[40, 16\]: must increase"):
        SAEConfig("topk", d_sae=64, matryoshka_widths=[40, 16])
    with pytest.raises(ValueError, match="only for topk and batchtopk, not 'relu'"):
        SAEConfig("relu", d_sae=64, matryoshka_widths=[16])


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match=r"SAEConfig.architecture='gated'"):
        SAEConfig("gated")
    with pytest.raises(ValueError, match=r"SAEConfig.k=100: must be in \[1, d_sae=64\]"):
        SAEConfig("topk", d_sae=64, k=100)
    with pytest.raises(ValueError, match=r"TrainerConfig.batch_size=0"):
        TrainerConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"TrainerConfig.trackers has unknown \['mlflow'\]"):
        TrainerConfig(trackers=["mlflow"])
    assert SAEConfig(d_sae=16384).learning_rate == pytest.approx(2.8e-3)
    assert np.isclose(SAEConfig(d_sae=4096).learning_rate, 5.6e-3)
