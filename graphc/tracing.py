"""Tracing: run `forward` once on proxy values and record one IR node per operation.

Every operation the front end offers goes through `dispatch(op, inputs, attrs)`: on proxies it
emits a node (with the user's file:line), on numpy arrays it runs the op's reference kernel
eagerly. Both paths check the op's shape rule, so eager and traced errors read the same.
"""
from __future__ import annotations

import contextvars
import inspect
import linecache
import os
import re
import sys
from typing import Any, Sequence

import numpy as np

from .ir import GraphBuilder, GraphcError, Graph, ShapeError, TensorType, dtype_name, get_op
from .ir.graph import Output

_GRAPHC_DIR = os.path.dirname(os.path.abspath(__file__))
_NUMPY_DIR = os.path.dirname(os.path.abspath(np.__file__))
_active: contextvars.ContextVar["Tracer | None"] = contextvars.ContextVar("graphc_tracer", default=None)
# How many Module.__call__s deep an eager forward is (0: user code outside any forward).
_eager_depth: contextvars.ContextVar[int] = contextvars.ContextVar("graphc_eager_depth", default=0)


class TraceError(GraphcError):
    """Tracing failed; the message names the operation, the shapes and the user's file:line."""


# ------------------------------------------------------------------ source locations


def user_frame():
    """The innermost stack frame outside graphc and numpy: the user's line."""
    f = sys._getframe(1)
    while f is not None:
        path = os.path.abspath(f.f_code.co_filename)
        if not (path.startswith(_GRAPHC_DIR + os.sep) or path.startswith(_NUMPY_DIR + os.sep)):
            return f
        f = f.f_back
    return None


def user_location(full: bool = False) -> str | None:
    f = user_frame()
    if f is None:
        return None
    path = f.f_code.co_filename
    return f"{path if full else os.path.basename(path)}:{f.f_lineno}"


def _where() -> str:
    f = user_frame()
    if f is None:
        return ""
    code = linecache.getline(f.f_code.co_filename, f.f_lineno).strip()
    return f"\n  at {f.f_code.co_filename}:{f.f_lineno}" + (f"\n    {code}" if code else "")


def trace_error(msg: str) -> TraceError:
    return TraceError(msg + _where())


# ------------------------------------------------------------------ the tracer


class Tracer:
    def __init__(self, name: str):
        self.builder = GraphBuilder(name)
        self.params: dict[int, Proxy] = {}  # id(Parameter) -> its graph input
        self._seed: Proxy | None = None
        self._streams = 0

    def input(self, name: str, type: TensorType, kind: str) -> "Proxy":
        return Proxy(self, self.builder.add_input(name, type, kind), type)

    def seed(self) -> "Proxy":
        """The step's random seed (an `rng` input), created on first use by a Dropout."""
        if self._seed is None:
            name, k = "seed", 0
            while name in self.builder.types:  # a forward argument or parameter already named seed
                k += 1
                name = f"seed{k}"
            self._seed = self.input(name, TensorType((), "i64"), "rng")
        return self._seed

    def next_stream(self) -> int:
        self._streams += 1
        return self._streams - 1

    def emit(self, op: str, inputs: list["Proxy"], attrs: dict) -> Any:
        try:
            out = self.builder.emit(op, [p.name for p in inputs], attrs, loc=user_location())
        except ShapeError as e:
            raise trace_error(str(e)) from None
        outs = out if isinstance(out, tuple) else (out,)
        proxies = tuple(Proxy(self, o, self.builder.types[o]) for o in outs)
        return proxies if isinstance(out, tuple) else proxies[0]


def current_tracer() -> Tracer | None:
    return _active.get()


# ------------------------------------------------------------------ dispatch


def _is_scalar(v) -> bool:
    return isinstance(v, (bool, int, float, np.number)) and not isinstance(v, np.ndarray)


