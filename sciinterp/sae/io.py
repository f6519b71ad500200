"""SAE directories: ``cfg.json`` + ``sae_weights.safetensors`` in SAELens layout.

``cfg.json`` carries SAELens' keys (``architecture``, ``d_in``, ``d_sae``, ``dtype``, ``device``,
``apply_b_dec_to_input``, ``normalize_activations``, ``hook_name``, ``model_name``, ``k`` for top-k,
``metadata``) plus sciinterp's (``format_version``, ``provenance``, ``normalisation``, ``sciinterp``:
the full :class:`SAEConfig`).  Input normalisation used in training is already folded into the
weights, so ``normalize_activations`` is ``"none"``: a loaded SAE works on raw activations.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from sciinterp.sae.config import SAEConfig

__all__ = ["CFG_FILE", "FORMAT_VERSION", "WEIGHTS_FILE", "load_sae", "save_sae"]

log = logging.getLogger(__name__)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
FORMAT_VERSION = 1
_SAELENS_ARCH = {"topk": "topk", "batchtopk": "jumprelu", "relu": "standard", "jumprelu": "jumprelu"}


def save_sae(sae: Any, path: str | os.PathLike) -> Path:
    """Write ``sae`` to the directory ``path`` atomically (temp dir + rename); returns ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg: SAEConfig = sae.cfg
    tensors = {
        "W_enc": sae.W_enc.detach().float().contiguous().cpu(),
        "b_enc": sae.b_enc.detach().float().contiguous().cpu(),
        "W_dec": sae.W_dec.detach().float().contiguous().cpu(),
        "b_dec": sae.b_dec.detach().float().contiguous().cpu(),
    }
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold.detach().float().contiguous().cpu()
    prov = {k: sae.provenance.get(k) for k in ("model_id", "model_checksum", "hook_name", "store_hash")}
    prov["hook_name"] = prov["hook_name"] or cfg.hook
    doc = {
        "format_version": FORMAT_VERSION,
        "architecture": _SAELENS_ARCH[cfg.architecture],  # SAELens' inference class; ours is in "sciinterp"
        "sciinterp_architecture": cfg.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "k": cfg.k if cfg.architecture in ("topk", "batchtopk") else None,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "hook_name": prov["hook_name"] or "",  # SAELens needs strings here, never null
        "model_name": prov["model_id"] or "",
        "metadata": {"model_name": prov["model_id"] or "", "hook_name": prov["hook_name"] or ""},
        "provenance": prov | {k: v for k, v in sae.provenance.items() if k not in prov},
        "normalisation": sae.normalization,
        "sciinterp": asdict(cfg),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        (tmp / CFG_FILE).write_text(json.dumps(doc, indent=2, default=str))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_sae(path: str | os.PathLike, d_in: int | None = None, hook: str | None = None,
             model_checksum: str | None = None, device: str | torch.device = "cpu") -> Any:
    """Read an SAE directory; raise ``ValueError`` naming the mismatch when checks fail."""
    from safetensors.torch import load_file

    from sciinterp.sae.model import SparseAutoencoder

    path = Path(path)
    if not (path / CFG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{path} is not an SAE directory: needs {CFG_FILE} and {WEIGHTS_FILE}")
    doc = json.loads((path / CFG_FILE).read_text())
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path / CFG_FILE}: format_version={version!r}, this sciinterp reads {FORMAT_VERSION}")
    prov = doc.get("provenance") or {}
    if d_in is not None and int(doc["d_in"]) != int(d_in):
        raise ValueError(f"SAE at {path} has d_in={doc['d_in']} but the activations have width {d_in}")
    if hook is not None and prov.get("hook_name") not in (None, hook):
        raise ValueError(f"SAE at {path} was trained on hook {prov.get('hook_name')!r}, not {hook!r}")
    if model_checksum is not None and prov.get("model_checksum") not in (None, model_checksum):
        raise ValueError(
            f"SAE at {path} was trained on model checksum {prov.get('model_checksum')!r}, not {model_checksum!r}")
    known = {f.name for f in fields(SAEConfig)}
    cfg = SAEConfig(**{k: v for k, v in doc["sciinterp"].items() if k in known})
    sae = SparseAutoencoder(cfg, int(doc["d_in"]), device=device)
    state = load_file(str(path / WEIGHTS_FILE), device=str(device))
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            if state[name].shape != getattr(sae, name).shape:
                raise ValueError(f"{path / WEIGHTS_FILE}: {name} has shape {tuple(state[name].shape)}, "
                                 f"cfg.json implies {tuple(getattr(sae, name).shape)}")
            getattr(sae, name).copy_(state[name])
        if cfg.architecture == "jumprelu":
            sae.log_threshold.copy_(state["threshold"].clamp_min(1e-30).log())
        elif cfg.architecture == "batchtopk":
            sae.batch_threshold.copy_(state["threshold"].mean())
    sae.provenance = prov
    sae.normalization = doc.get("normalisation") or {"kind": "none"}
    sae.eval()
    return sae
