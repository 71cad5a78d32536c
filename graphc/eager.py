"""graphc.Tensor: the array type of eager mode, with autograd by lazy capture.

A Tensor wraps a numpy array. Operations on tensors that require grad (and on Parameters,
which always do unless frozen) are not run one by one: they are recorded into graphc IR on
the open `Tape`, and the result is a lazy Tensor. `.backward()` closes the recording (forward,
autodiff, the same pass pipeline as `graphc.compile`, one plan), and `graphc.autograd` runs it
(interpreted the first time a structure is seen, compiled to native code from the second,
cached by graph structure and input signature) and accumulates `.grad`. Reading a lazy value
(`.item()`, `.numpy()`, printing, `np.asarray`) runs the forward recorded so far.

Everything else (no grad needed, or under `graphc.no_grad()`) runs eagerly on the op's numpy
reference kernel, exactly as before. Tensor methods come from `tracing.TensorMethods`, the one
table shared with traced values.
"""
from __future__ import annotations

import builtins
import contextvars
import functools
import weakref

import numpy as np

from .ir import GraphBuilder, ShapeError, TensorType, dtype_name, get_op
from .ir.graph import Node
from .tracing import TensorMethods, trace_error, user_location

float32, float64, int64, int32, bool_ = np.float32, np.float64, np.int64, np.int32, np.bool_
float = float32  # noqa: A001  (torch.float)
double = float64
long = int64
_DEFAULT_FLOAT = np.float32

# ------------------------------------------------------------------ grad mode

_grad_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("graphc_grad_enabled", default=True)


def is_grad_enabled() -> bool:
    return _grad_enabled.get()


class _GradMode:
    """A context manager that is also a decorator (torch's no_grad/enable_grad shape)."""

    _mode = True

    def __enter__(self):
        self._token = _grad_enabled.set(self._mode)
        return self

    def __exit__(self, *exc):
        _grad_enabled.reset(self._token)
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with type(self).__new__(type(self)).__init_copy__(self):
                return fn(*args, **kwargs)

        return wrapper

    def __init_copy__(self, other):
        self._mode = other._mode
        return self


class no_grad(_GradMode):
    """Operations inside run eagerly and record nothing; results do not require grad."""

    _mode = False


class enable_grad(_GradMode):
    """Re-enable recording inside a no_grad block."""

    _mode = True


class set_grad_enabled(_GradMode):
    def __init__(self, mode: bool):
        self._mode = bool(mode)
        self._token = _grad_enabled.set(self._mode)  # torch also applies it when called as a function

    def __enter__(self):
        return self


class inference_mode(_GradMode):
    """Like no_grad (graphc has no version counters to skip, so it is the same switch)."""

    def __init__(self, mode: bool = True):
        self._mode = not mode


# ------------------------------------------------------------------ the tape


