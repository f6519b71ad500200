from types import SimpleNamespace

import pytest
import torch


from sciinterp.generic import ModuleAdapter
from sciinterp.sae import SAEConfig, SparseAutoencoder, d_in_of, d_sae_of
from sciinterp.splice import FeatureEdit, loss_recovered, splice


class PerfectSAE:
    """relu([x, -x]) decoded by [I; -I]: reconstructs any x exactly; feature i = max(x_i, 0)."""

    def __init__(self, d: int):
        self.d_in, self.d_sae = d, 2 * d
        eye = torch.eye(d)
        self.W_dec = torch.cat([eye, -eye])
        self.b_dec = torch.zeros(d)

    def encode_dense(self, x):
        return torch.relu(torch.cat([x, -x], dim=-1))


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 1), torch.nn.Conv2d(4, 3, 1))


def test_perfect_sae_splice_leaves_output_unchanged_and_counts_tokens():
    model = _model()
    point = ModuleAdapter(model, {"h": "0"}, channel_dim=1).hook_point("h")
    x = torch.randn(2, 2, 3, 5)
    clean = model(x)
    with splice(point, PerfectSAE(4)) as stats:
        out = model(x)
    torch.testing.assert_close(out, clean)
    assert stats.calls == 1 and stats.tokens == 2 * 3 * 5
    assert stats.fve == pytest.approx(1.0)
    torch.testing.assert_close(model(x), clean)  # hook removed on exit


def test_edits_only_at_selected_tokens():
    model = _model()
    point = ModuleAdapter(model, {"h": "0"}, channel_dim=1).hook_point("h")
    x = torch.randn(1, 2, 3, 5)
    h = model[0](x)
    box = torch.zeros(1, 3, 5, dtype=torch.bool)
    box[0, 1, 2:4] = True  # a "lat/lon box": row 1, columns 2-3
    with splice(point, PerfectSAE(4), replace=None, edits=[FeatureEdit([0], "clamp", 5.0)], tokens=box) as st:
        out = model(x)
    expect_h = h.clone()
    expect_h[0, 0, 1, 2:4] = 5.0 - torch.relu(-h[0, 0, 1, 2:4])  # x0 = relu(x0) - relu(-x0), relu(x0) clamped
    torch.testing.assert_close(out, model[1](expect_h))
    assert st.edited_tokens == 2


def test_scale_and_ablation_baselines():
    model = _model()
    point = ModuleAdapter(model, {"h": "0"}, channel_dim=1).hook_point("h")
    x = torch.randn(1, 2, 2, 2)
    h = model[0](x)
    with splice(point, PerfectSAE(4), edits=[FeatureEdit([1], "scale", 3.0)]):
        out = model(x)
    expect = h.clone()
    expect[:, 1] = 3 * torch.relu(h[:, 1]) - torch.relu(-h[:, 1])
    torch.testing.assert_close(out, model[1](expect))
    with splice(point, replace="zero"):
        torch.testing.assert_close(model(x), model[1](torch.zeros_like(h)))
    mean = torch.arange(4.0)
    with splice(point, replace="mean", mean=mean):
        torch.testing.assert_close(model(x), model[1](mean.view(1, 4, 1, 1).expand_as(h)))


def test_bad_requests_are_named():
    point = ModuleAdapter(_model(), {"h": "0"}, channel_dim=1).hook_point("h")
    with pytest.raises(ValueError, match="unknown feature index 8: this SAE has 8 features"):
        with splice(point, PerfectSAE(4), edits=[FeatureEdit([8])]):
            pass
    with pytest.raises(ValueError, match="has 4 channels but the SAE expects d_in=3"):
        with splice(point, PerfectSAE(3)):
            point.module(torch.randn(1, 2, 1, 1))
    with pytest.raises(ValueError, match="needs the mean activation"):
        with splice(point, replace="mean"):
            pass
    with pytest.raises(ValueError, match="op='drop'"):
        FeatureEdit([1], "drop")


def test_loss_recovered():
    assert loss_recovered(clean=2.0, spliced=2.5, ablated=4.0) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="ablation does not change the loss"):
        loss_recovered(1.0, 1.0, 1.0)


def test_steps_rewrite_only_the_chosen_forward_calls():
    model = _model()
    point = ModuleAdapter(model, {"h": "0"}, channel_dim=1).hook_point("h")
    x = torch.randn(1, 2, 2, 2)
    clean = model(x)
    with splice(point, replace="zero", steps={1}) as st:
        outs = [model(x) for _ in range(3)]
    torch.testing.assert_close(outs[0], clean)
    torch.testing.assert_close(outs[1], model[1](torch.zeros(1, 4, 2, 2)))
    torch.testing.assert_close(outs[2], clean)
    assert st.calls == 3 and st.edited_tokens == 4  # one rewritten call of 2x2 tokens
    with pytest.raises(ValueError, match=r"steps=\[-1\]: forward-call indices count from 0"):
        with splice(point, replace="zero", steps=[-1]):
            pass


def test_shared_width_helper_reads_attributes_or_cfg_and_names_what_is_missing():
    assert (d_in_of(PerfectSAE(3)), d_sae_of(PerfectSAE(3))) == (3, 6)  # duck-typed: .d_in / .d_sae
    saelens_like = SimpleNamespace(cfg=SimpleNamespace(d_in=5, d_sae=40))  # SAELens: widths on .cfg only
    assert (d_in_of(saelens_like), d_sae_of(saelens_like)) == (5, 40)
    ours = SparseAutoencoder(SAEConfig(architecture="topk", d_sae=24, k=2), 6)
    assert (d_in_of(ours), d_sae_of(ours)) == (6, 24)
    with pytest.raises(TypeError, match=r"^SimpleNamespace has no dictionary size: an SAE needs .d_sae or .cfg.d_sae$"):
        d_sae_of(SimpleNamespace(cfg=SimpleNamespace(d_in=5)))
    with pytest.raises(TypeError, match=r"^object has no input width: an SAE needs .d_in or .cfg.d_in$"):
        d_in_of(object())


def test_splice_takes_an_sae_whose_widths_live_on_cfg():
    model = _model()
    point = ModuleAdapter(model, {"h": "0"}, channel_dim=1).hook_point("h")
    inner = PerfectSAE(4)
    cfg_only = SimpleNamespace(cfg=SimpleNamespace(d_in=4, d_sae=8), encode_dense=inner.encode_dense,
                               W_dec=inner.W_dec, b_dec=inner.b_dec)
    x = torch.randn(1, 2, 2, 2)
    with splice(point, cfg_only):
        torch.testing.assert_close(model(x), model[1](model[0](x)))
    with pytest.raises(ValueError, match="unknown feature index 8: this SAE has 8 features"):
        with splice(point, cfg_only, edits=[FeatureEdit([8])]):
            pass
    with pytest.raises(TypeError, match="SimpleNamespace has no input width: an SAE needs .d_in or .cfg.d_in"):
        with splice(point, SimpleNamespace(encode_dense=inner.encode_dense)):
            pass
