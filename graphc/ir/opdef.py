"""The op table mechanism: one OpDef per op holds everything the IR knows about it.

An entry has the op's name, arity, attribute schema, shape/dtype rule (`infer`), numpy
reference kernel (`reference`) and VJP rule (`vjp`). Native kernels live in runtime/,
keyed by the same name. Tests walk the table and fail when any op lacks a piece.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ShapeError
from .types import TensorType

REQUIRED = object()  # attribute default meaning "must be given"


class _NoGradient:
    """VJP marker for ops that have no gradient (integer/random outputs, backward and update ops)."""

    def __init__(self, why: str):
        self.why = why

    def __repr__(self):
        return f"no_gradient({self.why!r})"


def no_gradient(why: str) -> _NoGradient:
    return _NoGradient(why)


_ATTR_KINDS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "ints": lambda v: isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
}


@dataclass(frozen=True)
class Attr:
    kind: str  # int | float | bool | str | ints
    default: Any = REQUIRED
    choices: tuple | None = None


@dataclass
class OpDef:
    name: str
    arity: tuple[int, int]  # (min, max) number of inputs
    infer: Callable[..., Any]  # infer(in_types: list[TensorType], **attrs) -> TensorType | tuple
    reference: Callable[..., Any]  # reference(*arrays, **attrs) -> ndarray | tuple
    attrs: dict[str, Attr] = field(default_factory=dict)
    vjp: Callable[..., Any] | _NoGradient | None = None  # set by the autodiff rules
    doc: str = ""
    # Properties passes and tools ask about, kept here rather than in lists of op names:
    #   "recompute": one cheap pass, no reduction or GEMM: partition redoes it instead of saving
    #   "fused": several ops in one (drawn and reported as fused)
    #   "backward": only emitted by VJP rules;  "optimizer": an optimizer update
    #   "collective": talks to the other processes of a data-parallel job (every rank runs it)
    #   "composite": no native kernel: passes/decompose.py always rewrites it into its decomposition
    tags: frozenset[str] = frozenset()
    # How the kernel pass may fuse it (TVM's pattern kinds): "elementwise" (one output element
    # from the same element of each input), "broadcast" (elementwise after numpy broadcasting),
    # "injective" (each output element reads one input element somewhere: reshape, transpose,
    # slice, pad, concat, gather), "reduce", "gemm" (a BLAS call that can take an elementwise
    # epilogue) or "opaque" (a kernel of its own; nothing fuses across it).
    kind: str | None = None
    # decompose(b, node) -> output value(s): the op written in other ops (b.emit, b.types), for
    # passes/decompose.py; an op that gives no reference or VJP gets them from it (derive()).
    decompose: Callable[..., Any] | None = None

    # Decorators so an op's rule, reference kernel and VJP sit on adjacent lines.
    def ref(self, fn):
        self.reference = fn
        return fn

    def grad(self, fn):
        self.vjp = fn
        return fn

    def decomp(self, fn):
        self.decompose = fn
        return fn

    def normalize_attrs(self, given: dict) -> dict[str, Any]:
        """Fill defaults, coerce lists to tuples and floats, reject unknown or ill-typed attributes."""
        unknown = sorted(set(given) - set(self.attrs))
        if unknown:
            raise ShapeError(f"{self.name}: unknown attribute(s) {unknown}; expected {sorted(self.attrs)}")
        out = {}
        for key in sorted(self.attrs):
            spec = self.attrs[key]
            if key in given:
                v = given[key]
            elif spec.default is REQUIRED:
                raise ShapeError(f"{self.name}: missing attribute {key!r} ({spec.kind})")
            else:
                v = spec.default
            if isinstance(v, list):
                v = tuple(v)
            if spec.kind == "ints" and isinstance(v, tuple):
                v = tuple(int(x) if hasattr(x, "__index__") else x for x in v)
            if spec.kind == "float" and isinstance(v, (int, float)) and not isinstance(v, bool):
                v = float(v)
            if not _ATTR_KINDS[spec.kind](v):
                raise ShapeError(f"{self.name}: attribute {key}={v!r} should be {spec.kind}")
            if spec.choices is not None and v not in spec.choices:
                raise ShapeError(f"{self.name}: attribute {key}={v!r} should be one of {spec.choices}")
            out[key] = v
        return out

    def infer_types(self, in_types: list[TensorType], attrs: dict) -> tuple[TensorType, ...]:
        lo, hi = self.arity
        if not lo <= len(in_types) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise ShapeError(f"{self.name} takes {want} inputs, got {len(in_types)}")
        t = self.infer(in_types, **attrs)
        return tuple(t) if isinstance(t, (tuple, list)) else (t,)


OPS: dict[str, OpDef] = {}


TAGS = frozenset({"recompute", "fused", "backward", "optimizer", "collective", "composite"})
KINDS = ("elementwise", "broadcast", "injective", "reduce", "gemm", "opaque")


def defop(name: str, arity, attrs: dict | None = None, doc: str = "", tags=(), kind: str | None = None):
    """Decorator-style registration: `@defop(...)` on the infer rule, then `.reference` below it.

    `kind` (one of KINDS) is required: tests fail for an op that does not say how it fuses."""
    arity = (arity, arity) if isinstance(arity, int) else tuple(arity)
    if not TAGS.issuperset(tags):
        raise ValueError(f"op {name!r}: unknown tags {sorted(set(tags) - TAGS)}; known: {sorted(TAGS)}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"op {name!r}: unknown fusion kind {kind!r}; known: {KINDS}")

    def register(infer):
        if name in OPS:
            raise ValueError(f"op {name!r} is defined twice")
        OPS[name] = OpDef(name, arity, infer, reference=None, attrs=dict(attrs or {}),
                           doc=doc or (infer.__doc__ or ""), tags=frozenset(tags), kind=kind)
        return OPS[name]

    return register


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise ShapeError(f"unknown op {name!r}; known ops: {', '.join(sorted(OPS))}") from None


# ------------------------------------------------------------------ pieces derived from a decomposition


def decomposed_graph(op: OpDef, in_types, attrs: dict):
    """The graph of op's decomposition on inputs %in0, %in1, ... of `in_types`."""
    from .graph import GraphBuilder, Node

    b = GraphBuilder(op.name)
    names = [b.add_input(f"in{k}", t) for k, t in enumerate(in_types)]
    attrs = op.normalize_attrs(dict(attrs))
    outs = op.infer_types(list(in_types), attrs)
    node = Node(op.name, tuple(names), tuple(f"out{k}" for k in range(len(outs))), tuple(outs), tuple(attrs.items()))
    got = op.decompose(b, node)
    return b.build(list(got) if isinstance(got, (tuple, list)) else [got])