class Tape:
    """The open recording: graph inputs (leaves that require grad, and data), nodes, lazy results.

    A recording may hold replayed module calls (`events`, see graphc.replay) that are not yet
    nodes: the graph is filled from them the first time anything asks for it (`builder`,
    `sources`, `by_id`, `leaves`), so only a step that runs as a whole cached plan skips it."""

    __slots__ = ("_b", "tensors", "closed", "events", "sites", "names", "filled", "pure",
                 "_sources", "keep", "_by_id", "_leaves", "origin")

    def __init__(self):
        self._b = None                     # the graph so far, made when first needed (see _graph)
        self.tensors: list[weakref.ref] = []        # lazy results, in order of recording
        self.closed = False
        self.events: list = []             # (site, binds, outs) per module call recorded as a reusable fragment (graphc.replay)
        self.sites: list = []              # each event's replay.Site (what a replayed step is looked up by)
        self.names: list = []              # per filled event: (its external values' input names, its outputs' names)
        self.filled = 0                    # events already written into the graph
        self.pure = True                   # every node so far belongs to an event (replayable as a whole)

    def _graph(self) -> "Tape":
        if self._b is None:  # a replayed step never gets here: it builds no graph
            self._b = GraphBuilder("eager")
            self._sources: list = []           # input k's array source (kept alive: ids stay unique)
            self.keep: list = []               # arrays whose copies are sources (alive for the same reason)
            self._by_id: dict[int, str] = {}   # id(source) -> input name
            self._leaves: list[tuple[str, object]] = []  # (input name, leaf) for inputs that require grad
            self.origin: dict[str, object] = {}         # input name -> what the recording was given (before copying)
        if self.filled != len(self.events):
            from . import replay

            replay.fill(self)
        return self

    builder = property(lambda self: self._graph()._b)
    sources = property(lambda self: self._graph()._sources)
    by_id = property(lambda self: self._graph()._by_id)
    leaves = property(lambda self: self._graph()._leaves)

    def clear(self) -> None:
        """Forget the recording (it ran): sources, leaves, events."""
        self.events, self.sites, self.names, self.filled = [], [], [], 0
        if self._b is not None:
            self._sources, self._by_id, self._leaves, self.origin = [], {}, [], {}

    def add_source(self, v, kind: str, t: TensorType | None = None) -> str:
        """Register v (already copied where it must be) as an input, or return its existing name."""
        name = self._by_id.get(id(v))
        if name is not None:
            return name
        if t is None:
            t = _type_of(v)
        name = f"{'param' if kind == 'param' else 'in'}{len(self._sources)}"
        self._b.add_input(name, t, kind)
        self._sources.append(v)
        self._by_id[id(v)] = name
        if kind == "param":
            self._leaves.append((name, v))
        return name

    def input_for(self, v, kind: str) -> str:
        self._graph()
        name = self._by_id.get(id(v))
        if name is not None:
            return name
        a = _array(v)
        try:
            t = _type_of(a)
        except ShapeError as e:
            raise trace_error(str(e)) from None
        given = v
        if kind == "input" and type(v) is not Tensor and type(v).__name__ != "Parameter":
            # user data (a numpy array) is read when the recording runs: keep its values as they are now
            self.keep.append(v)
            v = np.array(a, copy=True)
        name = self.add_source(v, kind, t)
        self.origin[name] = given
        return name

    def live(self) -> list["Tensor"]:
        out = []
        for r in self.tensors:
            t = r()
            if t is not None and t._tape is self:
                out.append(t)
        return out


class DeferredGrad:
    """A weight gradient the joined step did not store: its SGD update was fused into the GEMM
    that computes it (graphc.autograd._defer_weight_grads, passes/update_gemm.py), so the plan
    outputs the GEMM's operands instead (views of its buffers, valid until its next run, as its
    gradient buffers are). Parameter.grad computes a @ b when first read, and keeps the result."""

    __slots__ = ("a", "b")

    def __init__(self, a: np.ndarray, b: np.ndarray):
        self.a, self.b = a, b

    def value(self) -> np.ndarray:
        return np.matmul(self.a, self.b)


_tape: Tape | None = None
CLOSED = Tape()       # the tape of values whose recording ran, when their own tape was emptied for the next step
CLOSED.closed = True  # (graphc.autograd's replayed step reuses its tape: see _replay_runner)
_pending = None  # (root, tape) of a deferred loss.backward(): see graphc.autograd


def flush_pending() -> None:
    """Run a deferred backward before anything that could observe that it has not run yet."""
    if _pending is not None:
        from . import autograd

        autograd.flush()


def open_tape() -> Tape:
    """The open recording (a new one if none is open), its replayed events not yet filled in."""
    global _tape
    if _pending is not None:
        flush_pending()
    if _tape is None or _tape.closed:
        _tape = Tape()
    return _tape


def current_tape() -> Tape:
    """The open recording, ready for a node to be appended."""
    return open_tape()._graph()


def _array(v) -> np.ndarray:
    """The numpy value of a tensor-like (materialising a lazy Tensor), as a plain ndarray."""
    if isinstance(v, Tensor):
        return v._materialize()
    return np.ndarray.view(np.asarray(v), np.ndarray)


