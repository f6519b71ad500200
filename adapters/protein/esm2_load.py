"""Load ESM-2 weights of any size from local files only, into fair-esm's ``ESM2``.

Three sources, one result (a fair-esm :class:`esm.model.esm2.ESM2` in float32, eval mode):

* a fair-esm ``.pt`` checkpoint in the released layout: ``{"model": state dict with
  "encoder.sentence_encoder." / "encoder.lm_head." prefixes, "cfg": {"model": argparse.Namespace}}``,
  with an optional ``<stem>-contact-regression.pt`` beside it.  Loaded with
  ``torch.load(weights_only=True)``, ``argparse.Namespace`` being the one extra class allowed
  (``torch.serialization.safe_globals``); ``trust_checkpoint=True`` is the explicit opt-in to
  full unpickling for a file that needs more;
* a Hugging Face ``EsmModel`` / ``EsmForMaskedLM`` directory (``config.json`` + ``model.safetensors``,
  sharded safetensors, or ``pytorch_model.bin``); its tensors are renamed onto fair-esm's modules,
  so both layouts run the same code and give the same activations;
* a model name (``"esm2_t33_650M_UR50D"``) looked up in ``search_dirs``, torch hub's checkpoint
  cache (``$TORCH_HOME/hub/checkpoints``) and the Hugging Face hub cache
  (``$HF_HUB_CACHE`` / ``$HF_HOME/hub`` / ``~/.cache/huggingface/hub``, ``facebook/<name>``).

Nothing here touches the network: no hub download function is ever called.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from importlib.resources import files
from pathlib import Path
from typing import Any, NamedTuple

import torch

__all__ = [
    "ESM2_MODELS",
    "LoadedESM2",
    "convert_fair_esm_to_hf",
    "fair_esm_to_hf_key",
    "load_esm2",
    "random_esm2",
    "resolve_checkpoint",
    "save_fair_esm",
]

log = logging.getLogger(__name__)

ESM2_MODELS: dict[str, tuple[int, int, int]] = {
    "esm2_t6_8M_UR50D": (6, 320, 20),
    "esm2_t12_35M_UR50D": (12, 480, 20),
    "esm2_t30_150M_UR50D": (30, 640, 20),
    "esm2_t33_650M_UR50D": (33, 1280, 20),
    "esm2_t36_3B_UR50D": (36, 2560, 40),
    "esm2_t48_15B_UR50D": (48, 5120, 40),
}
"""Released ESM-2 models: name -> (layers, embedding dim, attention heads)."""

DEMO = "sciinterp_adapters.protein:data/esm2_demo.pt"
"""Package-relative name of the shipped demo checkpoint (``model="demo"``)."""

_REGRESSION = ("contact_head.regression.weight", "contact_head.regression.bias")


class LoadedESM2(NamedTuple):
    """A loaded model.

    Attributes
    ----------
    model
        fair-esm ``ESM2`` in eval mode, float32, on CPU.
    alphabet
        fair-esm ``Alphabet`` (``ESM-1b``: 33 tokens, BOS=0, pad=1, EOS=2, mask=32).
    model_id
        Name recorded in provenance (file stem or directory name).
    source
        The file or directory the weights came from.
    layout
        ``"fair-esm"`` or ``"hf"``.
    """

    model: torch.nn.Module
    alphabet: Any
    model_id: str
    source: Path
    layout: str


def package_path(name: str) -> Path:
    """``"package.module:relative/path"`` -> a filesystem path inside that installed package."""
    module, _, rel = name.partition(":")
    return Path(str(files(module).joinpath(rel)))


def _build(layers: int, dim: int, heads: int, token_dropout: bool) -> torch.nn.Module:
    import esm
    from esm.model.esm2 import ESM2

    return ESM2(
        num_layers=layers, embed_dim=dim, attention_heads=heads,
        alphabet=esm.data.Alphabet.from_architecture("ESM-1b"), token_dropout=token_dropout,
    )


def random_esm2(layers: int = 2, dim: int = 32, heads: int = 4, *, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised fair-esm ``ESM2`` (seeded), for tests and benchmarks."""
    torch.manual_seed(seed)
    return _build(layers, dim, heads, token_dropout=True).eval()


