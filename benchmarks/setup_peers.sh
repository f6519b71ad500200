#!/usr/bin/env bash
# Build the peers' benchmark environment in benchmarks/.peers-venv (idempotent).
#
# The peers (sae-lens, eai-sparsify, dictionary-learning) pull ~100 packages and
# dictionary-learning pins a torchvision that breaks against our torch, so they live
# in their own venv, never in the project's .venv.  torch is pinned to the project's
# version through a constraints file; sciinterp is installed editable on top.
#
# Usage: bash benchmarks/setup_peers.sh            (log in benchmarks/results/setup_peers.log)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
venv="$here/.peers-venv"
mkdir -p "$here/results"
cons="$here/results/peers-constraints.txt"
echo "torch==2.14.1" > "$cons"
export PIP_DISABLE_PIP_VERSION_CHECK=1

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -c "$cons")

have() { "$venv/bin/python" - "$1" <<'PY' >/dev/null 2>&1
import importlib, sys
importlib.import_module(sys.argv[1])
PY
}

# torch first, from this machine's wheels; everything after is constrained to it.
have torch || "${pip[@]}" "torch==2.14.1"

have sparsify || "${pip[@]}" eai-sparsify
have sae_lens || "${pip[@]}" sae-lens

# dictionary-learning 0.1.0 declares nnsight<0.4 (whose torch/torchvision pins fight ours),
# umap-learn, circuitsvis, llvmlite: none is used by AutoEncoderTopK/TopKTrainer/trainSAE.
# Install it without deps, then what its import chain needs (its buffer imports nnsight;
# the current nnsight imports fine).  `pip check` then lists those declared extras as missing.
if ! have dictionary_learning; then
    "${pip[@]}" --no-deps dictionary-learning
    "${pip[@]}" einops tqdm h5py nnsight 2>/dev/null || "${pip[@]}" einops tqdm h5py
fi
# a torchvision built for another torch breaks `import transformers` -> remove it
"$venv/bin/python" -m pip uninstall -y torchvision >/dev/null 2>&1 || true

# sciinterp itself (editable), deps constrained to the same torch
have sciinterp || "${pip[@]}" -e "$repo"

"$venv/bin/python" - <<'PY'
import importlib, importlib.metadata as md
for mod, dist in [("torch", "torch"), ("sparsify", "eai-sparsify"), ("sae_lens", "sae-lens"),
                  ("dictionary_learning", "dictionary-learning"), ("sciinterp", "sciinterp")]:
    try:
        importlib.import_module(mod)
        print(f"ok   {dist}=={md.version(dist)}")
    except Exception as err:  # report every peer, do not stop at the first failure
        print(f"FAIL {dist}: {type(err).__name__}: {err}")
PY