def _scalar_value(v, like: TensorType) -> float:
    """A Python scalar as a constant of `like`'s dtype (graphc does not promote; it never truncates)."""
    value = float(v)
    if not like.is_float and value != int(value):
        raise trace_error(f"the scalar {v!r} cannot join an integer tensor ({like}) without truncation; "
                          "convert one side to float first")
    return value


def _as_proxy(tracer: Tracer, v, like: "Proxy | None"):
    if isinstance(v, Proxy):
        if v.tracer is not tracer:
            raise trace_error("a traced value from another trace was used; values cannot cross traces")
        return v
    if id(v) in tracer.params:
        return tracer.params[id(v)]
    if _is_scalar(v) and like is not None:
        return tracer.emit("full", [], {"shape": (), "value": _scalar_value(v, like.type), "dtype": like.type.dtype})
    if isinstance(v, np.ndarray):
        raise trace_error(f"a numpy array {v.dtype}{list(v.shape)} that is not a registered Parameter was used "
                          "inside a traced forward; register it as an nn.Parameter or pass it as an input")
    raise trace_error(f"unsupported operand of type {type(v).__name__} in a traced forward")


def dispatch(op: str, inputs: Sequence[Any], attrs: dict | None = None):
    """Apply op: emit a node when any input is traced (or a trace is active), else run eagerly."""
    attrs = attrs or {}
    tracer = next((v.tracer for v in inputs if isinstance(v, Proxy)), None) or current_tracer()
    if tracer is not None:
        like = next((v for v in inputs if isinstance(v, Proxy)), None)
        if like is None:
            like = next((tracer.params[id(v)] for v in inputs if id(v) in tracer.params), None)
        return tracer.emit(op, [_as_proxy(tracer, v, like) for v in inputs], attrs)
    return eager(op, inputs, attrs)


def eager(op: str, inputs: Sequence[Any], attrs: dict):
    """Run one op on numpy arrays with its reference kernel, after its shape rule."""
    like = next((np.asarray(v) for v in inputs if isinstance(v, np.ndarray)), None)
    opdef = get_op(op)
    try:
        arrays = []
        for v in inputs:
            if _is_scalar(v):
                like_type = TensorType(like.shape, dtype_name(like.dtype)) if like is not None else TensorType(())
                v = np.asarray(_scalar_value(v, like_type), dtype=like_type.np_dtype)
            arrays.append(np.ndarray.view(np.asarray(v), np.ndarray))
        full = opdef.normalize_attrs(attrs)
        opdef.infer_types([TensorType(a.shape, dtype_name(a.dtype)) for a in arrays], full)
    except ShapeError as e:
        raise trace_error(str(e)) from None
    res = opdef.reference(*arrays, **full)
    # Inside a Module's eager forward values stay EagerArrays (torch-style methods keep working).
    return _wrap_eager(res) if _eager_depth.get() or any(isinstance(v, EagerArray) for v in inputs) else res


# ------------------------------------------------------------------ tensor methods (traced and eager)


