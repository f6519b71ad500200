"""Sparse autoencoders: configs, architectures, trainer, estimator."""

from sciinterp.sae.config import SAEConfig, TrainerConfig
from sciinterp.sae.estimator import SAEEstimator
from sciinterp.sae.metrics import DownstreamEval, EvalResult, evaluate
from sciinterp.sae.model import ForwardOutput, SparseAutoencoder, SparseCodes
from sciinterp.sae.shape import d_in_of, d_sae_of
from sciinterp.sae.trainer import StepInfo, fit, train

__all__ = [
    "DownstreamEval", "EvalResult", "ForwardOutput", "SAEConfig", "SAEEstimator", "SparseAutoencoder",
    "SparseCodes", "StepInfo", "TrainerConfig", "d_in_of", "d_sae_of", "evaluate", "fit", "train",
]
