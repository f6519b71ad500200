"""Dataclass configs of an SAE (:class:`SAEConfig`) and of its training (:class:`TrainerConfig`).

Plain dataclasses: a docstring under each field, ``__post_init__`` rejects bad values
with a ``ValueError`` that names the field.  Hydra builds them through ``_target_``
(``conf/sae/*.yaml``, ``conf/trainer/*.yaml``); the library never imports Hydra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["ARCHITECTURES", "SAEConfig", "TrainerConfig"]

ARCHITECTURES = ("topk", "batchtopk", "relu", "jumprelu")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass
class SAEConfig:
    """One sparse autoencoder: architecture, width and sparsity."""

    architecture: Literal["topk", "batchtopk", "relu", "jumprelu"] = "topk"
    """Activation and loss: ``topk`` (+AuxK), ``batchtopk`` (+AuxK, inference threshold),
    ``relu`` (L1 weighted by decoder norm), ``jumprelu`` (L0 via straight-through estimator)."""
    d_sae: int = 4096
    """Number of latents (dictionary size)."""
    k: int = 32
    """Active latents per row for ``topk``; mean active per row for ``batchtopk``.
    For ``relu``/``jumprelu`` the cap on the padded width of ``encode`` (0: no cap)."""
    l1_coeff: float = 0.3
    """``relu``: weight of the decoder-norm-weighted L1 penalty (on normalised inputs)."""
    l0_coeff: float = 0.03
    """``jumprelu``: weight of the L0 penalty (mean active latents per row / ``d_sae`` scale free)."""
    jumprelu_init_threshold: float = 0.5
    """``jumprelu``: initial threshold of every latent (normalised units)."""
    jumprelu_bandwidth: float = 0.05
    """``jumprelu``: width of the rectangle kernel of the straight-through estimator."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK dead-latent loss (``topk``/``batchtopk``; 0 disables it)."""
    auxk_k: int | None = None
    """Latents used by the AuxK loss (default ``d_in // 2``)."""
    dead_tokens: int = 1_000_000
    """A latent is dead after this many training rows without firing."""
    lr: float | None = None
    """Adam learning rate; ``None``: ``2.8e-3 / sqrt(d_sae / 16384)`` (sparsify's width scaling, 14x its
    Adam base: runs of a few hundred steps recover far more ground truth, see docs/trainer.md)."""
    normalize: Literal["expected_norm", "standardize", "none"] = "expected_norm"
    """Input normalisation fitted on the first batch and folded into the weights on save:
    ``expected_norm`` scales so E||x||^2 = d_in, ``standardize`` subtracts the mean and divides
    each coordinate by its std, ``none`` leaves inputs alone."""
    init_b_dec: Literal["median", "mean", "zeros"] = "median"
    """Initial decoder bias: coordinate-wise median or mean of the first batch, or zeros."""
    matryoshka_widths: list[int] | None = None
    """``topk``/``batchtopk``: nested dictionary sizes, e.g. ``[256, 1024, 4096]`` (``d_sae`` is added
    as the last when missing).  The reconstruction loss becomes the mean FVU of the reconstructions
    from each prefix of latents (Matryoshka SAE, Bussmann et al. 2025), so the first latents learn
    the general features and later ones refine them; inference is unchanged.  ``None``: off."""
    hook: str | None = None
    """Hook point this SAE reads (recorded in cfg.json; checked by ``SparseAutoencoder.load``)."""
    name: str | None = None
    """Directory name of the saved SAE; default ``<architecture>-<d_sae>-k<k>``."""
    seed: int | None = None
    """Initialisation seed; ``None``: the trainer's seed."""

    def __post_init__(self) -> None:
        _check(self.architecture in ARCHITECTURES,
               f"SAEConfig.architecture={self.architecture!r}: choose one of {', '.join(ARCHITECTURES)}")
        _check(int(self.d_sae) > 0, f"SAEConfig.d_sae={self.d_sae}: must be a positive integer")
        _check(int(self.k) >= 0, f"SAEConfig.k={self.k}: must be >= 0")
        if self.architecture in ("topk", "batchtopk"):
            _check(0 < int(self.k) <= int(self.d_sae), f"SAEConfig.k={self.k}: must be in [1, d_sae={self.d_sae}]")
        _check(self.l1_coeff >= 0, f"SAEConfig.l1_coeff={self.l1_coeff}: must be >= 0")
        _check(self.l0_coeff >= 0, f"SAEConfig.l0_coeff={self.l0_coeff}: must be >= 0")
        _check(self.jumprelu_init_threshold > 0, f"SAEConfig.jumprelu_init_threshold={self.jumprelu_init_threshold}: must be > 0")
        _check(self.jumprelu_bandwidth > 0, f"SAEConfig.jumprelu_bandwidth={self.jumprelu_bandwidth}: must be > 0")
        _check(self.auxk_alpha >= 0, f"SAEConfig.auxk_alpha={self.auxk_alpha}: must be >= 0")
        _check(self.auxk_k is None or self.auxk_k > 0, f"SAEConfig.auxk_k={self.auxk_k}: must be > 0")
        _check(self.dead_tokens > 0, f"SAEConfig.dead_tokens={self.dead_tokens}: must be > 0")
        _check(self.lr is None or self.lr > 0, f"SAEConfig.lr={self.lr}: must be > 0")
        _check(self.normalize in ("expected_norm", "standardize", "none"),
               f"SAEConfig.normalize={self.normalize!r}: use expected_norm, standardize or none")
        _check(self.init_b_dec in ("median", "mean", "zeros"),
               f"SAEConfig.init_b_dec={self.init_b_dec!r}: use median, mean or zeros")
        self.d_sae, self.k = int(self.d_sae), int(self.k)
        if self.matryoshka_widths is not None:
            widths = [int(w) for w in self.matryoshka_widths]
            _check(self.architecture in ("topk", "batchtopk"),
                   f"SAEConfig.matryoshka_widths: only for topk and batchtopk, not {self.architecture!r}")
            _check(bool(widths) and all(a < b for a, b in zip([0, *widths], widths)) and widths[-1] <= self.d_sae,
                   f"SAEConfig.matryoshka_widths={widths}: must increase strictly within 1..d_sae={self.d_sae}")
            self.matryoshka_widths = widths if widths[-1] == self.d_sae else [*widths, self.d_sae]

    @property
    def learning_rate(self) -> float:
        """The Adam learning rate actually used."""
        return self.lr if self.lr is not None else 2.8e-3 / math.sqrt(self.d_sae / 2**14)

    @property
    def run_name(self) -> str:
        """Directory name of this SAE."""
        return self.name or f"{self.architecture}-{self.d_sae}-k{self.k}" + ("-matryoshka" if self.matryoshka_widths else "")