def _torch_load(path: Path, trust: bool) -> Any:
    if trust:
        log.warning("loading %s with weights_only=False (trust_checkpoint=True): it may run code", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError names the refused global
        raise ValueError(
            f"{path}: cannot be loaded safely (weights_only=True, argparse.Namespace allowed): {err}. "
            "If you trust this file, pass trust_checkpoint=True to allow full unpickling."
        ) from err


def _finish(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> torch.nn.Module:
    """Load ``state`` (fair-esm names) strictly, except the optional contact regression."""
    expected = set(model.state_dict())
    own = model.state_dict()
    for k in expected - set(state):
        if k.endswith("rot_emb.inv_freq"):  # deterministic buffer; HF files may omit it
            state[k] = own[k]
    missing = sorted(expected - set(state) - set(_REGRESSION))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source}: weights do not fit an ESM-2 of this shape: missing {missing[:6]}"
            f"{'...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{source}: tensor {k!r} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    if any(k not in state for k in _REGRESSION):
        # no contact regression: zero it (not random), so the checksum is a function of the file
        for k in _REGRESSION:
            state[k] = torch.zeros_like(own[k])
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.float().eval()


# ---------------------------------------------------------------- fair-esm .pt
def _load_fair_esm(path: Path, trust: bool) -> torch.nn.Module:
    data = _torch_load(path, trust)
    if not (isinstance(data, dict) and "model" in data and "cfg" in data and "model" in data["cfg"]):
        keys = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{path}: not a fair-esm ESM-2 checkpoint (expected keys 'model' and 'cfg' with cfg['model'], found {keys})"
        )
    cfg = data["cfg"]["model"]
    cfg = vars(cfg) if isinstance(cfg, argparse.Namespace) else dict(cfg)
    try:
        layers, dim, heads = cfg["encoder_layers"], cfg["encoder_embed_dim"], cfg["encoder_attention_heads"]
    except KeyError as err:
        raise ValueError(f"{path}: cfg['model'] lacks {err}; is this an ESM-2 checkpoint?") from err
    state = {re.sub(r"^(encoder\.sentence_encoder\.|encoder\.)", "", k): v for k, v in data["model"].items()}
    reg = path.with_name(path.stem + "-contact-regression.pt")
    if reg.is_file():
        state.update(_torch_load(reg, trust)["model"])
    model = _build(layers, dim, heads, bool(cfg.get("token_dropout", True)))
    return _finish(model, state, path)


