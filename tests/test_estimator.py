"""SAEEstimator: scikit-learn protocol over NumPy arrays."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from sciinterp.sae import SAEEstimator
from sciinterp.synthetic import planted_superposition


@pytest.fixture(scope="module")
def fitted():
    x = planted_superposition(6_000, d_in=16, n_features=64, mean_active=3, seed=3).x
    est = SAEEstimator(d_sae=128, k=4, lr=3e-3, epochs=2, batch_size=256).fit(x[:5_000])
    return est, x[5_000:]


def test_fit_transform_inverse_transform(fitted):
    est, x = fitted
    z = est.transform(x)
    assert isinstance(z, np.ndarray) and z.shape == (1_000, 128) and z.dtype == np.float32
    assert ((z > 0).sum(1) <= 4).all()
    x_hat = est.inverse_transform(z)
    assert x_hat.shape == x.shape
    fve = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fve > 0.6 and est.score(x) == pytest.approx(fve, rel=1e-4)


def test_sparse_output_matches_dense(fitted):
    est, x = fitted
    dense = est.transform(x)
    est_sp = clone(est).set_params(sparse_output=True)
    est_sp.sae_, est_sp.n_features_in_ = est.sae_, est.n_features_in_
    z = est_sp.transform(x)
    assert sp.issparse(z) and z.shape == dense.shape
    np.testing.assert_allclose(z.toarray(), dense, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(est_sp.inverse_transform(z), est.inverse_transform(dense), rtol=1e-4, atol=1e-5)


def test_params_and_errors(fitted):
    est, x = fitted
    params = est.get_params()
    assert params["d_sae"] == 128 and params["k"] == 4 and params["architecture"] == "topk"
    c = clone(est).set_params(k=2)
    assert c.k == 2 and not hasattr(c, "sae_")
    with pytest.raises(NotFittedError, match="not fitted yet"):
        c.transform(x)
    with pytest.raises(ValueError, match="X has 8 features, but SAEEstimator was fitted with 16"):
        est.transform(x[:, :8])
    with pytest.raises(ValueError, match=r"SAEConfig.architecture='gated'"):
        SAEEstimator(architecture="gated").fit(x)