@dataclass
class TrainerConfig:
    """How to train: batches, schedule, checkpoints, logging, devices."""

    batch_size: int = 4096
    """Rows per optimisation step (global: split across DDP ranks)."""
    max_rows: int | None = None
    """Stop after this many training rows; ``None``: ``epochs`` passes over the source."""
    epochs: int = 1
    """Passes over the source when ``max_rows`` is ``None`` (otherwise as many as needed)."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up over this many steps (at most a twentieth of the run)."""
    decay: Literal["cosine", "linear", "none"] = "linear"
    """Learning-rate decay after warm-up, down to ``min_lr_ratio`` at the last step."""
    decay_start: float = 0.8
    """Fraction of training after which the decay starts (``linear`` and ``cosine``)."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of the peak."""
    grad_clip: float = 1.0
    """Clip the global gradient norm of each SAE (0 disables clipping)."""
    seed: int = 0
    """Seed of the data order and (unless ``SAEConfig.seed``) of the initialisation."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1``..."""
    autocast: Literal["auto", "bf16", "none"] = "auto"
    """bf16 autocast of the encoder matmul: ``auto`` = on for CUDA, off on CPU."""
    compile: bool = False
    """``torch.compile`` the dense relu/jumprelu loss (env ``SCIINTERP_NO_COMPILE=1`` disables)."""
    threads: int | None = None
    """CPU threads (``torch.set_num_threads``); ``None`` leaves torch's default."""
    checkpoint_every: int = 0
    """Write a resumable checkpoint every N steps (0: never); atomic, the last one is kept."""
    resume: bool = True
    """Resume from ``<out_dir>/checkpoint.pt`` when it exists."""
    log_every: int = 10
    """Write a metrics row (CSV, trackers) every N steps."""
    progress: bool = True
    """Show a tqdm progress bar (FVE, L0, dead fraction)."""
    trackers: list[str] = field(default_factory=list)
    """Extra metric sinks: ``tensorboard``, ``wandb`` (imported only when listed)."""
    check_finite: bool = True
    """Stop with an error naming the step and batch when a loss or gradient is NaN/inf."""
    prefetch: int = 2
    """Batches read ahead of the step in a background thread (0: read in the training loop)."""

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, f"TrainerConfig.batch_size={self.batch_size}: must be > 0")
        _check(self.max_rows is None or self.max_rows > 0, f"TrainerConfig.max_rows={self.max_rows}: must be > 0")
        _check(self.epochs > 0, f"TrainerConfig.epochs={self.epochs}: must be > 0")
        _check(self.warmup_steps >= 0, f"TrainerConfig.warmup_steps={self.warmup_steps}: must be >= 0")
        _check(self.decay in ("cosine", "linear", "none"), f"TrainerConfig.decay={self.decay!r}: use cosine, linear or none")
        _check(0 <= self.decay_start <= 1, f"TrainerConfig.decay_start={self.decay_start}: must be in [0, 1]")
        _check(0 <= self.min_lr_ratio <= 1, f"TrainerConfig.min_lr_ratio={self.min_lr_ratio}: must be in [0, 1]")
        _check(self.grad_clip >= 0, f"TrainerConfig.grad_clip={self.grad_clip}: must be >= 0")
        _check(self.autocast in ("auto", "bf16", "none"), f"TrainerConfig.autocast={self.autocast!r}: use auto, bf16 or none")
        _check(self.checkpoint_every >= 0, f"TrainerConfig.checkpoint_every={self.checkpoint_every}: must be >= 0")
        _check(self.log_every > 0, f"TrainerConfig.log_every={self.log_every}: must be > 0")
        _check(self.threads is None or self.threads > 0, f"TrainerConfig.threads={self.threads}: must be > 0")
        _check(self.prefetch >= 0, f"TrainerConfig.prefetch={self.prefetch}: must be >= 0")
        unknown = set(self.trackers) - {"tensorboard", "wandb"}
        _check(not unknown, f"TrainerConfig.trackers has unknown {sorted(unknown)}: use tensorboard or wandb")
        self.trackers = list(self.trackers)
