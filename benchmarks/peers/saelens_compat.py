"""Check that SAELens loads sciinterp SAE directories and computes the same codes.

Run inside the peers venv (it needs both ``sae_lens`` and ``sciinterp``)::

    benchmarks/.peers-venv/bin/python benchmarks/peers/saelens_compat.py [--archs topk relu ...] [--out result.json]

For each architecture: train a tiny sciinterp SAE (d_in=16, d_sae=64) with
``sciinterp.sae.train`` on planted data, load the directory with
``sae_lens.SAE.load_from_disk``, and compare on held-out rows SAELens' ``encode``
(dense latents), ``decode`` and forward with sciinterp's ``encode_dense`` /
``decode(encode(x))``.  Prints one JSON object per architecture: ``ok``, the SAELens
class, the max abs differences, or the error SAELens raised (type, message, cfg keys).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import torch

ARCHS = ("topk", "relu", "jumprelu", "batchtopk")
TOL = 1e-5


def check(arch: str, tmp: Path, x_train: np.ndarray, x_test: torch.Tensor) -> dict:
    from sciinterp.sae import SAEConfig, SparseAutoencoder, TrainerConfig, train

    res: dict = {"architecture": arch}
    cfg = SAEConfig(architecture=arch, d_sae=64, k=4, name=arch)
    tc = TrainerConfig(batch_size=256, max_rows=4096, device="cpu", threads=1, progress=False, warmup_steps=2)
    (path,) = train(x_train, [cfg], tc, tmp / arch)
    ours = SparseAutoencoder.load(path)
    doc = json.loads((Path(path) / "cfg.json").read_text())
    res["cfg_json"] = {k: doc.get(k) for k in ("architecture", "sciinterp_architecture", "d_in", "d_sae", "k", "dtype",
                                                 "apply_b_dec_to_input", "normalize_activations", "metadata")}
    try:
        from sae_lens import SAE

        theirs = SAE.load_from_disk(str(path), device="cpu")
    except Exception as err:  # the point is to report exactly what SAELens rejects
        res.update(ok=False, stage="load", error=f"{type(err).__name__}: {err}",
                   traceback=traceback.format_exc(limit=-4))
        return res
    res["saelens_class"] = type(theirs).__name__
    with torch.no_grad():
        z_ours = ours.encode_dense(x_test)
        z_theirs = theirs.encode(x_test)
        if z_theirs.is_sparse:
            z_theirs = z_theirs.to_dense()
        xh_ours = ours.decode(ours.encode(x_test))
        xh_theirs_from_ours = theirs.decode(z_ours)
        xh_theirs = theirs(x_test)
    diffs = {
        "encode": float((z_ours - z_theirs).abs().max()),
        "decode_same_codes": float((xh_ours - xh_theirs_from_ours).abs().max()),
        "forward": float((xh_ours - xh_theirs).abs().max()),
        "active_mismatch": int(((z_ours > 0) != (z_theirs > 0)).sum()),
    }
    res["max_abs_diff"] = diffs
    res["mean_l0"] = float((z_ours > 0).sum(1).float().mean())
    res["ok"] = diffs["encode"] <= TOL and diffs["decode_same_codes"] <= TOL and diffs["forward"] <= TOL
    if not res["ok"]:
        res["stage"] = "compare"
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=list(ARCHS))
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from sciinterp.synthetic import planted_superposition

    data = planted_superposition(6144, d_in=16, n_features=96, mean_active=3, seed=0)
    x_train, x_test = data.x[:4096], torch.from_numpy(data.x[4096:])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.archs:
            try:
                results.append(check(arch, Path(tmp), x_train, x_test))
            except Exception as err:
                results.append({"architecture": arch, "ok": False, "stage": "sciinterp",
                                "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=-4)})
    text = json.dumps(results, indent=1, default=str)
    if a.out:
        a.out.write_text(text)
    print(text)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
