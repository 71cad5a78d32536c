"""Parameter: a float ndarray that a Module registers and optimizers update in place."""
from __future__ import annotations

import numpy as np


class Parameter(np.ndarray):
    """A float32 (default) or float64 ndarray with `.grad` (None until a backward computes it).

    Updates happen in place (`p[...] = ...`), so compiled plans, optimizers and the module
    all see one array. Results of arithmetic on a Parameter are plain ndarrays.
    """

    def __new__(cls, data, dtype=None, requires_grad: bool = True):
        a = np.array(data, dtype=dtype if dtype is not None else (np.float32 if np.asarray(data).dtype.kind != "f" else None))
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(f"Parameter must be float32 or float64, got {a.dtype}")
        obj = np.ascontiguousarray(a).view(cls)
        obj.grad = None
        obj.requires_grad = requires_grad
        return obj

    def __array_finalize__(self, obj):
        self.grad = None
        self.requires_grad = getattr(obj, "requires_grad", True)

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        if arr is self:  # in place (`p -= lr * p.grad`): p stays the Parameter
            return self
        # Arithmetic on parameters gives plain arrays, not new "parameters".
        arr = np.asarray(arr).view(np.ndarray)
        return arr[()] if return_scalar else arr

    def __reduce__(self):  # pickling/copying keeps it a plain-data Parameter
        return (Parameter, (np.asarray(self).copy(), self.dtype, self.requires_grad))

    def __repr__(self):
        return "Parameter containing:\n" + repr(np.asarray(self).view(np.ndarray))

    @property
    def data(self) -> np.ndarray:
        """The values as a plain ndarray sharing this parameter's memory."""
        return self.view(np.ndarray)
