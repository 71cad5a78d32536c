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


_internal: dict[str, bool] = {}  # code file name -> inside graphc or numpy (eager recording asks per op)


def _is_internal(filename: str) -> bool:
    hit = _internal.get(filename)
    if hit is None:
        path = os.path.abspath(filename)
        hit = _internal[filename] = path.startswith(_GRAPHC_DIR + os.sep) or path.startswith(_NUMPY_DIR + os.sep)
    return hit


# While forward replays a graph captured elsewhere (graphc.interop.from_torch), the user's line
# is the captured node's (path, line), not a frame of graphc's replay loop.
_source: contextvars.ContextVar["tuple[str, int] | None"] = contextvars.ContextVar("graphc_source", default=None)


class source_line:
    """`with source_line(path, line):` nodes emitted inside carry that location, errors show it."""

    def __init__(self, path: str | None, line: int | None):
        self.where = (path, int(line)) if path and line else None

    def __enter__(self):
        self._token = _source.set(self.where) if self.where else None

    def __exit__(self, *exc):
        if self._token is not None:
            _source.reset(self._token)


def user_frame():
    """The innermost stack frame outside graphc and numpy: the user's line."""
    f = sys._getframe(1)
    while f is not None:
        if not _is_internal(f.f_code.co_filename):
            return f
        f = f.f_back
    return None


def user_location(full: bool = False) -> str | None:
    if (src := _source.get()) is not None:
        return f"{src[0] if full else os.path.basename(src[0])}:{src[1]}"
    f = user_frame()
    if f is None:
        return None
    path = f.f_code.co_filename
    return f"{path if full else os.path.basename(path)}:{f.f_lineno}"


def _where() -> str:
    if (src := _source.get()) is not None:
        path, line = src
    else:
        f = user_frame()
        if f is None:
            return ""
        path, line = f.f_code.co_filename, f.f_lineno
    code = linecache.getline(path, line).strip()
    return f"\n  at {path}:{line}" + (f"\n    {code}" if code else "")


def trace_error(msg: str) -> TraceError:
    return TraceError(msg + _where())


# ------------------------------------------------------------------ the tracer


