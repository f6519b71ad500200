"""scikit-learn-style wrapper: ``SAEEstimator().fit(X).transform(X)`` over NumPy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin

from sciinterp.sae.config import SAEConfig, TrainerConfig

__all__ = ["SAEEstimator"]


class SAEEstimator(TransformerMixin, BaseEstimator):
    """A sparse autoencoder as a scikit-learn transformer.

    Parameters
    ----------
    architecture, d_sae, k, l1_coeff, l0_coeff, lr, normalize
        See :class:`SAEConfig`.
    batch_size, epochs, max_rows, warmup_steps, seed, device
        See :class:`TrainerConfig`.
    sparse_output
        ``transform`` returns a ``scipy.sparse.csr_matrix`` instead of a dense array.

    Attributes
    ----------
    sae_ : SparseAutoencoder
        The fitted model (works on raw rows).
    n_features_in_ : int
        Width of ``X`` seen in ``fit``.
    """

    def __init__(self, architecture: str = "topk", d_sae: int = 1024, k: int = 32, l1_coeff: float = 0.3,
                 l0_coeff: float = 0.03, lr: float | None = None, normalize: str = "expected_norm",
                 batch_size: int = 1024, epochs: int = 5, max_rows: int | None = None, warmup_steps: int = 50,
                 seed: int = 0, device: str = "auto", sparse_output: bool = False):
        self.architecture, self.d_sae, self.k = architecture, d_sae, k
        self.l1_coeff, self.l0_coeff, self.lr, self.normalize = l1_coeff, l0_coeff, lr, normalize
        self.batch_size, self.epochs, self.max_rows, self.warmup_steps = batch_size, epochs, max_rows, warmup_steps
        self.seed, self.device, self.sparse_output = seed, device, sparse_output

    def _configs(self) -> tuple[SAEConfig, TrainerConfig]:
        sae = SAEConfig(self.architecture, d_sae=self.d_sae, k=self.k, l1_coeff=self.l1_coeff,
                        l0_coeff=self.l0_coeff, lr=self.lr, normalize=self.normalize)
        tc = TrainerConfig(batch_size=self.batch_size, epochs=self.epochs, max_rows=self.max_rows,
                           warmup_steps=self.warmup_steps, seed=self.seed, device=self.device, progress=False)
        return sae, tc

    def fit(self, X: Any, y: Any = None) -> SAEEstimator:
        """Train on rows ``X`` (n_samples, n_features); ``y`` is ignored."""
        from sciinterp.sae.trainer import fit

        X = self._check(X, fitting=True)
        sae_cfg, tc = self._configs()
        self.sae_ = fit(X, [sae_cfg], tc)[0]
        return self

    def _check(self, X: Any, fitting: bool = False) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(f"SAEEstimator expects a 2-D array (n_samples, n_features), got shape {X.shape}")
        if fitting:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but SAEEstimator was fitted with {self.n_features_in_}")
        return X

    def _require_fit(self) -> None:
        if not hasattr(self, "sae_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("this SAEEstimator is not fitted yet; call fit(X) first")

    @torch.no_grad()
    def transform(self, X: Any) -> Any:
        """Latent activations (n_samples, d_sae): dense ``ndarray`` or CSR when ``sparse_output``."""
        self._require_fit()
        X = self._check(X)
        dev = self.sae_.W_dec.device
        parts = []
        for i in range(0, X.shape[0], 4096):
            xb = torch.from_numpy(X[i : i + 4096]).to(dev)
            if self.sparse_output:
                parts.append(self.sae_.encode(xb))
            else:
                parts.append(self.sae_.encode_dense(xb).cpu().numpy())
        if not self.sparse_output:
            return np.concatenate(parts) if parts else np.zeros((0, self.d_sae), np.float32)
        import scipy.sparse as sp

        mats = []
        for codes in parts:
            v, j = codes.values.cpu().numpy(), codes.indices.cpu().numpy()
            rows = np.repeat(np.arange(v.shape[0]), v.shape[1])
            keep = (j.reshape(-1) >= 0) & (v.reshape(-1) != 0)
            mats.append(sp.csr_matrix((v.reshape(-1)[keep], (rows[keep], j.reshape(-1)[keep])),
                                      shape=(v.shape[0], self.sae_.d_sae)))
        return sp.vstack(mats).tocsr() if mats else sp.csr_matrix((0, self.sae_.d_sae), dtype=np.float32)

    @torch.no_grad()
    def inverse_transform(self, Z: Any) -> np.ndarray:
        """Reconstruct rows (n_samples, n_features) from latents ``Z`` (dense or scipy sparse)."""
        self._require_fit()
        if hasattr(Z, "toarray"):
            Z = Z.toarray()
        Z = torch.from_numpy(np.asarray(Z, dtype=np.float32)).to(self.sae_.W_dec.device)
        if Z.ndim != 2 or Z.shape[1] != self.sae_.d_sae:
            raise ValueError(f"Z has shape {tuple(Z.shape)}, expected (n_samples, d_sae={self.sae_.d_sae})")
        return (Z @ self.sae_.W_dec + self.sae_.b_dec).cpu().numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Fraction of variance of ``X`` explained by the reconstruction."""
        X = self._check(X)
        Xh = self.inverse_transform(self.transform(X))
        return float(1 - ((X - Xh) ** 2).sum() / ((X - X.mean(0)) ** 2).sum())
