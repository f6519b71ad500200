"""SAELens loads sciinterp SAE directories and computes the same codes (issue #3).

Needs the benchmark environment (``bash benchmarks/setup_peers.sh``): the check runs in
``benchmarks/.peers-venv`` (sae-lens + sciinterp), never in the project's venv.
Run with ``pytest -m peers tests/test_saelens_compat.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PEERS_PY = REPO / "benchmarks" / ".peers-venv" / "bin" / "python"
SCRIPT = REPO / "benchmarks" / "peers" / "saelens_compat.py"
# every sciinterp architecture has a SAELens counterpart: topk -> topk, relu -> standard,
# jumprelu -> jumprelu, batchtopk -> jumprelu (its inference rule is a threshold)
ARCHS = ("topk", "relu", "jumprelu", "batchtopk")

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(not PEERS_PY.exists(), reason="peers env missing: run bash benchmarks/setup_peers.sh"),
]


@pytest.fixture(scope="module")
def compat(tmp_path_factory) -> dict[str, dict]:
    probe = subprocess.run([str(PEERS_PY), "-c", "import sae_lens"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"sae_lens not importable in {PEERS_PY}: {probe.stderr.strip().splitlines()[-1:]}")
    out = tmp_path_factory.mktemp("compat") / "compat.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    proc = subprocess.run([str(PEERS_PY), str(SCRIPT), "--archs", *ARCHS, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert out.exists(), f"compat script produced no result (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return {r["architecture"]: r for r in json.loads(out.read_text())}


@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_loads_and_agrees(compat, arch):
    r = compat[arch]
    assert r.get("stage") != "sciinterp", f"sciinterp failed to train/save {arch}: {r.get('error')}"
    assert r.get("stage") != "load", (
        f"SAELens cannot load a sciinterp {arch} SAE: {r.get('error')}\ncfg.json: {r.get('cfg_json')}"
    )
    d = r["max_abs_diff"]
    assert d["encode"] <= 1e-5, f"{arch}: SAELens encode differs by {d['encode']:.3g} ({d['active_mismatch']} active flags)"
    assert d["decode_same_codes"] <= 1e-5, f"{arch}: SAELens decode differs by {d['decode_same_codes']:.3g}"
    assert d["forward"] <= 1e-5, f"{arch}: SAELens forward differs by {d['forward']:.3g}"
    assert r["mean_l0"] > 0, f"{arch}: the trained SAE has no active latents on held-out rows"


def test_topk_loads_as_saelens_topk(compat):
    r = compat["topk"]
    assert r.get("saelens_class") == "TopKSAE", r.get("error") or r.get("saelens_class")
    assert r["mean_l0"] == pytest.approx(4.0, abs=0.5)  # k=4 in the compat script; ReLU may zero a few