def _requires_grad(v) -> bool:
    if isinstance(v, Tensor):
        return v._requires_grad or (v._tape is not None and not v._tape.closed)
    return bool(getattr(v, "requires_grad", False)) and isinstance(v, np.ndarray) and type(v).__name__ == "Parameter"


def _is_scalar(v) -> bool:
    return isinstance(v, (bool, int, builtins.float, np.number)) and not isinstance(v, np.ndarray)


# ------------------------------------------------------------------ eager dispatch


def eager_op(op: str, inputs, attrs: dict):
    """Apply op outside any trace: record it when a tensor needs grad, else run its reference kernel."""
    if _grad_enabled.get() and any(_requires_grad(v) for v in inputs):
        return _record(op, inputs, attrs)
    if capturing:
        global reads
        reads += 1  # a value computed outside the recording: forward may branch on it (not replayable)
    from .tracing import eager

    res = eager(op, [v._materialize() if isinstance(v, Tensor) else v for v in inputs], attrs)
    if any(isinstance(v, Tensor) or type(v).__name__ == "Parameter" for v in inputs):
        return _wrap(res)
    return res


def _wrap(res):
    if isinstance(res, tuple):
        return tuple(_wrap(r) for r in res)
    return Tensor._from(np.ndarray.view(np.asarray(res), np.ndarray)) if isinstance(res, np.ndarray) else res


capturing = 0  # > 0 while graphc.replay records a module call as a reusable fragment
reads = 0      # values read while capturing (graphc.replay: a forward that reads values is not replayed)


def _record(op: str, inputs, attrs: dict):
    tape = current_tape()
    if not capturing:
        tape.pure = False  # a node outside any module call: this recording is not one replayable sequence
    names = []
    like_t = None
    for k, v in enumerate(inputs):
        if isinstance(v, Tensor) and v._tape is tape and v._value is not None:
            names.append(v._value)
        elif _is_scalar(v):
            from .tracing import _scalar_value

            if like_t is None:
                like_t = _type_of(next(u for u in inputs if not _is_scalar(u)))
            names.append(_emit(tape.builder, "full", (), {"shape": (), "value": _scalar_value(v, like_t),
                                                          "dtype": like_t.dtype}, None))
        elif op == "dropout" and k == 1:
            names.append(tape.input_for(np.asarray(v, np.int64), "rng"))
        else:
            leaf = _requires_grad(v) and not (isinstance(v, Tensor) and v._tape is not None)
            names.append(tape.input_for(v, "param" if leaf else "input"))
    out = _emit(tape.builder, op, names, attrs, user_location())
    types = tape.builder.types
    if isinstance(out, tuple):
        results = tuple(Tensor._lazy(tape, o, types[o]) for o in out)
        tape.tensors.extend(weakref.ref(t) for t in results)
        return results
    t = Tensor._lazy(tape, out, types[out])
    tape.tensors.append(weakref.ref(t))
    return t


_rules: dict = {}  # (op, input types, attrs) -> (full attrs, output types): a steady loop infers each once


def _emit(builder: GraphBuilder, op: str, names, attrs: dict, loc):
    """builder.emit, with the op's attribute normalisation and shape rule memoised."""
    in_types = tuple(builder.types[n] for n in names)
    try:
        key = (op, in_types, tuple(attrs.items()))
        hit = _rules.get(key)
    except TypeError:  # an unhashable attribute value (a list): no memo
        key = hit = None
    if hit is None:
        try:
            out = builder.emit(op, names, attrs, loc=loc)
        except ShapeError as e:
            raise trace_error(str(e)) from None
        if key is not None:
            node = builder.nodes[-1]
            _rules[key] = (node.attrs, node.types)
        return out
    full_attrs, out_types = hit
    outs = tuple(builder.fresh() for _ in out_types)
    for o, t in zip(outs, out_types):
        builder.types[o] = t
    builder.nodes.append(Node(op, tuple(names), outs, out_types, full_attrs, loc, None))
    return outs[0] if len(outs) == 1 else outs