def save_fair_esm(model: torch.nn.Module, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Write ``model`` (a fair-esm ``ESM2``) as a released-layout ``.pt`` checkpoint, atomically.

    The contact-regression weights go to ``<stem>-contact-regression.pt`` as in the releases
    (only if the model has them trained; fair-esm loads without them).  ``extra`` is stored
    under ``cfg['sciinterp']`` (plain JSON-able values only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        if k in _REGRESSION:
            continue
        prefix = "encoder." if k.startswith("lm_head.") else "encoder.sentence_encoder."
        state[prefix + k] = v.detach().cpu().clone()
    cfg = argparse.Namespace(
        _name="esm2", arch="esm2", encoder_layers=model.num_layers, encoder_embed_dim=model.embed_dim,
        encoder_ffn_embed_dim=4 * model.embed_dim, encoder_attention_heads=model.attention_heads,
        token_dropout=bool(model.token_dropout), max_positions=1024,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )
    data = {"model": state, "cfg": {"model": cfg, "sciinterp": dict(extra or {})}, "args": None}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- Hugging Face
def fair_esm_to_hf_key(key: str) -> str:
    """Name of a fair-esm ``ESM2`` tensor in an HF ``EsmForMaskedLM`` state dict."""
    m = re.match(r"layers\.(\d+)\.(.+)", key)
    if m:
        i, rest = m.groups()
        sub = {
            "self_attn.q_proj": "attention.self.query", "self_attn.k_proj": "attention.self.key",
            "self_attn.v_proj": "attention.self.value", "self_attn.out_proj": "attention.output.dense",
            "self_attn.rot_emb": "attention.self.rotary_embeddings",
            "self_attn_layer_norm": "attention.LayerNorm", "fc1": "intermediate.dense",
            "fc2": "output.dense", "final_layer_norm": "LayerNorm",
        }
        mod, _, leaf = rest.rpartition(".")
        return f"esm.encoder.layer.{i}.{sub[mod]}.{leaf}"
    fixed = {
        "embed_tokens.weight": "esm.embeddings.word_embeddings.weight",
        "lm_head.weight": "lm_head.decoder.weight",
        "lm_head.bias": "lm_head.bias",
    }
    if key in fixed:
        return fixed[key]
    if key.startswith("emb_layer_norm_after."):
        return "esm.encoder." + key
    if key.startswith("contact_head."):
        return "esm." + key
    return key  # lm_head.dense.*, lm_head.layer_norm.*


def _read_hf_tensors(d: Path) -> dict[str, torch.Tensor]:
    if (d / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(d / "model.safetensors")
    if (d / "model.safetensors.index.json").is_file():
        from safetensors.torch import load_file

        shards = sorted(set(json.loads((d / "model.safetensors.index.json").read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for s in shards:
            out.update(load_file(d / s))
        return out
    if (d / "pytorch_model.bin").is_file():
        return torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{d}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _load_hf(d: Path) -> torch.nn.Module:
    cfg_file = d / "config.json"
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("model_type") != "esm" or cfg.get("position_embedding_type", "rotary") != "rotary":
        raise ValueError(f"{cfg_file}: not an ESM-2 config (model_type={cfg.get('model_type')!r}, rotary positions needed)")
    if cfg.get("emb_layer_norm_before"):
        raise ValueError(f"{cfg_file}: emb_layer_norm_before=true is ESM-1b, not ESM-2")
    layers, dim, heads = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]
    if cfg.get("intermediate_size", 4 * dim) != 4 * dim or cfg.get("vocab_size", 33) != 33:
        raise ValueError(f"{cfg_file}: intermediate_size must be 4*hidden_size and vocab_size 33 for ESM-2")
    model = _build(layers, dim, heads, bool(cfg.get("token_dropout", True)))
    hf = {k.removeprefix("esm."): v for k, v in _read_hf_tensors(d).items()}
    reverse = {fair_esm_to_hf_key(k).removeprefix("esm."): k for k in model.state_dict()}
    state = {reverse[k]: v for k, v in hf.items() if k in reverse}
    if "embed_tokens.weight" not in state and "lm_head.weight" in state:
        state["embed_tokens.weight"] = state["lm_head.weight"]  # tied; saved once
    state.setdefault("lm_head.weight", state.get("embed_tokens.weight"))
    if state["lm_head.weight"] is None or "lm_head.bias" not in state:
        # EsmModel (no MLM head): keep the randomly initialised head, it never affects hooks
        own = model.state_dict()
        for k in own:
            if k.startswith("lm_head."):
                state[k] = state.get("embed_tokens.weight") if k == "lm_head.weight" else own[k]
        log.warning("%s has no masked-LM head (EsmModel); logits will not be meaningful", d)
    ignored = sorted(k for k in hf if k not in reverse and not k.endswith("position_ids"))
    if ignored:
        log.info("%s: ignoring tensors %s", d, ignored[:8])
    return _finish(model, state, d)


def convert_fair_esm_to_hf(pt: str | os.PathLike, out_dir: str | os.PathLike, *, trust_checkpoint: bool = False) -> Path:
    """Write a fair-esm ``.pt`` checkpoint as an HF ``EsmForMaskedLM`` directory.

    Produces ``config.json``, ``model.safetensors`` (float32, the tied LM-head weight saved once
    as ``esm.embeddings.word_embeddings.weight``) and ``vocab.txt``; ``transformers`` is not needed.
    """
    from safetensors.torch import save_file

    model = _load_fair_esm(Path(pt), trust_checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    has_reg = Path(pt).with_name(Path(pt).stem + "-contact-regression.pt").is_file()
    tensors = {
        fair_esm_to_hf_key(k): v.contiguous()
        for k, v in model.state_dict().items()
        if k != "lm_head.weight" and (has_reg or k not in _REGRESSION)
    }
    config = {
        "architectures": ["EsmForMaskedLM"], "model_type": "esm", "vocab_size": len(model.alphabet),
        "hidden_size": model.embed_dim, "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.attention_heads, "intermediate_size": 4 * model.embed_dim,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": 1026, "position_embedding_type": "rotary", "layer_norm_eps": 1e-5,
        "token_dropout": bool(model.token_dropout), "emb_layer_norm_before": False,
        "mask_token_id": model.mask_idx, "pad_token_id": model.padding_idx, "initializer_range": 0.02,
        "is_folding_model": False, "use_cache": True, "tie_word_embeddings": True, "torch_dtype": "float32",
    }
    tmp = out / f".model.safetensors.{os.getpid()}.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "vocab.txt").write_text("\n".join(model.alphabet.all_toks) + "\n")
    return out


# ---------------------------------------------------------------- names and caches
def _hf_cache_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def _torch_hub_dir() -> Path:
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "torch")
    return Path(torch_home) / "hub" / "checkpoints"


def resolve_name(name: str) -> str:
    """Full released name of ``name`` or a unique prefix of it (``"esm2_t33_650M"``)."""
    full = [k for k in ESM2_MODELS if k == name or k.startswith(name + "_")]
    if len(full) != 1:
        raise ValueError(f"unknown ESM-2 model name {name!r}; known: demo, {', '.join(ESM2_MODELS)}")
    return full[0]


def resolve_checkpoint(name: str, search_dirs: list[str | os.PathLike] = ()) -> Path:
    """Find the local weights of a model name (``"demo"``, ``"esm2_t33_650M_UR50D"``, ``"esm2_t33_650M"``).

    Looks, in order, in each of ``search_dirs`` (``<name>.pt`` or a directory ``<name>``), torch hub's
    checkpoint cache and the HF hub cache (``models--facebook--<name>/snapshots/<revision>``, the
    revision in ``refs/main`` first).  Raises ``FileNotFoundError`` listing every place tried.
    """
    if name == "demo":
        return package_path(DEMO)
    name = resolve_name(name)
    tried: list[Path] = []
    for d in [Path(p) for p in search_dirs] + [_torch_hub_dir()]:
        for cand in (d / f"{name}.pt", d / name):
            tried.append(cand)
            if cand.is_file() or (cand / "config.json").is_file():
                return cand
    for cache in _hf_cache_dirs():
        repo = cache / f"models--facebook--{name}"
        tried.append(repo)
        snaps = repo / "snapshots"
        if not snaps.is_dir():
            continue
        ref = repo / "refs" / "main"
        order = [snaps / ref.read_text().strip()] if ref.is_file() else []
        order += sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for snap in order:
            if (snap / "config.json").is_file():
                return snap
    raise FileNotFoundError(
        f"no local weights for {name!r}; looked in: " + ", ".join(map(str, tried))
        + ". Weights are never downloaded: place the fair-esm .pt or an HF directory in one of these, "
        "or pass checkpoint=<path>."
    )


def load_esm2(
    checkpoint: str | os.PathLike | None = None,
    *,
    model: str | None = None,
    search_dirs: list[str | os.PathLike] = (),
    trust_checkpoint: bool = False,
) -> LoadedESM2:
    """Load ESM-2 from a ``checkpoint`` path (``.pt`` file, HF directory, or ``"pkg.module:rel/path"``)
    or a ``model`` name (see :func:`resolve_checkpoint`).  Exactly one of the two must be given."""
    if (checkpoint is None) == (model is None):
        raise ValueError("give exactly one of checkpoint=<path> or model=<name>")
    if checkpoint is not None:
        s = str(checkpoint)
        path = package_path(s) if re.match(r"^[\w.]+:[^/\\]", s) and not Path(s).exists() else Path(s).expanduser()
    else:
        path = resolve_checkpoint(model, list(search_dirs))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: a Hugging Face ESM directory needs config.json")
        net, layout = _load_hf(path), "hf"
    elif path.is_file():
        net, layout = _load_fair_esm(path, trust_checkpoint), "fair-esm"
    else:
        raise FileNotFoundError(f"ESM-2 checkpoint {path} does not exist")
    expected = ESM2_MODELS.get(resolve_name(model) if model and model != "demo" else "")
    found = (net.num_layers, net.embed_dim, net.attention_heads)
    if expected and expected != found:
        log.warning("%s: weights found for %r have (layers, dim, heads)=%s, expected %s", path, model, found, expected)
    model_id = path.name if path.is_dir() else path.stem
    if layout == "hf" and path.parent.name == "snapshots":  # HF cache: models--facebook--<name>/snapshots/<rev>
        model_id = path.parent.parent.name.split("--")[-1]
    return LoadedESM2(net, net.alphabet, model_id, path, layout)
