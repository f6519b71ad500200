"""The ESM-2 adapter on a tiny random ESM-2: hooks, coordinates, batching, windows, parts, validation."""

import numpy as np
import pytest
import torch

from sciinterp.adapter import Adapter, Spliceable
from sciinterp.harvest import harvest_to_store
from sciinterp.store import open_store
from sciinterp_adapters.protein.esm2 import ESM2Adapter, ESM2Options, plan_segments
from sciinterp_adapters.protein.esm2_load import random_esm2
from sciinterp_adapters.protein.fasta import FastaError

rng = np.random.default_rng(0)
AA = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
PROTEINS = {f"prot{i}": "".join(rng.choice(AA, n)) for i, n in enumerate([23, 5, 41, 17, 30, 12, 9, 37])}


@pytest.fixture(scope="module")
def net():
    model = random_esm2(3, 32, 4, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _adapter(net, **kw):
    return ESM2Adapter(module=net, model_id="tiny", **kw)


def _direct(net, seq):
    """fair-esm's own forward of one sequence: representations (B=1) without BOS/EOS."""
    a = net.alphabet
    toks = torch.tensor([[a.cls_idx, *(a.get_idx(c) for c in seq), a.eos_idx]])
    with torch.no_grad():
        out = net(toks, repr_layers=list(range(net.num_layers + 1)))
    return {k: v[0, 1:-1] for k, v in out["representations"].items()}


def _by_token(batches, hook):
    """(protein, position) -> activation row, asserting every token occurs once."""
    rows = {}
    for b in batches:
        for p, pos, x in zip(b.coords["protein"], b.coords["position"], b.acts[hook]):
            assert (p, pos) not in rows
            rows[(p, int(pos))] = x
    return rows


def test_fits_the_protocols_and_names_hooks(net):
    ad = _adapter(net)
    assert isinstance(ad, Adapter) and isinstance(ad, Spliceable)
    assert ad.hook_names() == ["embed", "attn1", "mlp1", "layer1", "attn2", "mlp2", "layer2",
                               "attn3", "mlp3", "layer3", "final"]
    prov = ad.provenance()
    assert prov["model_id"] == "tiny" and len(prov["model_checksum"]) == 16
    assert prov["long_policy"] == "window max_len=1022 window_overlap=255"
    with pytest.raises(KeyError, match="unknown hook 'layer4'"):
        ad.hook_point("layer4")
    hp = ad.hook_point("attn2")
    assert hp.module is net.layers[1].self_attn and hp.output_index == 0 and hp.channel_dim == -1


def test_hooks_equal_fair_esm_representations_and_sum_to_the_residual_stream(net):
    ad = _adapter(net)
    batches = list(ad.harvest(PROTEINS, ad.hook_names()))
    acts = {h: _by_token(batches, h) for h in ad.hook_names()}
    for pid, seq in PROTEINS.items():
        ref = _direct(net, seq)
        got = {h: torch.stack([acts[h][(pid, j)] for j in range(1, len(seq) + 1)]) for h in ad.hook_names()}
        for i in (1, 2):
            torch.testing.assert_close(got[f"layer{i}"], ref[i], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(got["final"], ref[3], atol=2e-5, rtol=1e-4)  # fair-esm's last repr is post-LN
        # token dropout scales the embedding by (1 - 0.15 * 0.8) when nothing is masked
        torch.testing.assert_close(0.88 * got["embed"], ref[0], atol=1e-5, rtol=1e-5)
        prev = 0.88 * got["embed"]
        for i in (1, 2, 3):  # pre-LN blocks: x_i = x_{i-1} + attn_i + mlp_i
            torch.testing.assert_close(prev + got[f"attn{i}"] + got[f"mlp{i}"], got[f"layer{i}"], atol=2e-5, rtol=1e-4)
            prev = got[f"layer{i}"]


def test_tokens_are_residues_only_with_coords_and_whole_proteins_per_batch(net):
    budget = 1024 + 2
    ad = _adapter(net, token_budget=budget)
    lengths = {k: len(v) for k, v in PROTEINS.items()}
    batches = list(ad.harvest(PROTEINS, ["layer2"]))
    assert sum(b.n_tokens for b in batches) == sum(lengths.values())  # no BOS/EOS/padding stored
    for b in batches:
        for pid in b.items:
            sel = b.coords["protein"] == pid
            np.testing.assert_array_equal(b.coords["position"][sel], np.arange(1, lengths[pid] + 1))
            assert "".join(b.coords["residue"][sel]) == PROTEINS[pid]
        assert set(b.coords["protein"]) == set(b.items)
    # the budget splits the input: 8 proteins, rows x width <= 1026 (longest first)
    small = _adapter(net, token_budget=50, max_len=40, long_policy="window", window_overlap=10)
    split = list(small.harvest(PROTEINS, ["layer2"]))
    assert len(split) > 1 and [b.items for b in split][0] == ["prot2"]


def test_padding_does_not_change_activations(net):
    alone = {pid: _by_token(_adapter(net).harvest({pid: s}, ["layer3"]), "layer3") for pid, s in PROTEINS.items()}
    together = _by_token(_adapter(net).harvest(PROTEINS, ["layer3"]), "layer3")
    for pid, rows in alone.items():
        for key, x in rows.items():
            torch.testing.assert_close(together[key], x, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("n,max_len,overlap", [(37, 10, 4), (100, 30, 0), (31, 10, 9), (11, 10, 3), (1022, 1022, 256)])
def test_window_plan_stores_each_residue_once_from_its_most_central_window(n, max_len, overlap):
    segs = plan_segments(n, max_len, "window", overlap)
    kept = np.concatenate([np.arange(s.keep_start, s.keep_stop) for s in segs])
    np.testing.assert_array_equal(kept, np.arange(n))  # exactly once, in order
    starts = [s.start for s in segs]
    assert all(s.stop - s.start == min(n, max_len) for s in segs) and segs[-1].stop == n
    for s in segs:
        for j in range(s.keep_start, s.keep_stop):
            mine = min(j - s.start, s.stop - 1 - j)
            others = [min(j - t, t + max_len - 1 - j) for t in starts if t <= j < t + max_len]
            assert mine == max(others)


def test_long_proteins_windowed_crop_or_error(net, tmp_path):
    seq = PROTEINS["prot2"]  # 41 residues
    ad = _adapter(net, max_len=10, window_overlap=4)
    rows = _by_token(ad.harvest({"long": seq}, ["layer1"]), "layer1")
    assert sorted(p for _, p in rows) == list(range(1, 42))
    for s in plan_segments(41, 10, "window", 4):  # each stored value is its window's own forward
        win = _direct(net, seq[s.start:s.stop])[1]
        for j in range(s.keep_start, s.keep_stop):
            torch.testing.assert_close(rows[("long", j + 1)], win[j - s.start], atol=2e-5, rtol=1e-4)
    # a budget of one row per forward pass (5 windows) gives the same values
    chunked = _by_token(_adapter(net, max_len=10, window_overlap=4, token_budget=12).harvest({"long": seq}, ["layer1"]), "layer1")
    assert chunked.keys() == rows.keys()
    for k in rows:
        torch.testing.assert_close(chunked[k], rows[k], atol=2e-5, rtol=1e-4)
    crop = _by_token(_adapter(net, max_len=10, long_policy="crop").harvest({"long": seq}, ["layer1"]), "layer1")
    assert sorted(p for _, p in crop) == list(range(1, 11))
    # "error" refuses before anything is written: the existing store is untouched
    store = harvest_to_store(_adapter(net), {"a": "MKV"}, ["layer1"], tmp_path / "s.zarr", progress=False)
    strict = _adapter(net, max_len=10, long_policy="error")
    with pytest.raises(ValueError, match="protein 'long' has 41 residues, more than max_len=10"):
        harvest_to_store(strict, {"b": "MKVL", "long": seq}, ["layer1"], store, progress=False)
    ds = open_store(store)
    assert ds.sizes["token"] == 3 and list(ds.protein.values) == ["a"] * 3


def test_invalid_fasta_fails_before_anything_is_written(net, tmp_path):
    fasta = tmp_path / "x.fasta"
    fasta.write_text(">a\nMKV\n")
    store = harvest_to_store(_adapter(net), fasta, ["layer1"], tmp_path / "s.zarr", progress=False)
    fasta.write_text(">b\nMKVLL\n" * 1 + ">c\nMK9\n")
    with pytest.raises(FastaError, match="record 'c' \\(line 3\\): character '9' at residue position 3"):
        harvest_to_store(_adapter(net), fasta, ["layer1"], store, progress=False)
    assert open_store(store).sizes["token"] == 3


def test_two_parts_store_every_protein_exactly_once(net, tmp_path):
    fasta = tmp_path / "p.fasta.gz"
    import gzip

    with gzip.open(fasta, "wt") as f:
        f.write("".join(f">{k} desc\n{v}\n" for k, v in PROTEINS.items()))
    for rank in (0, 1):
        harvest_to_store(_adapter(net), fasta, ["layer2"], tmp_path / "parts", part=(rank, 2), progress=False)
    ds = open_store(tmp_path / "parts")
    ids, counts = np.unique(ds.protein.values, return_counts=True)
    assert dict(zip(ids, counts)) == {k: len(v) for k, v in PROTEINS.items()}
    pairs = set(zip(ds.protein.values, ds.position.values.tolist()))
    assert len(pairs) == ds.sizes["token"]  # no (protein, position) twice


def test_hook_point_splices_into_the_forward(net):
    ad = _adapter(net)
    toks = ad.encode(["MKTAYIAKQR", "MKV"])
    base = ad.forward_logits(toks)
    assert base.shape == (2, 12, 33)
    hp = ad.hook_point("mlp2")
    handle = hp.module.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    try:
        ablated = ad.forward_logits(toks)
    finally:
        handle.remove()
    assert (ablated - base).abs().max() > 1e-3
    torch.testing.assert_close(ad.forward_logits(toks), base)


def test_options_are_validated():
    with pytest.raises(ValueError, match="max_len=2000: ESM-2 takes 1..1022"):
        ESM2Options(max_len=2000)
    with pytest.raises(ValueError, match="long_policy='slide'"):
        ESM2Options(long_policy="slide")
    with pytest.raises(ValueError, match="window_overlap=10 must be in \\[0, max_len=10\\)"):
        ESM2Options(max_len=10, window_overlap=10)
    with pytest.raises(ValueError, match="token_budget=100 must hold one full row"):
        ESM2Options(token_budget=100)


def test_bf16_autocast_path_returns_float32_close_to_full_precision(net):
    ref = _by_token(_adapter(net).harvest(PROTEINS, ["layer3"]), "layer3")
    bf = _by_token(_adapter(net, precision="bfloat16").harvest(PROTEINS, ["layer3"]), "layer3")
    x = torch.stack([bf[k] for k in ref])
    y = torch.stack(list(ref.values()))
    assert x.dtype == torch.float32
    assert 0 < (x - y).abs().max() < 0.1 * y.abs().max()  # bf16 (8-bit mantissa) differs, but slightly
