"""Sparse autoencoders: configs, architectures, trainer, estimator."""