def _derived_reference(op: OpDef):
    def reference(*arrays, **attrs):
        from .interpreter import interpret
        from .types import TensorType

        g = decomposed_graph(op, [TensorType.of(a) for a in arrays], attrs)
        res = interpret(g, list(arrays))
        return tuple(res) if len(res) > 1 else res[0]

    reference.__doc__ = f"{op.name}'s reference: its decomposition on the reference interpreter"
    return reference


class _Recorder:
    """The VJP builder as a decomposition sees it, remembering the nodes it emits."""

    def __init__(self, b):
        self.b, self.nodes = b, []

    @property
    def types(self):
        return self.b.types

    def emit(self, op: str, inputs=(), attrs: dict | None = None):
        from .graph import Node

        outs = self.b.emit(op, inputs, attrs)
        names = outs if isinstance(outs, tuple) else (outs,)
        full = OPS[op].normalize_attrs(dict(attrs or {}))
        self.nodes.append(Node(op, tuple(inputs), names, tuple(self.b.types[o] for o in names), tuple(full.items())))
        return outs


def _derived_vjp(op: OpDef):
    def vjp(b, node, gys, needs):
        """Recompute the decomposition in the backward, then run the VJP rules of its nodes in
        reverse (reverse mode over the few nodes of one op), summing gradients of reused values."""
        rec = _Recorder(b)
        outs = op.decompose(rec, node)
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        grads: dict[str, str] = {o: g for o, g in zip(outs, gys) if g is not None}
        for n in reversed(rec.nodes):
            gouts = [grads.get(o) for o in n.outputs]
            rule = OPS[n.op].vjp
            if all(g is None for g in gouts) or rule is None or isinstance(rule, _NoGradient):
                continue
            if len(gouts) == 1 or all(g is not None for g in gouts):
                want = [b.types[i].is_float for i in n.inputs]
                for i, g in zip(n.inputs, rule(b, n, gouts, want)):
                    if g is not None and b.types[i].is_float:
                        grads[i] = g if i not in grads else b.emit("add", [grads[i], g])
        result = []
        for i, need in zip(node.inputs, needs):
            if not need:
                result.append(None)
            elif i in grads:
                result.append(grads[i])
            else:  # no path from this input to the outputs: its gradient is zero
                t = b.types[i]
                result.append(b.emit("full", [], {"shape": t.shape, "value": 0.0, "dtype": t.dtype}))
        return result

    return vjp


def derive() -> None:
    """Give every op with a decomposition but no reference (or no VJP) the derived one."""
    for op in OPS.values():
        if op.decompose is None:
            continue
        if op.reference is None:
            op.reference = _derived_reference(op)
        if op.vjp is None:
            op.vjp = _derived_vjp(op)
