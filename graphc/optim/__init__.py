"""graphc.optim: torch.optim's SGD, Adam and AdamW with parameter groups, and lr_scheduler.

The optimizers run eagerly on numpy Parameters (`opt.step()`), and a compiled train step runs
the same updates inside its plan, reading each group's hyperparameters at every call.
"""
from . import lr_scheduler
from .optimizer import SGD, Adam, AdamW, Optimizer, OptimizerError

__all__ = ["Optimizer", "OptimizerError", "SGD", "Adam", "AdamW", "lr_scheduler"]
