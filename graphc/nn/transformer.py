"""The transformer layers of graphc.nn (issue 11), with PyTorch's names, signatures, parameter
layouts and initialisation: Embedding, LayerNorm, GELU, SiLU. Their math is in transformer_functional.py."""
from __future__ import annotations

import numpy as np

from .. import random as _random
from . import functional as F
from .module import Module
from .parameter import Parameter


class Embedding(Module):
    """A lookup table: weight [num_embeddings, embedding_dim] ~ N(0, 1) (torch's init), the row
    at padding_idx zeroed."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None, max_norm=None, norm_type=2.0,
                 scale_grad_by_freq=False, sparse=False, _weight=None, _freeze=False, dtype=np.float32):
        super().__init__()
        if max_norm is not None or scale_grad_by_freq or sparse:
            raise ValueError("Embedding: max_norm, scale_grad_by_freq and sparse are not supported by graphc")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding: padding_idx {padding_idx} must be within num_embeddings={num_embeddings}")
            padding_idx %= num_embeddings
        self.padding_idx = padding_idx
        w = _random.generator().standard_normal((num_embeddings, embedding_dim)) if _weight is None else np.asarray(_weight)
        self.weight = Parameter(w, dtype=dtype, requires_grad=not _freeze)
        if padding_idx is not None and _weight is None:
            self.weight.data[padding_idx] = 0

    def forward(self, input):
        return F.embedding(input, self.weight, self.padding_idx, _layer=f"Embedding({self.extra_repr()})")

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}" + (f", padding_idx={self.padding_idx}"
                                                                  if self.padding_idx is not None else "")


class LayerNorm(Module):
    """Normalise over the last dims; weight = 1 and bias = 0 of normalized_shape (torch's init)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 dtype=np.float32):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
        self.normalized_shape, self.eps, self.elementwise_affine = tuple(int(s) for s in shape), eps, elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape), dtype=dtype)
            if bias:
                self.bias = Parameter(np.zeros(self.normalized_shape), dtype=dtype)
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, input):
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GELU(Module):
    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, input):
        return F.gelu(input, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, input):
        return F.silu(input)
