"""ESM-2 interventions on a tiny random ESM-2: masked-LM faithfulness with exact SAEs, local edits, bad requests."""

import numpy as np
import pytest
import torch

from sciinterp.sae import SAEConfig, SparseAutoencoder
from sciinterp.splice import FeatureEdit
from sciinterp_adapters.protein.esm2 import ESM2Adapter
from sciinterp_adapters.protein.esm2_load import random_esm2
from sciinterp_adapters.protein.interventions import (
    ProteinLossRecovered, edit_residues, hook_mean, mask_tokens, masked_lm_faithfulness,
)

PROTEINS = {"a": "MKVLAAGIVGLLLAQSTR", "b": "ACDEFGHIKLMNPQRSTVWY", "c": "MSTNPKPQRKTKRNTNRRPQDVKFPGG"}
D = 32


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def adapter():
    return ESM2Adapter(module=random_esm2(2, D, 4, seed=1), model_id="tiny")


def linear_sae(mean: torch.Tensor, basis: torch.Tensor, decode: bool = True) -> SparseAutoencoder:
    """A real ReLU SparseAutoencoder computing x̂ = mean + P Pᵀ (x − mean) (P: (d, k) orthonormal).

    Features 2i / 2i+1 are the positive / negative parts of the i-th coordinate.  With
    ``decode=False`` the decoder is zero, so x̂ = mean exactly (= mean-ablation).
    """
    d, k = basis.shape
    sae = SparseAutoencoder(SAEConfig(architecture="relu", d_sae=2 * k, k=0), d)
    enc = torch.stack([basis, -basis], dim=2).reshape(d, 2 * k)  # columns P0, -P0, P1, -P1 ...
    with torch.no_grad():
        sae.W_enc.copy_(enc)
        sae.W_dec.copy_(enc.t() if decode else torch.zeros_like(enc.t()))
        sae.b_enc.zero_()
        sae.b_dec.copy_(mean)
    return sae


def test_perfect_sae_recovers_all_loss_with_zero_kl(adapter):
    mean = hook_mean(adapter, "layer1", adapter.encode(list(PROTEINS.values())))
    f = masked_lm_faithfulness(adapter, PROTEINS, "layer1", linear_sae(mean, torch.eye(D)))
    assert f.n_masked == sum(max(1, round(0.15 * len(s))) for s in PROTEINS.values())
    assert f.ce_sae == pytest.approx(f.ce_clean, abs=1e-4) and f.ce_sae_error == pytest.approx(f.ce_clean, abs=1e-4)
    assert f.kl_sae == pytest.approx(0.0, abs=1e-5) and f.kl_zero > 0.1 and f.kl_mean > 0.1
    assert f.recovered_zero == pytest.approx(1.0, abs=1e-4) and f.recovered_mean == pytest.approx(1.0, abs=1e-4)
    assert f.fve == pytest.approx(1.0, abs=1e-5)


def test_sae_that_outputs_the_mean_equals_mean_ablation(adapter):
    mean = hook_mean(adapter, "layer2", adapter.encode(list(PROTEINS.values())))
    f = masked_lm_faithfulness(adapter, PROTEINS, "layer2", linear_sae(mean, torch.eye(D), decode=False), mean=mean)
    assert f.ce_sae == pytest.approx(f.ce_mean, abs=1e-4) and f.kl_sae == pytest.approx(f.kl_mean, abs=1e-5)
    assert f.recovered_mean == pytest.approx(0.0, abs=1e-4)
    assert f.ce_sae_error == pytest.approx(f.ce_clean, abs=1e-4)  # error term added back: the model itself
    # half the directions: in between, and the KL is the SAE's, not zero
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g))
    half = masked_lm_faithfulness(adapter, PROTEINS, "layer2", linear_sae(mean, q[:, :16]), mean=mean)
    assert 0.05 < half.fve < 0.95 and half.kl_sae > 1e-3


