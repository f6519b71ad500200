"""Loading ESM-2 weights: released fair-esm layout, HF layout, caches by name, safety."""

import argparse
import json
import logging

import pytest
import torch

from sciinterp_adapters.protein.esm2 import ESM2Adapter
from sciinterp_adapters.protein.esm2_load import (
    convert_fair_esm_to_hf,
    load_esm2,
    random_esm2,
    resolve_checkpoint,
    save_fair_esm,
)

SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTK", "MKV"]


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory):
    """A random 2-layer ESM-2 written exactly as the released .pt files are."""
    d = tmp_path_factory.mktemp("ckpt")
    model = random_esm2(2, 32, 4, seed=3)
    # perturb the zero-initialised biases / unit LayerNorms so every tensor matters
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return save_fair_esm(model, d / "esm2_t2_tiny_UR50D.pt"), model


def _reps(model, toks):
    return model(toks, repr_layers=list(range(model.num_layers + 1)))


def test_released_layout_is_what_fair_esm_itself_loads(tiny_pt):
    import esm

    path, model = tiny_pt
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(path, weights_only=True)
    assert isinstance(data["cfg"]["model"], argparse.Namespace)
    assert "encoder.sentence_encoder.layers.0.self_attn.q_proj.weight" in data["model"]
    assert "encoder.lm_head.dense.weight" in data["model"]
    # fair-esm's own loader (no network: we hand it the loaded dict) accepts the file unchanged
    with pytest.warns(UserWarning, match="Regression weights not found"):
        ref, _ = esm.pretrained.load_model_and_alphabet_core("esm2_t2_tiny_UR50D", data)
    ours = load_esm2(path)
    assert ours.layout == "fair-esm" and ours.model_id == "esm2_t2_tiny_UR50D"
    toks = ESM2Adapter(module=model).encode(SEQS)
    a, b = _reps(ref.eval(), toks), _reps(ours.model, toks)
    assert torch.equal(a["logits"], b["logits"])


def test_fair_esm_and_hf_layouts_give_the_same_activations(tiny_pt, tmp_path):
    path, _ = tiny_pt
    hf_dir = convert_fair_esm_to_hf(path, tmp_path / "hf")
    assert json.loads((hf_dir / "config.json").read_text())["num_hidden_layers"] == 2
    assert (hf_dir / "model.safetensors").is_file()
    fe, hf = ESM2Adapter(checkpoint=path), ESM2Adapter(checkpoint=hf_dir)
    assert hf.loaded.layout == "hf"
    recs = {f"p{i}": s for i, s in enumerate(SEQS)}
    hooks = fe.hook_names()
    A = list(fe.harvest(recs, hooks))
    B = list(hf.harvest(recs, hooks))
    for x, y in zip(A, B):
        assert x.items == y.items
        for h in hooks:
            assert (x.acts[h] - y.acts[h]).abs().max().item() < 1e-5, h
    # same weights -> same checksum recorded in the store, whichever layout they came from
    assert fe.provenance()["model_checksum"] == hf.provenance()["model_checksum"]


