"""Parameter: a float ndarray that a Module registers and optimizers update in place."""
from __future__ import annotations

import numpy as np

from .. import eager as _eager
from ..tracing import ArrayMethods, _before_write


class Parameter(ArrayMethods, np.ndarray):
    """A float32 (default) or float64 ndarray with `.grad` (None until a backward computes it)
    and torch's tensor methods (the table graphc.Tensor and traced values share).

    Updates happen in place (`p[...] = ...`, `p -= lr * p.grad`, `p.data = ...`), so compiled
    plans, optimizers and the module all see one array. Operations on a Parameter that requires
    grad are recorded for autograd (their results are lazy graphc.Tensors); inside a traced
    forward a Parameter reads as its graph input, however it was reached (`self.parameters()`
    too), so it gets a gradient.
    """

    __array_priority__ = 150

    def __new__(cls, data=None, requires_grad: bool = True, dtype=None):
        if data is None:
            data = np.empty((0,), np.float32)
        if hasattr(data, "_materialize"):
            data = data._materialize()
        elif hasattr(data, "detach") and hasattr(data, "numpy"):
            data = data.detach().cpu().numpy()
        if isinstance(requires_grad, (type, np.dtype)) or isinstance(requires_grad, str):
            requires_grad, dtype = True, requires_grad  # the old Parameter(data, dtype) order
        a = np.array(data, dtype=dtype if dtype is not None else (np.float32 if np.asarray(data).dtype.kind != "f" else None))
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(f"Parameter must be float32 or float64, got {a.dtype}")
        obj = np.ascontiguousarray(a).view(cls)
        obj.grad = None
        obj.requires_grad = bool(requires_grad)
        return obj

    def __array_finalize__(self, obj):
        # arrays numpy derives from a parameter (copies, views, np.ones_like) are not parameters
        # of the model: they do not require grad (deepcopy and pickling keep the flag below)
        self.grad = None
        self.requires_grad = False

    def __setattr__(self, name, value):
        # switching requires_grad on a model's Parameter changes what compiled plans differentiate
        # and update: compiled objects re-check their specialisation (numpy's derived arrays, which
        # set the flag for the first time in __array_finalize__, are not counted)
        if name == "requires_grad" and "requires_grad" in self.__dict__ and bool(value) != self.__dict__["requires_grad"]:
            from .module import _structure_changed

            _structure_changed()
        super().__setattr__(name, value)

    def __deepcopy__(self, memo):
        p = Parameter(np.array(self.view(np.ndarray)), self.requires_grad, self.dtype)
        memo[id(self)] = p
        return p

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        if arr is self:  # in place (`p -= lr * p.grad`): p stays the Parameter
            return self
        # Arithmetic on parameters gives plain arrays, not new "parameters".
        arr = np.asarray(arr).view(np.ndarray)
        return arr[()] if return_scalar else arr

    def __setitem__(self, key, value):
        _before_write((self,))
        if hasattr(value, "_materialize"):
            value = value._materialize()
        np.ndarray.__setitem__(self, key, value)

    def __reduce__(self):  # pickling/copying keeps it a plain-data Parameter
        return (Parameter, (np.asarray(self).copy(), self.requires_grad, self.dtype))

    def __repr__(self):
        return "Parameter containing:\n" + repr(np.asarray(self).view(np.ndarray))

    is_leaf = property(lambda self: True)

    @property
    def grad(self):
        """The accumulated gradient (None until a backward computes one), as in torch."""
        if _eager._pending is not None:
            _eager.flush_pending()
        g = self.__dict__.get("_grad")
        if type(g) is _eager.DeferredGrad:  # a joined step's gradient, computed on first read
            g = self.__dict__["_grad"] = g.value()
        return g

    @grad.setter
    def grad(self, value):
        if _eager._pending is not None:
            _eager.flush_pending()
        self.__dict__["_grad"] = value
    grad_fn = property(lambda self: None)

    def requires_grad_(self, requires_grad: bool = True) -> "Parameter":
        self.requires_grad = bool(requires_grad)
        return self

    def detach(self):
        """The values without autograd, sharing memory (a graphc.Tensor)."""
        from ..eager import Tensor

        return Tensor._from(self.view(np.ndarray))

    def detach_(self):
        self.requires_grad = False
        return self

    def clone(self):
        from ..eager import Tensor

        return self * 1.0 if self.requires_grad else Tensor._from(np.array(self.view(np.ndarray)))

    # in place, as torch does them under no_grad (compiled plans and optimizers see the change)
    def copy_(self, src):
        self[...] = src
        return self

    def fill_(self, value):
        self[...] = value
        return self

    def zero_(self):
        return self.fill_(0)

    def numpy(self, force: bool = False) -> np.ndarray:
        return self.view(np.ndarray)

    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        raise TypeError("backward() on a Parameter: it is a leaf; call backward() on a loss computed from it")

    @property
    def data(self) -> np.ndarray:
        """The values as a plain ndarray sharing this parameter's memory (torch's .data: no autograd;
        `p.data -= lr * g` and `p.data = values` update the parameter in place)."""
        return self.view(np.ndarray)

    @data.setter
    def data(self, value):
        if hasattr(value, "_materialize"):
            value = value._materialize()
        value = np.asarray(value)
        if value.shape != self.shape:
            raise ValueError(f"Parameter.data = ...: expected shape {list(self.shape)}, got {list(value.shape)} "
                             "(graphc parameters keep their shape; build a new Parameter to change it)")
        if not np.shares_memory(value, self) or value.ctypes.data != self.ctypes.data:
            self[...] = value
