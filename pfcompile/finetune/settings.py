"""Fine-tuning settings: a frozen dataclass, validated on construction. Kept free of
torch so that the CLI can show its defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from pfcompile.errors import ConfigError

__all__ = ["FinetuneSettings"]


@dataclass(frozen=True)
class FinetuneSettings:
    """How to fine-tune. ``alpha`` weighs the distillation term (0 = labels only,
    1 = teacher only); ``temperature`` softens both distributions.

    The defaults are the recipe measured in ``tools/bench_finetune.py``: SGD with
    the gradient norm clipped to 1 (a freshly pruned or quantized student has
    logits far from the teacher's, and the unclipped ``T^2``-scaled distillation
    gradient can diverge), cosine learning-rate decay, ``alpha=0.5``, ``T=4``."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.02
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, nesterov) | "adam"
    weight_decay: float = 0.0
    alpha: float = 0.5
    temperature: float = 4.0
    max_grad_norm: float = 1.0  # clip the gradient's global norm to this (0 = no clipping)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"finetune epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"finetune batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"finetune lr must be > 0, got {self.lr}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"finetune optimizer must be 'adam' or 'sgd', got '{self.optimizer}'")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"finetune alpha must be in [0, 1], got {self.alpha}")
        if not self.temperature > 0:
            raise ConfigError(f"finetune temperature must be > 0, got {self.temperature}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"finetune max_grad_norm must be >= 0, got {self.max_grad_norm}")
        if self.weight_decay < 0:
            raise ConfigError(f"finetune weight_decay must be >= 0, got {self.weight_decay}")
