"""Tensor types of the IR: a static shape and a dtype, printed as `f32[64,10]`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# IR dtype name <-> numpy dtype. Only these flow through graphs.
DTYPES = {"f32": np.dtype(np.float32), "f64": np.dtype(np.float64), "i64": np.dtype(np.int64),
          "bool": np.dtype(np.bool_)}  # bool: what comparisons give and `where` takes
FLOAT_DTYPES = ("f32", "f64")
_BY_NUMPY = {v: k for k, v in DTYPES.items()}


def dtype_name(dtype) -> str:
    """The IR name of a numpy dtype, or raise naming what graphc supports."""
    from .errors import ShapeError

    d = np.dtype(dtype)
    if d not in _BY_NUMPY:
        raise ShapeError(f"unsupported dtype {d}: graphc supports {', '.join(str(v) for v in DTYPES.values())}")
    return _BY_NUMPY[d]


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: str = "f32"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {list(DTYPES)}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.size * DTYPES[self.dtype].itemsize

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def with_shape(self, shape) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)

    @staticmethod
    def of(array) -> "TensorType":
        a = np.asarray(array)
        return TensorType(a.shape, dtype_name(a.dtype))

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(s) for s in self.shape)}]"