def test_hf_directory_matches_transformers_own_esm(tiny_pt, tmp_path, monkeypatch):
    """The converter's output is a real HF directory: transformers' EsmForMaskedLM agrees with fair-esm."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, _ = tiny_pt
    hf_dir = convert_fair_esm_to_hf(path, tmp_path / "hf")
    hf = transformers.EsmForMaskedLM.from_pretrained(hf_dir, local_files_only=True).eval()
    ad = ESM2Adapter(checkpoint=path)
    toks = ad.encode(SEQS)
    seen, mine = {}, {}
    for i, layer in enumerate(hf.esm.encoder.layer):
        layer.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, o[0] if isinstance(o, tuple) else o))
    for i, layer in enumerate(ad.model.layers):  # fair-esm blocks return ((T, B, E), attn)
        layer.register_forward_hook(lambda m, a, o, i=i: mine.__setitem__(i, o[0].transpose(0, 1)))
    with torch.no_grad():
        out = hf(input_ids=toks, attention_mask=(toks != 1).long())
        ref = ad.model(toks)
    real = (toks != 1)[..., None]  # compare non-padding positions
    for i in range(2):
        diff = ((seen[i] - mine[i]) * real).abs().max().item()
        assert diff < 1e-5, (i, diff)
    assert ((out.logits - ref["logits"]) * real).abs().max().item() < 1e-4


def test_hf_pytorch_model_bin_and_fp16_weights_load_as_float32(tiny_pt, tmp_path):
    from safetensors.torch import load_file

    path, model = tiny_pt
    hf_dir = convert_fair_esm_to_hf(path, tmp_path / "hf")
    sd = {k: v.half() for k, v in load_file(hf_dir / "model.safetensors").items()}
    (hf_dir / "model.safetensors").unlink()
    torch.save(sd, hf_dir / "pytorch_model.bin")
    loaded = load_esm2(hf_dir).model
    assert loaded.embed_tokens.weight.dtype == torch.float32
    ref = model.embed_tokens.weight.half().float()
    assert torch.equal(loaded.embed_tokens.weight, ref)


def test_unsafe_pickle_is_refused_unless_trusted(tmp_path, tiny_pt):
    path, _ = tiny_pt
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(path, weights_only=True)
    data["cfg"]["odd"] = logging.getLogger  # a global not on the allow-list
    bad = tmp_path / "esm2_t2_bad.pt"
    torch.save(data, bad)
    with pytest.raises(ValueError, match="(?s)cannot be loaded safely.*logging.getLogger.*trust_checkpoint=True"):
        load_esm2(bad)
    assert load_esm2(bad, trust_checkpoint=True).model.num_layers == 2


def test_contact_regression_file_is_optional_and_used_when_present(tiny_pt, tmp_path):
    path, model = tiny_pt
    local = tmp_path / "esm2_t2_tiny_UR50D.pt"
    local.write_bytes(path.read_bytes())
    w = torch.full((1, 8), 0.25)
    torch.save({"model": {"contact_head.regression.weight": w, "contact_head.regression.bias": torch.ones(1)}},
               tmp_path / "esm2_t2_tiny_UR50D-contact-regression.pt")
    assert torch.equal(load_esm2(local).model.contact_head.regression.weight, w)


def test_wrong_files_give_clear_errors(tmp_path):
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a fair-esm ESM-2 checkpoint"):
        load_esm2(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_esm2(tmp_path / "nope.pt")
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match="needs config.json"):
        load_esm2(tmp_path / "d")
    with pytest.raises(ValueError, match="exactly one"):
        load_esm2(tmp_path / "x.pt", model="demo")


def test_names_resolve_in_search_dirs_torch_hub_and_hf_caches(tiny_pt, tmp_path, monkeypatch, caplog):
    path, _ = tiny_pt
    name = "esm2_t6_8M_UR50D"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr("pathlib.Path.home", lambda: tmp_path / "home")
    with pytest.raises(FileNotFoundError, match="no local weights for 'esm2_t6_8M_UR50D'.*never downloaded"):
        resolve_checkpoint(name)
    with pytest.raises(ValueError, match="unknown ESM-2 model name 'esm2_t7'"):
        resolve_checkpoint("esm2_t7")
    # HF hub cache snapshot (refs/main picks the revision)
    snap = tmp_path / "hf_home" / "hub" / f"models--facebook--{name}" / "snapshots" / "abc123"
    convert_fair_esm_to_hf(path, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    assert resolve_checkpoint("esm2_t6_8M") == snap  # a unique prefix of the full name works
    with caplog.at_level(logging.WARNING):
        assert load_esm2(model=name).model_id == name
    # the tiny file under a real name is loaded but flagged
    assert "(layers, dim, heads)=(2, 32, 4), expected (6, 320, 20)" in caplog.text
    assert ESM2Adapter(model=name).provenance()["model_layout"] == "hf"
    # torch hub cache wins over the HF cache, a search dir over both
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / f"{name}.pt").write_bytes(path.read_bytes())
    assert resolve_checkpoint(name) == hub / f"{name}.pt"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / f"{name}.pt").write_bytes(path.read_bytes())
    assert resolve_checkpoint(name, [mine]) == mine / f"{name}.pt"