def test_masking_is_seeded_and_per_position_masks_every_residue(adapter):
    seqs = list(PROTEINS.values())
    t1, m1, y1 = mask_tokens(adapter, seqs, seed=3)
    t2, m2, _ = mask_tokens(adapter, seqs, seed=3)
    assert torch.equal(t1, t2) and torch.equal(m1, m2)
    assert (t1[m1] == adapter.alphabet.mask_idx).all() and not m1[:, 0].any()  # never BOS
    tp, mp, yp = mask_tokens(adapter, seqs, per_position=True)
    assert tp.shape[0] == sum(map(len, seqs)) and (mp.sum(1) == 1).all()
    assert sorted(int(c) for c in mp[: len(seqs[0])].nonzero()[:, 1]) == list(range(1, len(seqs[0]) + 1))
    f = masked_lm_faithfulness(adapter, {"b": seqs[1]}, "layer1", linear_sae(torch.zeros(D), torch.eye(D)), per_position=True)
    assert f.n_masked == len(seqs[1])


def test_edit_at_the_last_layer_changes_logits_only_in_the_range(adapter):
    seq = PROTEINS["a"]
    mean = torch.zeros(D)
    r = edit_residues(adapter, seq, "final", linear_sae(mean, torch.eye(D)), [FeatureEdit([0, 2, 4], "clamp", 3.0)],
                      residues=(4, 7))
    inside = r["edited"].values
    assert inside.sum() == 4 and list(r["position"].values[inside]) == [4, 5, 6, 7]
    assert float(abs(r["dlogit"]).where(~r["edited"]).max()) == 0.0
    assert float(abs(r["dlogit"]).where(r["edited"]).min("amino_acid").max()) > 0
    assert r.attrs["edited_tokens"] == 4
    assert float(r["prob_clean"].sum("amino_acid").max()) <= 1.0 + 1e-5  # 20 of the 33 tokens
    np.testing.assert_allclose(r["dprob"], r["prob_edited"] - r["prob_clean"], atol=1e-6)
    assert r["kl"].where(~r["edited"]).max() == pytest.approx(0.0, abs=1e-6) and float(r["kl"].sel(position=5)) > 0


@pytest.mark.parametrize("hook", ["embed", "layer1"])
def test_edit_inside_the_model_is_largest_in_the_range(adapter, hook):
    r = edit_residues(adapter, PROTEINS["c"], hook, linear_sae(torch.zeros(D), torch.eye(D)),
                      [FeatureEdit(list(range(0, 2 * D, 2)), "scale", 4.0)], residues=(10, 12))
    change = abs(r["dlogit"]).max("amino_acid")
    assert int(change.idxmax()) in (10, 11, 12)
    assert float(change.where(r["edited"]).mean()) > 2 * float(change.where(~r["edited"]).mean())
    assert r["activation"].shape == (len(PROTEINS["c"]), D)


def test_downstream_eval_for_the_trainer(adapter):
    ev = ProteinLossRecovered(adapter, "layer1", PROTEINS)
    out = ev(linear_sae(torch.zeros(D), torch.eye(D)))
    assert out["recovered_zero"] == pytest.approx(1.0, abs=1e-4) and out["kl_sae"] == pytest.approx(0, abs=1e-5)
    with pytest.raises(KeyError, match="unknown hook 'layer7'"):
        ProteinLossRecovered(adapter, "layer7", PROTEINS)


def test_bad_requests_name_the_value(adapter):
    sae = linear_sae(torch.zeros(D), torch.eye(D))
    seq = PROTEINS["a"]
    with pytest.raises(ValueError, match=r"residue range 15-19 is outside protein 'x' \(length 18: positions 1..18\)"):
        edit_residues(adapter, seq, "layer1", sae, [FeatureEdit([0])], residues=(15, 19), protein="x")
    with pytest.raises(ValueError, match="residue range 0-3 is outside"):
        edit_residues(adapter, seq, "layer1", sae, [FeatureEdit([0])], residues=(0, 3))
    with pytest.raises(ValueError, match="unknown feature index 64: this SAE has 64 features"):
        edit_residues(adapter, seq, "layer1", sae, [FeatureEdit([64])])
    with pytest.raises(KeyError, match="unknown hook 'mlp9'"):
        edit_residues(adapter, seq, "mlp9", sae, [FeatureEdit([0])])
    with pytest.raises(ValueError, match="1100 residues; interventions take at most 1022"):
        masked_lm_faithfulness(adapter, {"long": "A" * 1100}, "layer1", sae)
