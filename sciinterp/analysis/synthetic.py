"""Synthetic feature codes with planted links, for tests and the scale benchmark.

Tokens come in items (``p0000``, ``p0001``...) of ``item_len`` tokens.  Concept labels are
autocorrelated runs (smoothed noise thresholded at a prevalence), so regions exist and a
block-respecting null matters.  Each token holds ``k`` random features (uniform over the
dictionary, Exponential(1) values) plus one column per planted feature (so ``k + n_planted +
n_planted_continuous`` columns; planting never displaces a random feature); feature ``c`` (``c < n_planted``) is planted on concept ``c``:
it fires on a share ``hit`` of the concept's tokens (value 2 + Exponential(1)) and on a share
``false_fire`` of the others.  Continuous variable ``v{j}`` is ``strength * a_{n_planted + j} + N(0,1)``
(autocorrelated noise), planted on feature ``n_planted + j``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import xarray as xr

from sciinterp.features import make_features

__all__ = ["PlantedLinks", "planted_links"]


class PlantedLinks(NamedTuple):
    """``features`` (feature-store layout), token ``labels``, and the planted ``truth`` pairs
    ``[(feature, variable name), ...]``."""

    features: xr.Dataset
    labels: xr.Dataset
    truth: list[tuple[int, str]]


def _runs(rng: np.random.Generator, n: int, prevalence: float, smooth: int) -> np.ndarray:
    noise = rng.standard_normal(n + smooth)
    sm = np.convolve(noise, np.ones(smooth) / smooth, mode="valid")[:n]
    return (sm > np.quantile(sm, 1 - prevalence)).astype(np.float32)


def planted_links(
    n_items: int = 200,
    item_len: int = 100,
    d_sae: int = 256,
    k: int = 8,
    n_concepts: int = 6,
    n_planted: int = 3,
    n_continuous: int = 2,
    n_planted_continuous: int = 1,
    prevalence: float = 0.15,
    hit: float = 0.7,
    false_fire: float = 0.02,
    strength: float = 1.0,
    smooth: int = 6,
    seed: int = 0,
) -> PlantedLinks:
    """Build planted data; see the module docstring.  Deterministic for ``seed``."""
    if n_planted > n_concepts or n_planted_continuous > n_continuous or n_planted + n_continuous > d_sae:
        raise ValueError("planted_links: more planted features than concepts, variables or dictionary entries")
    rng = np.random.default_rng(seed)
    n = n_items * item_len
    idx = rng.integers(0, d_sae, size=(n, k)).astype(np.int32)
    idx.sort(axis=1)
    idx[:, 1:][idx[:, 1:] == idx[:, :-1]] = -1
    vals = np.where(idx >= 0, rng.exponential(1.0, (n, k)), 0).astype(np.float32)
    planted = np.isin(idx, np.arange(n_planted + n_planted_continuous))
    idx[planted], vals[planted] = -1, 0  # planted features fire only where planted
    n_extra = n_planted + n_planted_continuous
    idx = np.concatenate([idx, np.full((n, n_extra), -1, np.int32)], 1)
    vals = np.concatenate([vals, np.zeros((n, n_extra), np.float32)], 1)
    labels = {}
    slot = k
    for c in range(n_concepts):
        y = _runs(rng, n, prevalence, smooth)
        labels[f"concept{c}"] = xr.Variable("token", y, attrs={"kind": "concept"})
        if c < n_planted:
            fire = np.where(y > 0, rng.random(n) < hit, rng.random(n) < false_fire)
            idx[fire, slot] = c
            vals[fire, slot] = 2 + rng.exponential(1.0, int(fire.sum()))
            slot += 1
    for j in range(n_continuous):
        noise = np.convolve(rng.standard_normal(n + smooth), np.ones(smooth) / np.sqrt(smooth), "valid")[:n]
        v = noise
        if j < n_planted_continuous:
            f = n_planted + j
            fire = rng.random(n) < 0.2
            a = np.where(fire, rng.exponential(1.0, n), 0.0)
            idx[fire, slot], vals[fire, slot] = f, a[fire]
            slot += 1
            v = strength * a + noise
        labels[f"v{j}"] = xr.Variable("token", v.astype(np.float32), attrs={"kind": "continuous", "units": "1"})
    coords = {
        "protein": np.repeat([f"p{i:04d}" for i in range(n_items)], item_len),
        "position": np.tile(np.arange(1, item_len + 1), n_items),
    }
    feats = make_features(vals, idx, d_sae, coords)
    lab = xr.Dataset(labels, coords={"protein": ("token", coords["protein"])}, attrs={"group": "protein"})
    truth = [(c, f"concept{c}") for c in range(n_planted)]
    truth += [(n_planted + j, f"v{j}") for j in range(n_planted_continuous)]
    return PlantedLinks(feats, lab, truth)
