"""graphc.nn.utils: torch.nn.utils' gradient clipping, eagerly on the Parameters' .grad arrays."""
from __future__ import annotations

import math

import numpy as np

from ..ir import GraphcError


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach=None) -> float:
    """Scale every .grad in place so their joint norm is at most max_norm; returns the norm before
    clipping (a Python float; torch returns a 0-d tensor). Same formula as torch:
    grads *= min(1, max_norm / (total_norm + 1e-6)), total_norm over all grads together."""
    params = [parameters] if isinstance(parameters, np.ndarray) else list(parameters)
    grads = [p.grad for p in params if getattr(p, "grad", None) is not None]
    if not grads:
        return 0.0
    norm_type = float(norm_type)
    if norm_type == math.inf:
        total = max(float(np.max(np.abs(g))) if g.size else 0.0 for g in grads)
    elif norm_type == 2.0:  # (the usual case: sums of squares in float64, no powers)
        # einsum, not np.dot: a BLAS dot wakes numpy's own OpenBLAS thread pool, whose spinning
        # workers then compete with the plans' BLAS threads (the GPT step took 29 ms, not 17, on 2 cores)
        total = math.sqrt(sum(float(np.einsum("i,i->", v, v)) for v in (g.astype(np.float64).ravel() for g in grads)))
    else:
        total = float(sum(float(np.sum(np.abs(g.astype(np.float64)) ** norm_type)) for g in grads) ** (1.0 / norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise GraphcError(f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is non-finite ({total})")
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= g.dtype.type(coef)
    return total