_array_types: dict = {}  # (shape, dtype.str) -> its TensorType (_type_of, _checked_type)


def _type_of(v) -> TensorType:
    if isinstance(v, Tensor):
        return v._type
    a = np.asarray(v)
    key = (a.shape, a.dtype.str)
    t = _array_types.get(key)
    if t is None:
        t = _array_types[key] = TensorType(a.shape, dtype_name(a.dtype))
    return t


# ------------------------------------------------------------------ Tensor


class Tensor(TensorMethods):
    """graphc's eager array: a numpy array (or a recorded, not yet computed value) with autograd."""

    __slots__ = ("_data", "_tape", "_value", "_type", "_requires_grad", "_grad", "_ref", "__weakref__")
    __array_priority__ = 200  # numpy defers to our operators

    def __init__(self, data, dtype=None, requires_grad: bool = False):
        a = _to_numpy(data, dtype)
        self._data, self._tape, self._value, self._ref = a, None, None, None
        self._type = _checked_type(a)
        self._requires_grad = False
        self._grad = None
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _from(cls, a: np.ndarray, requires_grad: bool = False) -> "Tensor":
        t = object.__new__(cls)
        t._data, t._tape, t._value, t._requires_grad, t._grad, t._ref = a, None, None, requires_grad, None, None
        t._type = _checked_type(a)
        return t

    @classmethod
    def _lazy(cls, tape: Tape, value: str, type: TensorType) -> "Tensor":
        t = object.__new__(cls)
        t._data, t._tape, t._value, t._type, t._requires_grad, t._grad, t._ref = None, tape, value, type, False, None, None
        return t

    # ---- what a tensor is
    shape = property(lambda self: self._type.shape)
    ndim = property(lambda self: self._type.rank)
    dtype = property(lambda self: self._type.np_dtype)
    is_leaf = property(lambda self: self._tape is None)

    @property
    def requires_grad(self) -> bool:
        """torch's meaning: a leaf that asked for it, or a value computed from one (also after backward)."""
        return self._requires_grad or self._tape is not None

    @requires_grad.setter
    def requires_grad(self, value: bool):
        self.requires_grad_(value)

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        if requires_grad and not self._type.is_float:
            raise trace_error(f"only floating point tensors can require gradients, got {self._type}")
        if not self.is_leaf and not self._tape.closed:
            raise trace_error("requires_grad_() can only change leaf tensors (this one is the result of an "
                              "operation); use .detach().requires_grad_()")
        self._requires_grad = bool(requires_grad)
        return self

    @property
    def grad(self):
        if _pending is not None:
            flush_pending()
        return self._grad

    @grad.setter
    def grad(self, value):
        if _pending is not None:
            flush_pending()
        self._grad = value

    @property
    def grad_fn(self):
        return None if self._tape is None else f"<recorded %{self._value}>"

    @property
    def data(self) -> "Tensor":
        """The values, sharing memory, without autograd (torch's .data)."""
        return Tensor._from(self._materialize())

    @data.setter
    def data(self, value):
        a = _array(value)
        if a.shape != self.shape or a.dtype != self.dtype:
            raise trace_error(f".data = ...: expected {self._type}, got {a.dtype}{list(a.shape)}")
        self._data = a

    def _concrete(self, what: str) -> np.ndarray:
        return self._materialize()

    def _materialize(self) -> np.ndarray:
        if self._data is None:
            global reads
            from . import autograd

            reads += 1

            autograd.evaluate(self._tape)
        return self._data

    # ---- autograd
    def backward(self, gradient=None, retain_graph=None, create_graph: bool = False, inputs=None):
        """Accumulate d(self)/d(leaf) into every leaf's .grad (gradient: d(loss)/d(self), for non-scalars)."""
        global _pending
        tape = self._tape
        if (gradient is None and _pending is None and tape is not None and not tape.closed and not create_graph
                and self._type.shape == ()):
            _pending = (self, tape)  # the common case, deferred (as below, without its checks one by one)
            return
        if create_graph:
            raise trace_error("backward(create_graph=True): graphc has no second-order gradients")
        if self._tape is None or self._tape.closed:  # (is_leaf, without its frame)
            if self._tape is not None:
                raise trace_error("backward() through a graph that was already run: graphc frees the recording after "
                                  "backward(), as torch does without retain_graph=True; compute the loss again")
            raise trace_error("element 0 of tensors does not require grad and does not have a grad_fn: this value "
                              "was not computed from tensors that require grad (requires_grad=True or Parameters)")
        if gradient is None and self._type.shape != ():
            raise trace_error(f"grad can be implicitly created only for scalar outputs; this one is {self._type}: "
                              "pass backward(gradient)")
        if gradient is None:  # deferred: an optimizer.step() that follows may run it in the same plan
            if _pending is not None:
                flush_pending()
            if self._tape.closed:
                from . import autograd

                autograd.defer(self)  # raises: the pending backward just ran this recording
            _pending = (self, self._tape)
        else:
            from . import autograd

            autograd.backward(self, _array(gradient).astype(self.dtype, copy=False))

    def detach(self) -> "Tensor":
        return Tensor._from(self._materialize())

    def detach_(self) -> "Tensor":
        self._materialize()
        self._tape, self._value, self._requires_grad = None, None, False
        return self

    def clone(self) -> "Tensor":
        return self * 1.0 if _requires_grad(self) else Tensor._from(self._materialize().copy())

    def numpy(self, force: bool = False) -> np.ndarray:
        if self.requires_grad and not force:
            raise trace_error("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.")
        return self._materialize()

    def __array__(self, dtype=None, copy=None):
        a = self._materialize()
        return a if dtype is None else a.astype(dtype, copy=False)

    def __len__(self):
        if not self._type.rank:
            raise TypeError("len() of a 0-d tensor")
        return self._type.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    # Python number conversions, as torch: one-element tensors only (any rank); int() truncates;
    # index() (slicing, range) takes integer or bool tensors only
    def _scalar(self, what: str):
        a = self._materialize()
        if a.size != 1:
            raise trace_error(f"{what}: a Tensor with {a.size} elements cannot be converted to a Python scalar "
                              "(only one-element tensors can)")
        return a.reshape(()).item()

    def __bool__(self):
        a = self._materialize()
        if a.size != 1:
            raise trace_error(f"Boolean value of Tensor with {'no values' if a.size == 0 else 'more than one value'} "
                              "is ambiguous (use .any() or .all())")
        return builtins.bool(a.reshape(()).item())

    def __float__(self):
        return builtins.float(self._scalar("float()"))

    def __int__(self):
        return builtins.int(self._scalar("int()"))

    def __complex__(self):
        return builtins.complex(self._scalar("complex()"))

    def __index__(self):
        if self._type.dtype not in ("i64", "i32", "bool"):
            raise TypeError(f"only integer tensors of a single element can be converted to an index (got {self._type})")
        return builtins.int(self._scalar("index"))

    def __format__(self, spec):
        return format(self._materialize().item(), spec) if self.ndim == 0 else format(str(self), spec)

    __hash__ = object.__hash__

    def __repr__(self):
        body = np.array2string(self._materialize(), separator=", ", prefix="tensor(")
        extra = ""
        if self._type.dtype != "f32" and self._type.dtype != "i64":
            extra += f", dtype=graphc.{self.dtype}"
        if not self.is_leaf:
            extra += f", grad_fn={self.grad_fn}"
        elif self._requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    def __reduce__(self):
        return (_rebuild, (self._materialize().copy(), self._requires_grad))

    # numpy interop: graphc ops dispatch (np.exp(t) is t.exp()); other numpy functions compute on
    # the values and give numpy arrays (they are outside autograd)
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        op = self._UFUNCS.get(ufunc.__name__)
        if op is not None and method == "__call__" and not kwargs and ufunc.nin == len(inputs):
            from .tracing import dispatch

            return dispatch(op, list(inputs))
        plain = [v._materialize() if isinstance(v, Tensor) else v for v in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(v._materialize() if isinstance(v, Tensor) else v for v in kwargs["out"])
        res = getattr(ufunc, method)(*plain, **kwargs)
        if any(isinstance(v, Tensor) and _requires_grad(v) for v in inputs):
            return res
        return _wrap(res) if isinstance(res, np.ndarray) else res

    def __and__(self, o): return _wrap(np.logical_and(self._materialize(), _array(o)))
    def __or__(self, o): return _wrap(np.logical_or(self._materialize(), _array(o)))
    def __invert__(self): return _wrap(np.logical_not(self._materialize()))
    __rand__, __ror__ = __and__, __or__

    def __setitem__(self, key, value):
        if _requires_grad(self) and is_grad_enabled():
            raise trace_error("a tensor that requires grad is being used in an in-place operation (x[...] = v); "
                              "do it under graphc.no_grad()")
        flush_if_reads((self,))
        self._materialize()[key] = _array(value) if not _is_scalar(value) else value

    def _inplace(self, op: str, o):
        if _requires_grad(self) and is_grad_enabled():
            if self.is_leaf:
                raise trace_error("a leaf Variable that requires grad is being used in an in-place operation; "
                                  "update it under graphc.no_grad()")
            return getattr(self, f"__{op}__")(o)  # a recorded value: the name now holds the new value
        flush_if_reads((self,))
        a = self._materialize()
        getattr(np, {"add": "add", "sub": "subtract", "mul": "multiply", "truediv": "true_divide"}[op])(
            a, _array(o) if not _is_scalar(o) else o, out=a)
        return self

    def __iadd__(self, o): return self._inplace("add", o)
    def __isub__(self, o): return self._inplace("sub", o)
    def __imul__(self, o): return self._inplace("mul", o)
    def __itruediv__(self, o): return self._inplace("truediv", o)

    def zero_(self):
        return self.fill_(0)

    def fill_(self, value):
        self[...] = value
        return self

    def copy_(self, src):
        self[...] = src
        return self


def _rebuild(a, requires_grad):
    return Tensor._from(a, requires_grad)


def _checked_type(a: np.ndarray) -> TensorType:
    key = (a.shape, a.dtype.str)
    t = _array_types.get(key)  # one TensorType object per shape and dtype (graphc.replay compares them by identity)
    if t is not None:
        return t
    try:
        t = TensorType(a.shape, dtype_name(a.dtype))
        if len(_array_types) < 4096:
            _array_types[key] = t
        return t
    except ShapeError:
        raise ShapeError(f"unsupported dtype {a.dtype}: graphc tensors are float32, float64, int64 or bool") from None


def _to_numpy(data, dtype=None) -> np.ndarray:
    if isinstance(data, Tensor):
        a = data._materialize()
    elif hasattr(data, "detach") and hasattr(data, "numpy"):  # a torch tensor
        a = data.detach().cpu().numpy()
    else:
        a = np.asarray(data)
    if dtype is not None:
        return np.ndarray.view(np.array(a, dtype=np.dtype(dtype)), np.ndarray)
    if a.dtype == np.float64 and not isinstance(data, np.ndarray):
        a = a.astype(_DEFAULT_FLOAT)   # Python floats are float32 tensors, as in torch
    elif a.dtype.kind in "iu" and a.dtype != np.int64:
        a = a.astype(np.int64)           # int32 labels become int64 class indices
    elif a.dtype.kind == "f" and a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32)
    return np.ndarray.view(np.array(a, copy=True) if not isinstance(data, np.ndarray) else a, np.ndarray)