class TensorMethods:
    """PyTorch's tensor methods and operators, shared by Proxy (traced) and EagerArray (eager).

    Every one goes through `dispatch`, so the eager and traced paths apply the same op rule and
    raise the same errors (graphc never promotes dtypes silently, numpy would)."""

    __slots__ = ()

    # arithmetic (numpy broadcasting, Python scalars become constants of the same dtype)
    def __add__(self, o): return dispatch("add", [self, o])
    def __radd__(self, o): return dispatch("add", [o, self])
    def __sub__(self, o): return dispatch("sub", [self, o])
    def __rsub__(self, o): return dispatch("sub", [o, self])
    def __mul__(self, o): return dispatch("mul", [self, o])
    def __rmul__(self, o): return dispatch("mul", [o, self])
    def __truediv__(self, o): return dispatch("div", [self, o])
    def __rtruediv__(self, o): return dispatch("div", [o, self])
    def __matmul__(self, o): return dispatch("matmul", [self, o])
    def __rmatmul__(self, o): return dispatch("matmul", [o, self])
    def __neg__(self): return dispatch("neg", [self])
    def __pos__(self): return self

    @property
    def T(self):
        return transpose(self)

    def reshape(self, *shape, order="C"):
        if order != "C":
            raise trace_error(f"reshape: only order='C' is supported, got {order!r}")
        return reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    def view(self, *shape):
        return self.reshape(*shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        return flatten(self, start_dim, end_dim)

    # `axis`/`keepdims` are numpy's spellings: numpy's own functions (np.sum(a)) call these methods.
    def sum(self, dim=None, keepdim: bool = False, *, axis=None, keepdims=None, dtype=None, out=None):
        return reduce("sum", self, _pick_dim(dim, axis), keepdim if keepdims is None else keepdims, dtype, out)

    def mean(self, dim=None, keepdim: bool = False, *, axis=None, keepdims=None, dtype=None, out=None):
        return reduce("mean", self, _pick_dim(dim, axis), keepdim if keepdims is None else keepdims, dtype, out)

    def exp(self): return dispatch("exp", [self])
    def log(self): return dispatch("log", [self])
    def relu(self): return dispatch("relu", [self])
    def sigmoid(self): return dispatch("sigmoid", [self])
    def tanh(self): return dispatch("tanh", [self])

    # numpy ufuncs that are graphc ops go through dispatch; np.add(x, 1) == x + 1
    _UFUNCS = {"add": "add", "subtract": "sub", "multiply": "mul", "true_divide": "div", "divide": "div",
               "matmul": "matmul", "negative": "neg", "exp": "exp", "log": "log", "tanh": "tanh"}


def _pick_dim(dim, axis):
    """torch's dim=() reduces every dim; numpy's axis=() reduces none (numpy's own functions pass axis)."""
    if dim is not None and axis is not None:
        raise trace_error("give either dim or axis, not both")
    if axis is not None:
        return axis
    return None if isinstance(dim, (tuple, list)) and not dim else dim


class EagerArray(TensorMethods, np.ndarray):
    """What `forward` sees in eager mode: a numpy array with PyTorch's tensor methods.

    Module.__call__ wraps numpy inputs in it and unwraps the results, so users get plain
    ndarrays back while `x.sum(dim=1, keepdim=True)` works the same eagerly and traced."""

    __array_priority__ = 100  # above Parameter's, so mixed results stay EagerArray

    def view(self, *args, **kwargs):
        # torch's view(shape) vs numpy's view(dtype/type), which numpy itself relies on
        if kwargs or (len(args) == 1 and not isinstance(args[0], (int, tuple, list))):
            return np.ndarray.view(self, *args, **kwargs)
        return self.reshape(*args)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        op = self._UFUNCS.get(ufunc.__name__)
        if op is not None and method == "__call__" and not kwargs and ufunc.nin == len(inputs):
            return dispatch(op, list(inputs))
        # Not a graphc op: plain numpy semantics (eager mode is more permissive than tracing).
        plain = [from_eager(v) for v in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(from_eager(v) for v in kwargs["out"])
        res = getattr(ufunc, method)(*plain, **kwargs)
        return _wrap_eager(res)


def _wrap_eager(res):
    if isinstance(res, tuple):
        return tuple(_wrap_eager(r) for r in res)
    return np.ndarray.view(res, EagerArray) if type(res) is np.ndarray else res


def to_eager(v):
    """A numpy array as an EagerArray view (other values unchanged)."""
    return np.ndarray.view(v, EagerArray) if isinstance(v, np.ndarray) and not isinstance(v, EagerArray) else v


def from_eager(v):
    """Undo to_eager on a result (recursing into tuples, lists and dicts)."""
    if isinstance(v, EagerArray):
        return np.ndarray.view(v, np.ndarray)
    if isinstance(v, (tuple, list)):
        return type(v)(from_eager(x) for x in v)
    if isinstance(v, dict):
        return {k: from_eager(x) for k, x in v.items()}
    return v


def eager_forward(forward, args, kwargs):
    """Run a Module's forward eagerly: it sees EagerArrays (numpy with torch's tensor methods, its
    parameters included); the outermost call hands plain ndarrays back."""
    depth = _eager_depth.get()
    token = _eager_depth.set(depth + 1)
    try:
        out = forward(*map(to_eager, args), **{k: to_eager(v) for k, v in kwargs.items()})
    finally:
        _eager_depth.reset(token)
    return from_eager(out) if depth == 0 else out


def in_eager_forward() -> bool:
    return _eager_depth.get() > 0


# ------------------------------------------------------------------ traced values


class Proxy(TensorMethods):
    """What `forward` sees instead of an array while tracing: a named, typed IR value."""

    __slots__ = ("tracer", "name", "type")
    __array_priority__ = 1000

    def __init__(self, tracer: Tracer, name: str, type: TensorType):
        self.tracer, self.name, self.type = tracer, name, type

    shape = property(lambda self: self.type.shape)
    ndim = property(lambda self: self.type.rank)
    dtype = property(lambda self: self.type.np_dtype)

    def size(self, dim: int | None = None):
        return self.type.shape if dim is None else self.type.shape[dim]

    def dim(self) -> int:
        return self.type.rank

    def __repr__(self):
        return f"<traced %{self.name}: {self.type}>"

    # what tracing cannot see: values only exist when the compiled graph runs
    def _data_dependent(self, what: str):
        raise trace_error(f"data-dependent Python control flow: {what} of traced value %{self.name} ({self.type}) "
                          "is not known while tracing; keep Python `if`/`while`/`int()` on shapes and module "
                          "attributes, not on tensor values")

    def __bool__(self): self._data_dependent("the truth value (bool)")
    def __float__(self): self._data_dependent("float()")
    def __int__(self): self._data_dependent("int()")
    def __index__(self): self._data_dependent("use as an index")
    def __len__(self): return self.type.shape[0] if self.type.rank else self._data_dependent("len()")
    def item(self): self._data_dependent(".item()")
    def tolist(self): self._data_dependent(".tolist()")
    def numpy(self): self._data_dependent(".numpy()")
    def __iter__(self): self._data_dependent("iteration")
    def __lt__(self, o): self._data_dependent("comparison <")
    def __le__(self, o): self._data_dependent("comparison <=")
    def __gt__(self, o): self._data_dependent("comparison >")
    def __ge__(self, o): self._data_dependent("comparison >=")
    def __eq__(self, o): self._data_dependent("comparison ==")
    def __ne__(self, o): self._data_dependent("comparison !=")
    __hash__ = object.__hash__  # still usable as a dict key (by identity)

    def __getitem__(self, k):
        raise trace_error(f"indexing a traced value (%{self.name}[{k!r}], {self.type}) is not supported yet")

    def __array__(self, *a, **k):
        raise trace_error(f"traced value %{self.name} ({self.type}) was converted to a numpy array; "
                          "inside forward use graphc.nn.functional and tensor methods, not numpy")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        op = self._UFUNCS.get(ufunc.__name__)
        if op is None or method != "__call__" or kwargs:
            raise trace_error(f"numpy function np.{ufunc.__name__} is not supported on traced value %{self.name} "
                              f"({self.type}); supported: {', '.join('np.' + k for k in sorted(self._UFUNCS))}, "
                              "or use graphc.nn.functional")
        return dispatch(op, list(inputs))

    def __array_function__(self, func, types, args, kwargs):
        raise trace_error(f"numpy function np.{func.__name__} is not supported on traced value %{self.name} "
                          f"({self.type}); use graphc.nn.functional or tensor methods instead")


# ------------------------------------------------------------------ shape-level helpers (eager and traced)


def _shape(x) -> tuple[int, ...]:
    return tuple(x.shape) if isinstance(x, Proxy) else np.shape(x)


def _norm_dim(d: int, rank: int, what: str = "dim") -> int:
    if not -rank <= d < max(rank, 1):
        raise trace_error(f"{what} {d} is out of range for a tensor of rank {rank}")
    return d % rank if rank else 0


def transpose(x):
    return dispatch("transpose", [x], {"perm": tuple(reversed(range(len(_shape(x)))))})


def reshape(x, shape):
    shape = list(int(s) for s in shape)
    size = int(np.prod(_shape(x), dtype=np.int64))
    if shape.count(-1) > 1:
        raise trace_error(f"reshape: only one dimension can be -1, got {shape}")
    if -1 in shape:
        rest = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
        if rest == 0 or size % rest:
            raise trace_error(f"reshape: cannot reshape {list(_shape(x))} ({size} elements) to {shape}")
        shape[shape.index(-1)] = size // rest
    return dispatch("reshape", [x], {"shape": tuple(shape)})


def flatten(x, start_dim: int = 0, end_dim: int = -1):
    s = _shape(x)
    if not s:
        return reshape(x, (1,))
    a, b = _norm_dim(start_dim, len(s), "start_dim"), _norm_dim(end_dim, len(s), "end_dim")
    return reshape(x, s[:a] + (int(np.prod(s[a:b + 1], dtype=np.int64)),) + s[b + 1:])


def reduce(op: str, x, dim=None, keepdim: bool = False, dtype=None, out=None):
    if out is not None or (dtype is not None and np.dtype(dtype) != np.dtype(x.dtype)):
        raise trace_error(f"{op}: the dtype= and out= arguments are not supported (got dtype={dtype}, out={type(out).__name__})")
    rank = len(_shape(x))
    if dim is None:
        dims = tuple(range(rank))
    else:
        dims = tuple(sorted({_norm_dim(int(d), rank) for d in ((dim,) if isinstance(dim, (int, np.integer)) else dim)}))
        dims = dims if rank else ()  # dim 0 / -1 of a 0-d tensor: nothing to reduce, as in torch
    return dispatch(op, [x], {"dims": dims, "keepdim": bool(keepdim)})


# ------------------------------------------------------------------ trace()


def trace(model, *example_inputs, name: str | None = None) -> Graph:
    """Trace `model.forward` on example inputs into a verified graphc.ir.Graph.

    Example inputs are numpy arrays (or TensorTypes); only their shapes and dtypes matter.
    Parameters become `param` inputs named as in `model.state_dict()`.
    """
    name = name or type(model).__name__
    if not re.fullmatch(r"[\w.<>-]+", name):
        raise TraceError(f"graph name {name!r} must be letters, digits, _ . < > - (it is printed in the IR text)")
    tracer = Tracer(name)
    params = list(model.named_parameters())
    taken = {pname for pname, _ in params}
    try:
        arg_names = [p.name for p in inspect.signature(model.forward).parameters.values()
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        arg_names = []
    proxies = []
    for k, ex in enumerate(example_inputs):
        if isinstance(ex, TensorType):
            t = ex
        else:
            a = np.asarray(ex)
            try:
                t = TensorType(a.shape, dtype_name(a.dtype))
            except ShapeError as e:
                raise TraceError(f"example input {k}: {e}") from None
        arg = arg_names[k] if k < len(arg_names) and arg_names[k].isidentifier() else f"input{k}"
        while arg in taken:  # parameters keep their state_dict names; the argument yields
            arg += "_"
        taken.add(arg)
        proxies.append(tracer.input(arg, t, "input"))
    for pname, p in params:
        tracer.params[id(p)] = tracer.input(pname, TensorType(p.shape, dtype_name(p.dtype)), "param")

    token = _active.set(tracer)
    try:
        result = model(*proxies)
    finally:
        _active.reset(token)

    outs = result if isinstance(result, (tuple, list)) else (result,)
    for k, o in enumerate(outs):
        if not isinstance(o, Proxy):
            raise TraceError(f"{name}.forward must return traced values computed from its inputs; output {k} is {type(o).__name__}")
    graph = tracer.builder.build([Output(o.name) for o in outs], meta={"training": bool(getattr(model, "training", False))})
    return graph.verify()
