"""Structured permutations, their exact means, tail probabilities and Benjamini-Hochberg."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from sciinterp.analysis.engine import _candidates
from sciinterp.analysis.stats import (
    benjamini_hochberg,
    blocks_of,
    count_pvalue,
    normal_pvalue,
    null_mean_labels,
    permutation_index,
    split_groups,
)

GROUPS = np.array(["b"] * 4 + ["a"] * 3 + ["c"] * 4 + ["a"] * 2)  # "a" is not contiguous


def test_shift_rotates_labels_inside_each_group():
    blocks = blocks_of(GROUPS)
    assert blocks.lengths.tolist() == [5, 4, 4]
    y = np.arange(GROUPS.size)
    for seed in range(20):
        src = permutation_index(blocks, "shift", np.random.default_rng(seed))
        assert sorted(src) == list(range(GROUPS.size))
        assert (GROUPS[src] == GROUPS).all()  # labels stay in their group
        for order in (blocks.order[s : s + n] for s, n in zip(blocks.starts, blocks.lengths)):
            shifted = y[src][order]
            k = list(y[order]).index(shifted[0])
            assert shifted.tolist() == np.roll(y[order], -k).tolist()  # a rotation


def test_shuffle_swaps_equal_size_groups_and_permute_is_free():
    blocks = blocks_of(GROUPS)
    seen = set()
    for seed in range(30):
        src = permutation_index(blocks, "shuffle", np.random.default_rng(seed))
        assert (GROUPS[src][GROUPS == "a"] == "a").all()  # the only group of length 5
        seen.add(GROUPS[src][0])
    assert seen == {"b", "c"}
    src = permutation_index(blocks, "permute", np.random.default_rng(0))
    assert sorted(src) == list(range(GROUPS.size))
    with pytest.raises(ValueError, match="null method must be"):
        permutation_index(blocks, "rotate", np.random.default_rng(0))


@pytest.mark.parametrize("method", ["shift", "shuffle", "permute"])
def test_null_mean_labels_is_the_average_over_permutations(method):
    blocks = blocks_of(GROUPS)
    rng = np.random.default_rng(1)
    y = rng.random((GROUPS.size, 2))
    mc = np.mean([y[permutation_index(blocks, method, rng)] for _ in range(20000)], axis=0)
    np.testing.assert_allclose(null_mean_labels(y, blocks, method), mc, atol=0.02)


def test_split_groups_random_and_contiguous():
    g = np.repeat([f"t{i:02d}" for i in range(10)], 3)
    sel, held = split_groups(g, 0.3, method="contiguous")
    assert sel.tolist() == ["t00", "t01", "t02"] and len(held) == 7
    sel, held = split_groups(g, 0.5, seed=4)
    assert len(sel) == 5 and not set(sel) & set(held)
    with pytest.raises(ValueError, match="cannot split 1 group"):
        split_groups(np.array(["x", "x"]), 0.5)


def test_count_pvalue_matches_poisson_and_negative_binomial():
    assert count_pvalue(np.array([5.0]), np.array([2.0]), np.array([1.0]))[0] == pytest.approx(stats.poisson.sf(4, 2))
    mean, var = 4.0, 12.0
    r = mean**2 / (var - mean)
    assert count_pvalue(np.array([10.0]), np.array([mean]), np.array([var]))[0] == pytest.approx(
        stats.nbinom.sf(9, r, r / (r + mean))
    )
    assert count_pvalue(np.array([0.0]), np.array([3.0]), np.array([3.0]))[0] == 1.0
    # never below the Poisson tail, whatever the variance
    obs, mu = np.arange(0, 30.0), np.full(30, 6.0)
    assert (count_pvalue(obs, mu, mu * 3) >= count_pvalue(obs, mu, mu) - 1e-15).all()


def test_normal_pvalue_with_estimated_sd_is_wider():
    p_norm = normal_pvalue(np.array([3.0]), 0.0, 1.0)[0]
    assert p_norm == pytest.approx(2 * stats.norm.sf(3))
    assert normal_pvalue(np.array([3.0]), 0.0, 1.0, n_perm=20)[0] > p_norm
    assert normal_pvalue(np.array([np.nan]), 0.0, 1.0)[0] == 1.0


def test_benjamini_hochberg_against_the_definition():
    rng = np.random.default_rng(0)
    p = np.r_[rng.random(50), rng.random(10) * 1e-3, np.nan].reshape(61, 1)
    q = benjamini_hochberg(p)
    flat = p[:60, 0]
    m = flat.size
    ref = [min(min(flat[flat >= x] * m / np.array([(flat <= y).sum() for y in flat[flat >= x]])), 1) for x in flat]
    np.testing.assert_allclose(q[:60, 0], ref)
    assert np.isnan(q[60, 0]) and q.shape == p.shape


def test_candidate_bound_contains_every_bh_rejection():
    rng = np.random.default_rng(2)
    for _ in range(50):
        lower = np.r_[rng.random(500), rng.random(20) * 1e-3]
        final = np.minimum(lower * rng.uniform(1, 20, lower.size), 1)  # any p-values above their bounds
        rejected = benjamini_hochberg(final) < 0.05
        assert (lower[rejected] <= _candidates(lower, 0.05)).all()