class Tracer:
    def __init__(self, name: str):
        self.builder = GraphBuilder(name)
        self.params: dict[int, Proxy] = {}  # id(Parameter) -> its graph input
        self.buffers: dict[int, Proxy] = {}  # id(module buffer) -> its graph input (kind "buffer")
        self.buffer_updates: dict[str, Proxy] = {}  # buffer input name -> its new value ("update:" output)
        self._seed: Proxy | None = None
        self._streams = 0
        # (input name, num_embeddings, layer, source line) for each Embedding reading a graph input:
        # a compiled forward whose index_select stops on a bad id explains it from these (graph meta "id_checks")
        self.id_checks: list[tuple[str, int, str, str | None]] = []

    def check_ids(self, ids: "Proxy", n: int, layer: str) -> None:
        if any(i.name == ids.name and i.kind == "input" for i in self.builder.inputs):
            self.id_checks.append((ids.name, n, layer, user_location()))

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

    def update_buffer(self, buf: "Proxy", value: "Proxy") -> None:
        """Record `buf <- value` (the graph returns it as "update:<buffer>"; the runtime writes it back)."""
        inp = next((i for i in self.builder.inputs if i.name == buf.name), None)
        if inp is None or inp.kind != "buffer":
            raise trace_error(f"only module buffers can be updated in a traced forward, not %{buf.name}")
        if value.type != inp.type:
            raise trace_error(f"buffer {buf.name} is {inp.type}; its new value is {value.type}")
        self.buffer_updates[buf.name] = value

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
    if isinstance(v, np.ndarray) or hasattr(v, "_materialize"):
        what = "numpy array" if isinstance(v, np.ndarray) else type(v).__name__
        raise trace_error(f"a {what} {v.dtype}{list(v.shape)} that is not a registered Parameter was used "
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
    return _tensor.eager_op(op, inputs, attrs)


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


def _has(op: str) -> bool:
    """Whether the op table has `op` (compositions use a primitive once it exists)."""
    from .ir.opdef import OPS

    return op in OPS


class TensorMethods:
    """THE method table: PyTorch's tensor methods and operators, shared by graphc.Tensor (eager),
    Proxy (traced), Parameter and the arrays an eager forward sees. Adding a method is one entry here.

    Every entry goes through `dispatch` (or is a composition of entries that do), so the eager and
    traced paths apply the same op rule and raise the same errors (graphc never promotes dtypes
    silently, numpy would). The few things only a concrete value can do (`.item()`, `argmax` while
    no op computes it) ask the class for `self._concrete(what)`, which a traced value refuses with
    a clear error."""

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
    def __matmul__(self, o): return matmul(self, o)
    def __rmatmul__(self, o): return matmul(o, self)
    def __neg__(self): return dispatch("neg", [self])
    def __pos__(self): return self
    def __pow__(self, e): return power(self, e)
    def __rpow__(self, b): return dispatch("exp", [self * float(np.log(b))]) if _is_scalar(b) else power(b, self)
    def __abs__(self): return self.abs()

    # comparisons give booleans: eager values (no IR op takes them yet), refused while tracing
    def __lt__(self, o): return compare(self, o, "lt")
    def __le__(self, o): return compare(self, o, "le")
    def __gt__(self, o): return compare(self, o, "gt")
    def __ge__(self, o): return compare(self, o, "ge")
    def __eq__(self, o): return compare(self, o, "eq")
    def __ne__(self, o): return compare(self, o, "ne")
    __hash__ = object.__hash__  # still usable as a dict key (by identity)

    def __getitem__(self, k): return index(self, k)

    def add(self, o, alpha=1): return self + (o * alpha if alpha != 1 else o)
    def sub(self, o, alpha=1): return self - (o * alpha if alpha != 1 else o)
    def mul(self, o): return self * o
    def div(self, o): return self / o
    def neg(self): return -self
    def matmul(self, o): return self @ o
    def mm(self, o): return self @ o

    # shapes
    @property
    def T(self):
        return transpose(self)

    def t(self):
        if len(_shape(self)) > 2:
            raise trace_error(f"t() expects a tensor with <= 2 dimensions, but self is {len(_shape(self))}-D")
        return transpose(self)

    def transpose(self, dim0: int, dim1: int):
        rank = len(_shape(self))
        perm = list(range(rank))
        a, b = _norm_dim(dim0, rank), _norm_dim(dim1, rank)
        perm[a], perm[b] = perm[b], perm[a]
        return dispatch("transpose", [self], {"perm": tuple(perm)})

    def permute(self, *dims):
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        rank = len(_shape(self))
        perm = tuple(_norm_dim(int(d), rank) for d in dims)
        if sorted(perm) != list(range(rank)):
            raise trace_error(f"permute: {list(perm)} is not a permutation of the {rank} dims of a {list(_shape(self))} tensor")
        return dispatch("transpose", [self], {"perm": perm})

    def reshape(self, *shape, order="C"):
        if order != "C":
            raise trace_error(f"reshape: only order='C' is supported, got {order!r}")
        return reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    def view(self, *shape):
        return self.reshape(*shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        return flatten(self, start_dim, end_dim)

    def unsqueeze(self, dim: int):
        s = _shape(self)
        d = _norm_dim(dim, len(s) + 1)
        return reshape(self, s[:d] + (1,) + s[d:])

    def squeeze(self, dim=None):
        s = _shape(self)
        if dim is None:
            return reshape(self, tuple(n for n in s if n != 1))
        d = _norm_dim(dim, len(s))
        return reshape(self, s[:d] + s[d + 1:]) if s and s[d] == 1 else self

    def size(self, dim: int | None = None):
        s = _shape(self)
        return tuple(s) if dim is None else s[_norm_dim(dim, len(s))]

    def dim(self) -> int:
        return len(_shape(self))

    def numel(self) -> int:
        return int(np.prod(_shape(self), dtype=np.int64))

    def contiguous(self): return self
    def cpu(self): return self

    # reductions. `axis`/`keepdims` are numpy's spellings: numpy's own functions (np.sum(a)) call these methods.
    def sum(self, dim=None, keepdim: bool = False, *, axis=None, keepdims=None, dtype=None, out=None):
        return reduce("sum", self, _pick_dim(dim, axis), keepdim if keepdims is None else keepdims, dtype, out)

    def mean(self, dim=None, keepdim: bool = False, *, axis=None, keepdims=None, dtype=None, out=None):
        return reduce("mean", self, _pick_dim(dim, axis), keepdim if keepdims is None else keepdims, dtype, out)

    def max(self, dim=None, keepdim: bool = False):
        return extremum(self, "max", dim, keepdim)

    def min(self, dim=None, keepdim: bool = False):
        return extremum(self, "min", dim, keepdim)

    def amax(self, dim=(), keepdim: bool = False):
        return amax_amin(self, "max", dim, keepdim)

    def amin(self, dim=(), keepdim: bool = False):
        return amax_amin(self, "min", dim, keepdim)

    def argmax(self, dim=None, keepdim: bool = False):
        return arg_extremum(self, "argmax", dim, keepdim)

    def argmin(self, dim=None, keepdim: bool = False):
        return arg_extremum(self, "argmin", dim, keepdim)

    # elementwise
    def exp(self): return dispatch("exp", [self])
    def log(self): return dispatch("log", [self])
    def relu(self): return dispatch("relu", [self])
    def sigmoid(self): return dispatch("sigmoid", [self])
    def tanh(self): return dispatch("tanh", [self])
    def pow(self, e): return power(self, e)
    def square(self): return self * self
    def sqrt(self): return dispatch("sqrt", [self]) if _has("sqrt") else power(self, 0.5)
    def rsqrt(self): return dispatch("rsqrt", [self]) if _has("rsqrt") else 1.0 / self.sqrt()
    def abs(self): return dispatch("relu", [self]) + dispatch("relu", [-self])

    def clamp(self, min=None, max=None):  # noqa: A002 (torch's names)
        """relu compositions: clamp(x, lo) = relu(x - lo) + lo, clamp(x, None, hi) = x - relu(x - hi)."""
        if min is None and max is None:
            raise trace_error("clamp: at least one of min and max must be given")
        x = self
        if min is not None:
            x = dispatch("maximum", [x, min]) if _has("maximum") else dispatch("relu", [x - min]) + min
        if max is not None:
            x = dispatch("minimum", [x, max]) if _has("minimum") else x - dispatch("relu", [x - max])
        return x

    clip = clamp

    def softmax(self, dim: int):
        return dispatch("softmax", [self], {"dim": _norm_dim(dim, len(_shape(self)))})

    def log_softmax(self, dim: int):
        return dispatch("log_softmax", [self], {"dim": _norm_dim(dim, len(_shape(self)))})

    # dtypes
    def float(self): return cast(self, np.float32)
    def double(self): return cast(self, np.float64)
    def long(self): return cast(self, np.int64)
    def type_as(self, other): return cast(self, other.dtype)

    def to(self, *args, **kwargs):
        """to(dtype) converts; to("cpu") / to(device) is the identity (graphc runs on the CPU)."""
        dtype = kwargs.get("dtype")
        for a in args:
            if isinstance(a, str) or getattr(a, "type", None) == "cpu":
                continue
            dtype = a
        return self if dtype is None else cast(self, dtype)

    # values (a traced value has none: its `_concrete` raises a clear error)
    def item(self):
        v = self._concrete(".item()")
        if v.size != 1:
            raise trace_error(f"a Tensor with {v.size} elements cannot be converted to a Scalar")
        return v.item()

    def tolist(self):
        return self._concrete(".tolist()").tolist()

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


class ArrayMethods(TensorMethods):
    """The method table on an ndarray subclass (EagerArray, nn.Parameter): torch's view(shape)
    next to numpy's view(dtype), and numpy ufuncs routed through dispatch where graphc has the op."""

    __slots__ = ()

    def _concrete(self, what: str) -> np.ndarray:
        return np.ndarray.view(self, np.ndarray)

    # in place, numpy's way (the array itself changes; `p -= lr * p.grad` keeps p the Parameter)
    def _inplace(self, ufunc, o):
        _before_write((self,))
        ufunc(np.ndarray.view(self, np.ndarray), _plain(o), out=np.ndarray.view(self, np.ndarray))
        return self

    def __iadd__(self, o): return self._inplace(np.add, o)
    def __isub__(self, o): return self._inplace(np.subtract, o)
    def __imul__(self, o): return self._inplace(np.multiply, o)
    def __itruediv__(self, o): return self._inplace(np.true_divide, o)

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
        plain = [np.ndarray.view(v, np.ndarray) if isinstance(v, np.ndarray) else _plain(v) for v in inputs]
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(np.ndarray.view(v, np.ndarray) for v in out)
            _before_write(out)
        res = getattr(ufunc, method)(*plain, **kwargs)
        if out is not None:  # in place (`p -= lr * g`): the array itself, still a Parameter
            return out[0] if len(out) == 1 else out
        return _wrap_eager(res)


def _plain(v):
    if hasattr(v, "_materialize"):
        return v._materialize()
    return v


def _before_write(arrays) -> None:
    """An array is about to change in place: run what the open recording reads from it first."""
    from . import eager as tensor

    tensor.flush_if_reads(arrays)


class EagerArray(ArrayMethods, np.ndarray):
    """What `forward` sees in eager mode: a numpy array with PyTorch's tensor methods.

    Module.__call__ wraps numpy inputs in it and unwraps the results, so users get plain
    ndarrays back while `x.sum(dim=1, keepdim=True)` works the same eagerly and traced."""

    __array_priority__ = 100  # above Parameter's, so mixed results stay EagerArray


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

    def __setitem__(self, index, value):
        raise trace_error("in-place assignment (x[...] = value) is not supported in forward: graphc graphs have no "
                          "in-place ops; build a new value instead (e.g. torch.where-style masking with * and +)")

    def __getattr__(self, name):
        if name.startswith("_"):  # protocol probes (numpy's, Python's, graphc's own hasattr checks): AttributeError
            raise AttributeError(name)
        raise trace_error(f"traced value %{self.name} ({self.type}) has no method or attribute {name!r}: graphc "
                          f"traces torch's tensor methods it has ops for (see README, API tour)")

    # what tracing cannot see: values only exist when the compiled graph runs
    def _data_dependent(self, what: str):
        raise trace_error(f"data-dependent Python control flow: {what} of traced value %{self.name} ({self.type}) "
                          "is not known while tracing; keep Python `if`/`while`/`int()` on shapes and module "
                          "attributes, not on tensor values")

    def _concrete(self, what: str):
        self._data_dependent(what)

    def _unsupported(self, what: str):
        raise trace_error(f"{what} is not supported on traced value %{self.name} ({self.type}) yet: no op of the "
                          "IR computes it; compute it outside the compiled forward (eagerly, on its result)")

    def __bool__(self):
        node = next((n for n in reversed(self.tracer.builder.nodes) if self.name in n.outputs), None)
        if node is not None and node.op in _SYMBOL:  # `if x > 0:` names the compared value
            a = node.inputs[0]
            Proxy(self.tracer, a, self.tracer.builder.types[a])._data_dependent(f"comparison {_SYMBOL[node.op]}")
        self._data_dependent("the truth value (bool)")
    def __float__(self): self._data_dependent("float()")
    def __int__(self): self._data_dependent("int()")
    def __index__(self): self._data_dependent("use as an index")
    def __len__(self): return self.type.shape[0] if self.type.rank else self._data_dependent("len()")
    def __iter__(self): self._data_dependent("iteration")
    def numpy(self, force: bool = False): self._data_dependent(".numpy()")

    # autograd outside a trace: inside one, the compiled object differentiates the whole graph
    requires_grad = property(lambda self: self.type.is_float)
    is_leaf = property(lambda self: False)
    grad = property(lambda self: None)
    grad_fn = property(lambda self: None)
    data = property(lambda self: self._unsupported(".data"))
    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        raise trace_error(f"backward() inside a traced forward (on %{self.name}): call it on the compiled "
                          "object's result (cm.backward()) or use graphc.compile_train_step")
    def detach(self): self._unsupported(".detach()")
    def detach_(self): self._unsupported(".detach_()")
    def requires_grad_(self, requires_grad=True): self._unsupported(".requires_grad_()")
    def zero_(self): self._unsupported(".zero_() (in place)")
    def fill_(self, value): self._unsupported(".fill_() (in place)")
    def copy_(self, src): self._unsupported(".copy_() (in place)")
    def clone(self): return self * 1

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


def update_buffer(buf, value) -> None:
    """Give a module buffer a new value (BatchNorm's running statistics): traced, an "update:"
    output of the graph, which compiled plans write back into the buffer in place; eagerly, a
    copy into the buffer's array."""
    if isinstance(buf, Proxy):
        buf.tracer.update_buffer(buf, _as_proxy(buf.tracer, value, buf))
    else:
        np.copyto(buf, np.asarray(value), casting="same_kind")


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


def _value(x, what: str) -> np.ndarray:
    """The concrete numpy value of an eager operand (a traced one refuses: `what` is unsupported)."""
    if isinstance(x, Proxy):
        x._unsupported(what)
    if hasattr(x, "_concrete"):
        return x._concrete(what)
    return np.asarray(x)


def _eager_result(res, *like):
    """A value computed on numpy: a graphc.Tensor when an operand was a tensor, else an EagerArray."""
    res = np.ndarray.view(np.asarray(res), np.ndarray)
    if any(hasattr(v, "_materialize") or type(v).__name__ == "Parameter" for v in like):
        return _tensor.Tensor._from(res)
    return _wrap_eager(res)


_COMPARE = {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal, "eq": np.equal,
            "ne": np.not_equal}


_SYMBOL = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def compare(x, o, op: str):
    """Elementwise comparison -> booleans (no gradient). Traced: the op table's comparison op, once it has one."""
    if isinstance(x, Proxy) or isinstance(o, Proxy):
        if _has(op):
            return dispatch(op, [x, o])
        p = x if isinstance(x, Proxy) else o
        p._data_dependent(f"comparison {_SYMBOL[op]}")
    return _eager_result(_COMPARE[op](_value(x, op), _value(o, op) if not _is_scalar(o) else o), x, o)


def matmul(a, b):
    """a @ b; a 1-D operand is a row (left) or a column (right) vector, as torch.matmul has it."""
    ra, rb = len(_shape(a)), len(_shape(b))
    if ra == 1 and rb >= 2:
        out = matmul(reshape(a, (1, _shape(a)[0])), b)
        return reshape(out, tuple(_shape(out)[:-2]) + tuple(_shape(out)[-1:]))
    if rb == 1 and ra >= 2:
        out = matmul(a, reshape(b, (_shape(b)[0], 1)))
        return reshape(out, tuple(_shape(out)[:-1]))
    if ra == 1 and rb == 1:
        return (a * b).sum()
    return dispatch("matmul", [a, b])


def power(x, e):
    """x ** e: integer exponents as products (x ** 2 = x * x, exact, as torch's gradient 2x), others as
    exp(e * log x) (x > 0), sqrt for 0.5 when the op table has it."""
    if _is_scalar(e):
        e = float(e)
        if e == int(e) and abs(e) <= 64:
            n = int(abs(e))
            if n == 0:
                return x * 0 + 1
            result, base = None, x
            while n:
                if n & 1:
                    result = base if result is None else result * base
                n >>= 1
                if n:
                    base = base * base
            return result if e > 0 else 1.0 / result
        if e == 0.5 and _has("sqrt"):
            return dispatch("sqrt", [x])
        if _has("pow"):
            return dispatch("pow", [x], {"exponent": e})
    return dispatch("exp", [dispatch("log", [x]) * e])


def cast(x, dtype):
    """.float()/.double()/.long()/.to(dtype): the same dtype is the value itself; other dtypes use the
    op table's cast once it has one, and convert eager values that need no gradient."""
    dt = np.dtype(dtype)
    if np.dtype(x.dtype) == dt:
        return x
    if _has("cast") and (isinstance(x, Proxy) or _tensor._requires_grad(x)):
        return dispatch("cast", [x], {"dtype": dtype_name(dt)})
    if _tensor._requires_grad(x) and _tensor.is_grad_enabled() and not isinstance(x, Proxy):
        raise trace_error(f"converting a tensor that requires grad from {x.dtype} to {dt} is not recorded yet "
                          "(no cast op); convert the inputs instead, or do it under graphc.no_grad()")
    return _eager_result(_value(x, f".to({dt})").astype(dt), x)


def extremum(x, op: str, dim=None, keepdim: bool = False):
    """max/min: over everything (a scalar) or along `dim` ((values, indices), as torch returns)."""
    rank = len(_shape(x))
    if isinstance(x, Proxy) or (_tensor._requires_grad(x) and _tensor.is_grad_enabled()):
        via_max = op == "min" and not _has("min") and _has("max")  # min(x) = -max(-x)
        if not _has(op) and not via_max:
            if isinstance(x, Proxy):
                x._unsupported(f".{op}()")
            raise trace_error(f".{op}() of a tensor that requires grad is not recorded yet (no {op} op); "
                              "use it under graphc.no_grad() or on .detach()")
        dims = tuple(range(rank)) if dim is None else (_norm_dim(dim, rank),)
        attrs = {"dims": dims, "keepdim": bool(keepdim and dim is not None)}
        if via_max:
            values = dispatch("neg", [dispatch("max", [dispatch("neg", [x])], attrs)])
        else:
            values = dispatch(op, [x], attrs)
        if dim is None:
            return values
        return MinMax(values, arg_extremum(x.detach() if not isinstance(x, Proxy) else x, "arg" + op, dim, keepdim))
    v = _value(x, f".{op}()")
    fn = np.max if op == "max" else np.min
    if dim is None:
        return _eager_result(fn(v), x)
    d = _norm_dim(dim, rank)
    return MinMax(_eager_result(fn(v, axis=d, keepdims=keepdim), x), arg_extremum(x, "arg" + op, dim, keepdim))


def amax_amin(x, op: str, dim=(), keepdim: bool = False):
    """torch.amax/amin: values only, over one dim, several, or all (dim=())."""
    if dim == () or dim is None:
        return extremum(x, op)
    rank = len(_shape(x))
    dims = tuple(sorted({_norm_dim(d, rank) for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}))
    if isinstance(x, Proxy) or (_tensor._requires_grad(x) and _tensor.is_grad_enabled()):
        if not _has(op):
            if isinstance(x, Proxy):
                x._unsupported(f".a{op}()")
            raise trace_error(f".a{op}() of a tensor that requires grad is not recorded yet (no {op} op)")
        return dispatch(op, [x], {"dims": dims, "keepdim": bool(keepdim)})
    fn = np.max if op == "max" else np.min
    return _eager_result(fn(_value(x, f".a{op}()"), axis=dims, keepdims=keepdim), x)


class MinMax(tuple):
    """torch.return_types.max: (values, indices)."""

    def __new__(cls, values, indices):
        return super().__new__(cls, (values, indices))

    values = property(lambda self: self[0])
    indices = property(lambda self: self[1])


def arg_extremum(x, op: str, dim=None, keepdim: bool = False):
    """argmax/argmin (int64 indices, no gradient): computed on the value."""
    if isinstance(x, Proxy):
        if _has(op):
            if dim is None:  # an index into the flattened tensor, as torch
                flat = reshape(x, (int(np.prod(_shape(x), dtype=np.int64)),))
                out = dispatch(op, [flat], {"dim": 0, "keepdim": False})
                return reshape(out, (1,) * len(_shape(x))) if keepdim else out
            return dispatch(op, [x], {"dim": _norm_dim(dim, len(_shape(x))), "keepdim": bool(keepdim)})
        x._unsupported(f".{op}()")
    v = _value(x, f".{op}()")
    fn = np.argmax if op == "argmax" else np.argmin
    if dim is None:
        return _eager_result(np.asarray(fn(v), np.int64), x)
    return _eager_result(fn(v, axis=_norm_dim(dim, v.ndim), keepdims=keepdim).astype(np.int64), x)


def _basic_index(x, k):
    """x[k] for ints, slices (positive steps), `...` and None as slice + reshape ops; None if k is
    another kind of index (tensors, lists, negative steps)."""
    key = k if isinstance(k, tuple) else (k,)
    if not all(isinstance(i, (int, np.integer, slice, type(None))) or i is Ellipsis for i in key):
        return None
    if any(isinstance(i, slice) and (i.step or 1) <= 0 for i in key):
        return None
    shape = list(_shape(x))
    n_real = sum(1 for i in key if i is not None and i is not Ellipsis)
    if key.count(Ellipsis) > 1 or n_real > len(shape):
        raise trace_error(f"too many indices for a tensor of rank {len(shape)}: {k!r}")
    if Ellipsis in key:
        e = key.index(Ellipsis)
        key = key[:e] + (slice(None),) * (len(shape) - n_real) + key[e + 1:]
    else:
        key = key + (slice(None),) * (len(shape) - n_real)
    out_shape, d = [], 0
    for i in key:
        if i is None:
            out_shape.append(1)
            continue
        n = shape[d]
        if isinstance(i, slice):
            start, end, step = i.indices(n)
            if (start, end, step) != (0, n, 1):
                x = dispatch("slice", [x], {"dim": d, "start": start, "end": max(end, start), "step": step})
            out_shape.append(len(range(start, max(end, start), step)))
        else:
            j = int(i)
            if not -n <= j < n:
                raise trace_error(f"index {j} is out of bounds for dimension {d} with size {n}")
            j %= n
            x = dispatch("slice", [x], {"dim": d, "start": j, "end": j + 1, "step": 1})
        d += 1
    return reshape(x, tuple(out_shape)) if tuple(out_shape) != tuple(_shape(x)) else x


def index(x, k):
    """x[k]: ints, slices, `...` and None are slice + reshape ops (recorded and traced, with
    gradients); other indices (arrays, lists) index an eager value that needs no gradient."""
    recorded = isinstance(x, Proxy) or (_tensor._requires_grad(x) and _tensor.is_grad_enabled())
    if recorded and _has("slice"):
        out = _basic_index(x, k)
        if out is not None:
            return out
    if isinstance(x, Proxy):
        raise trace_error(f"indexing a traced value with {k!r} (%{x.name}, {x.type}) is not supported: "
                          "use ints, slices, ... and None")
    if recorded and hasattr(x, "_materialize"):
        raise trace_error(f"indexing a tensor that requires grad with {k!r} is not recorded: use ints, slices, "
                          "... and None, or index under graphc.no_grad() / x.detach()")
    key = tuple(_value(i, "index") if hasattr(i, "_concrete") else i for i in k) if isinstance(k, tuple) else \
        (_value(k, "index") if hasattr(k, "_concrete") else k)
    res = _value(x, "indexing")[key]
    if hasattr(x, "_materialize") or type(x).__name__ == "Parameter":
        return _tensor.Tensor._from(np.ndarray.view(np.asarray(res), np.ndarray))
    return _wrap_eager(res) if isinstance(res, np.ndarray) else res


def concat(xs, dim: int = 0):
    """cat: the op table's concat when a value is traced or needs grad, else numpy's."""
    if any(isinstance(v, Proxy) or (_tensor._requires_grad(v) and _tensor.is_grad_enabled()) for v in xs):
        if not _has("concat"):
            raise trace_error("cat of traced values or of tensors that require grad is not supported yet (no concat op)")
        rank = len(_shape(xs[0]))
        return dispatch("concat", list(xs), {"dim": _norm_dim(dim, rank)})
    vals = [_value(v, "cat") for v in xs]
    return _eager_result(np.concatenate(vals, axis=dim), *xs, _tensor.Tensor._from(vals[0]))


# ------------------------------------------------------------------ trace()


def trace(model, *example_inputs, name: str | None = None) -> Graph:
    """Trace `model.forward` on example inputs into a verified graphc.ir.Graph.

    Example inputs are numpy arrays (or TensorTypes); only their shapes and dtypes matter.
    Parameters become `param` inputs named as in `model.state_dict()`.
    """
    name = name or getattr(model, "_fn_name", None) or type(model).__name__
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
    for bname, buf in (model.named_buffers() if hasattr(model, "named_buffers") else ()):
        tracer.buffers[id(buf)] = tracer.input(bname, TensorType(buf.shape, dtype_name(buf.dtype)), "buffer")

    token = _active.set(tracer)
    try:
        result = model(*proxies)
    finally:
        _active.reset(token)

    outs = result if isinstance(result, (tuple, list)) else (result,)
    for k, o in enumerate(outs):
        if not isinstance(o, Proxy):
            raise TraceError(f"{name}.forward must return traced values computed from its inputs; output {k} is {type(o).__name__}")
    updates = [Output(v.name, "update:" + b) for b, v in tracer.buffer_updates.items()]
    graph = tracer.builder.build([Output(o.name) for o in outs] + updates, meta={"training": bool(getattr(model, "training", False)),
                                                                                 "id_checks": tuple(tracer.id_checks)})
    return graph.verify()


from . import eager as _tensor  # noqa: E402  (graphc.Tensor builds on this module)

# issue 11's torch methods (transpose(a, b), split, chunk, masked_fill, expand, ...): installed
# where the shared method table does not already have them
from .tensor_methods import install as _install_methods  # noqa: E402

_install_methods(TensorMethods)