# ------------------------------------------------------------------ creation functions (torch's signatures)


def tensor(data, dtype=None, requires_grad: bool = False) -> Tensor:
    """A new tensor holding a copy of `data` (Python numbers, lists, numpy arrays, torch tensors)."""
    a = _to_numpy(data, dtype)
    return Tensor._from(np.array(a, copy=True), False).requires_grad_(requires_grad) if requires_grad else \
        Tensor._from(np.array(a, copy=True))


def as_tensor(data, dtype=None) -> Tensor:
    return data if isinstance(data, Tensor) and dtype is None else Tensor._from(_to_numpy(data, dtype))


def from_numpy(a: np.ndarray) -> Tensor:
    """A tensor sharing `a`'s memory (any dtype graphc supports; float64 stays float64)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(a).__name__})")
    return Tensor._from(np.ndarray.view(a, np.ndarray))


def _size(size) -> tuple[int, ...]:
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = size[0]
    return tuple(int(s) for s in size)


def _new(a: np.ndarray, requires_grad: bool) -> Tensor:
    t = Tensor._from(a)
    return t.requires_grad_(True) if requires_grad else t


def zeros(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    return _new(np.zeros(_size(size), dtype or _DEFAULT_FLOAT), requires_grad)


def ones(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    return _new(np.ones(_size(size), dtype or _DEFAULT_FLOAT), requires_grad)


def empty(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    return _new(np.empty(_size(size), dtype or _DEFAULT_FLOAT), requires_grad)


def full(size, fill_value, dtype=None, requires_grad: bool = False) -> Tensor:
    if dtype is None:
        dtype = np.int64 if isinstance(fill_value, (int, np.integer)) and not isinstance(fill_value, bool) else _DEFAULT_FLOAT
    return _new(np.full(_size((size,)), fill_value, dtype), requires_grad)


def arange(start, end=None, step=1, dtype=None, requires_grad: bool = False) -> Tensor:
    if end is None:
        start, end = 0, start
    ints = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
    return _new(np.arange(start, end, step, dtype=dtype or (np.int64 if ints else _DEFAULT_FLOAT)), requires_grad)


def rand(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    from . import random

    return _new(random.generator().random(_size(size)).astype(dtype or _DEFAULT_FLOAT), requires_grad)


def randn(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    from . import random

    return _new(random.generator().standard_normal(_size(size)).astype(dtype or _DEFAULT_FLOAT), requires_grad)


def randint(low, high=None, size=(), dtype=None) -> Tensor:
    from . import random

    if high is None:
        low, high = 0, low
    return Tensor._from(random.generator().integers(low, high, size=_size((size,))).astype(dtype or np.int64))


def _like(fn):
    def like(input, dtype=None, requires_grad: bool = False):
        return fn(*np.shape(input), dtype=dtype or np.asarray(input).dtype, requires_grad=requires_grad)

    like.__name__ = fn.__name__ + "_like"
    like.__doc__ = f"{fn.__name__} with the shape (and dtype) of `input`."
    return like


zeros_like, ones_like, empty_like, rand_like, randn_like = map(_like, (zeros, ones, empty, rand, randn))


def full_like(input, fill_value, dtype=None, requires_grad: bool = False) -> Tensor:
    return full(np.shape(input), fill_value, dtype=dtype or np.asarray(input).dtype, requires_grad=requires_grad)


def cat(tensors, dim: int = 0) -> Tensor:
    from .tracing import concat

    return concat(list(tensors), dim)


def stack(tensors, dim: int = 0) -> Tensor:
    tensors = list(tensors)
    return cat([t.unsqueeze(dim) for t in tensors], dim)


def is_tensor(obj) -> bool:
    return isinstance(obj, Tensor) or type(obj).__name__ == "Parameter"


def numel(t) -> int:
    return int(np.prod(np.shape(t), dtype=np.int64))


def flush_if_reads(arrays) -> None:
    """Before an array changes in place: if the open recording reads it, compute its values first
    (a lazy result must see the array as it was when the operation was written)."""
    if _pending is not None:
        flush_pending()
    tape = _tape
    if tape is None or tape.closed:
        return
    if not tape.by_id:
        return
    for a in arrays:
        if id(a) in tape.by_id:
            from . import autograd

            autograd.evaluate(tape)
            # the recording now reads values that are about to change: later ops start a new one
            for t in tape.live():
                t._tape, t._value = None, None
            tape.closed = True
            return


from .replay import module_call, setup as replay_setup  # noqa: E402  (replay builds on Tensor and Tape above)
