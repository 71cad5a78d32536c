"""The graph IR: an ordered SSA graph of small immutable nodes.

A Graph is a value: passes never mutate one, they build a new one (GraphBuilder). Value names
are plain strings printed with a leading `%` (`%0`, `%x`, `%linear1.weight`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable

from .types import TensorType

KERNEL = "kernel"  # the op name of a kernel-stage node with a body (not an op-table entry)
KERNEL_KINDS = ("elementwise", "gemm", "reduce", "rows", "strided_gemm")
GEMM_IMPLS = ("blas", "loops")  # a gemm kernel's {impl=...}: a BLAS call, or a generated loop nest
# a gemm kernel split over threads (passes/parallel.py): what its tasks share out. "rows": rows of C,
# each task its rows' GEMM and then their epilogue; "gemm_rows" / "gemm_cols": rows / columns of C
# for the GEMM only, the epilogue after the join on one thread
GEMM_SPLITS = ("rows", "gemm_rows", "gemm_cols")

# What a graph input is for; the runtime and the pictures treat the kinds differently.
# "hyper": an optimizer hyperparameter (lr, betas, ...), a runtime f64[] read from param_groups at each step.
# "comm": a communicator (handles of the process group) that collectives such as all_reduce read.
# "buffer": a module buffer (BatchNorm's running statistics), read and updated in place.
INPUT_KINDS = ("input", "param", "state", "hyper", "rng", "saved", "grad", "comm", "buffer")

# What a node is part of, recorded where it is made: tracing and eager recording make forward
# nodes, autodiff backward nodes (every node with grad_of), the train-step build optimizer nodes;
# a pass that replaces nodes gives the new ones the phase of the nodes they replace.
PHASES = ("forward", "backward", "optimizer")


@dataclass(frozen=True)
class Input:
    name: str
    type: TensorType
    kind: str = "input"

    def __post_init__(self):
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"input kind {self.kind!r} is not one of {INPUT_KINDS}")


@dataclass(frozen=True)
class Node:
    """One op application. Most ops have one output; backward and optimizer ops may have several."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    types: tuple[TensorType, ...]
    attrs: tuple[tuple[str, Any], ...] = ()
    loc: str | None = None  # the user's source line, "simple_net.py:14"
    grad_of: str | None = None  # for backward nodes: the forward value this is a gradient for
    # A `kernel` node (the kernel stage, passes/kernels.py) runs its body, a graph whose inputs
    # are the node's operands (same names) and whose outputs are the node's outputs (same
    # names): values made and used only inside the body never exist outside it.
    body: "Graph | None" = None
    phase: str = "forward"  # one of PHASES

    @property
    def out(self) -> str:
        """The single output's name (most ops have exactly one)."""
        assert len(self.outputs) == 1, f"{self.op} has {len(self.outputs)} outputs"
        return self.outputs[0]

    @property
    def type(self) -> TensorType:
        assert len(self.types) == 1, f"{self.op} has {len(self.types)} outputs"
        return self.types[0]

    @cached_property
    def attr(self) -> dict[str, Any]:
        return dict(self.attrs)

    def replace(self, **changes) -> "Node":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Output:
    value: str
    # A role for the runtime and readers: "loss", "grad:linear1.weight", "saved",
    # "update:linear1.weight" (written back into that input's buffer, i.e. in place).
    label: str | None = None


@dataclass(frozen=True)
class Graph:
    name: str
    inputs: tuple[Input, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[Output, ...]
    # Free-form notes (e.g. which pass produced it); not part of equality or the text form.
    meta: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    # ---- lookups (derived, cached: a Graph never changes) ----
    @cached_property
    def types(self) -> dict[str, TensorType]:
        t = {i.name: i.type for i in self.inputs}
        for n in self.nodes:
            t.update(zip(n.outputs, n.types))
        return t

    @cached_property
    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs}

    @cached_property
    def users(self) -> dict[str, list[Node]]:
        u: dict[str, list[Node]] = {name: [] for name in self.types}
        for n in self.nodes:
            for i in dict.fromkeys(n.inputs):
                u.setdefault(i, []).append(n)
        return u

    @cached_property
    def input_by_name(self) -> dict[str, Input]:
        return {i.name: i for i in self.inputs}

    def type_of(self, value: str) -> TensorType:
        return self.types[value]

    def producer(self, value: str) -> Node | None:
        return self.producers.get(value)

    def uses(self, value: str) -> int:
        """How many nodes and graph outputs read `value`."""
        return len(self.users.get(value, ())) + sum(o.value == value for o in self.outputs)

    def inputs_of_kind(self, *kinds: str) -> list[Input]:
        return [i for i in self.inputs if i.kind in kinds]

    @property
    def output_values(self) -> list[str]:
        return [o.value for o in self.outputs]

    def replace(self, **changes) -> "Graph":
        return dataclasses.replace(self, **changes)

    # ---- views ----
    def __str__(self) -> str:
        from .text import print_graph

        return print_graph(self)

    def verify(self) -> "Graph":
        """Check the IR invariants; raise VerifyError naming the node. Returns self to chain."""
        from .verify import verify

        verify(self)
        return self

    def to_networkx(self):
        """A networkx.DiGraph: one vertex per input and node (keyed by its first output value),
        edges carry the value name and type. Analyses use networkx's algorithms on it."""
        import networkx as nx

        g = nx.DiGraph()
        for i in self.inputs:
            g.add_node(i.name, kind=i.kind, op=None, type=i.type)
        vertex = {i.name: i.name for i in self.inputs}
        for n in self.nodes:
            v = n.outputs[0]
            g.add_node(v, kind="node", op=n.op, node=n, type=n.types[0])
            for o in n.outputs:
                vertex[o] = v
            for i in n.inputs:
                if i in vertex:
                    g.add_edge(vertex[i], v, value=i, type=self.types.get(i))
        return g

    def renumbered(self) -> "Graph":
        """Rename numeric values to 0, 1, 2, ... in definition order (named values keep names)."""
        mapping: dict[str, str] = {}
        k = 0
        for n in self.nodes:
            for o in n.outputs:
                if o.isdigit():
                    mapping[o] = str(k)
                    k += 1
        if all(a == b for a, b in mapping.items()):
            return self
        return rename_values(self, mapping)


def rename_values(g: Graph, mapping: dict[str, str]) -> Graph:
    r = lambda v: mapping.get(v, v)  # noqa: E731
    nodes = tuple(
        n.replace(
            inputs=tuple(map(r, n.inputs)),
            outputs=tuple(map(r, n.outputs)),
            grad_of=r(n.grad_of) if n.grad_of else None,
            body=rename_values(n.body, mapping) if n.body is not None else None,
        )
        for n in g.nodes
    )
    inputs = tuple(dataclasses.replace(i, name=r(i.name)) for i in g.inputs)
    outputs = tuple(Output(r(o.value), o.label) for o in g.outputs)
    return Graph(g.name, inputs, nodes, outputs, dict(g.meta))


def kernel_node(members: list[Node], inputs: list[str], outputs: list[str], types: dict, kind: str,
                impl: str | None = None) -> Node:
    """A kernel-stage node running `members` (in order) as one kernel: operands `inputs`,
    results `outputs` (values of the members that are used outside them). `impl` (a gemm kernel
    only): how its GEMM runs, one of GEMM_IMPLS; absent means a BLAS call."""
    body = Graph(KERNEL, tuple(Input(v, types[v]) for v in inputs), tuple(members), tuple(Output(o) for o in outputs))
    attrs = (("impl", impl), ("kind", kind)) if impl is not None else (("kind", kind),)  # sorted, as parsed
    return Node(KERNEL, tuple(inputs), tuple(outputs), tuple(types[o] for o in outputs), attrs, None,
                None, body, kernel_phase(members))


def kernel_phase(members: Iterable[Node]) -> str:
    """A kernel's phase: its members' latest (a weight-gradient GEMM that also applies the SGD
    update finishes in the optimizer phase). The inspect layer reads the members themselves."""
    return max((m.phase for m in members), key=PHASES.index, default="forward")


def members(g: Graph):
    """Every node of g with kernel nodes replaced by their members (the plan before grouping)."""
    for n in g.nodes:
        if n.body is not None:
            yield from n.body.nodes
        else:
            yield n


class GraphBuilder:
    """Appends nodes in order, inferring each output type from the op table.

    Used by tracing, autodiff and every pass that builds a new graph. Fresh names are numbers
    that never clash with names already in use.
    """

    def __init__(self, name: str = "graph", like: Graph | None = None):
        self.name = name
        self.inputs: list[Input] = []
        self.nodes: list[Node] = []
        self.types: dict[str, TensorType] = {}
        self._next = 0
        self.phase = "forward"  # stamped on every emitted node without grad_of or its own phase
        if like is not None:
            for n in like.nodes:
                for o in n.outputs:
                    if o.isdigit():
                        self._next = max(self._next, int(o) + 1)

    def fresh(self) -> str:
        name = str(self._next)
        self._next += 1
        return name

    def add_input(self, name: str, type: TensorType, kind: str = "input") -> str:
        if name in self.types:
            raise ValueError(f"value %{name} is defined twice")
        self.inputs.append(Input(name, type, kind))
        self.types[name] = type
        return name

    def emit(self, op: str, inputs: Iterable[str] = (), attrs: dict | None = None, *,
             loc: str | None = None, grad_of: str | None = None, outputs: Iterable[str] | None = None,
             phase: str | None = None):
        """Add `op(inputs) {attrs}`; return its output name (or a tuple for multi-output ops).

        Its phase: `phase` if given, else backward for a gradient (grad_of), else the builder's.

        Raises ShapeError (from the op's rule) when the operand types do not fit.
        """
        from .ops import get_op

        inputs = tuple(inputs)
        opdef = get_op(op)
        full_attrs = opdef.normalize_attrs(attrs or {})
        in_types = [self.types[i] for i in inputs]
        out_types = opdef.infer_types(in_types, full_attrs)
        outs = tuple(outputs) if outputs is not None else tuple(self.fresh() for _ in out_types)
        for o, t in zip(outs, out_types):
            self.types[o] = t
        phase = phase or ("backward" if grad_of else self.phase)
        self.nodes.append(Node(op, inputs, outs, tuple(out_types), tuple(full_attrs.items()), loc, grad_of, None, phase))
        return outs[0] if len(outs) == 1 else outs

    def add_node(self, node: Node) -> Node:
        """Copy an existing node as is (its types are trusted; verify() rechecks them)."""
        for o, t in zip(node.outputs, node.types):
            self.types[o] = t
            if o.isdigit():
                self._next = max(self._next, int(o) + 1)
        self.nodes.append(node)
        return node

    def build(self, outputs: Iterable[str | Output], meta: dict | None = None) -> Graph:
        outs = tuple(o if isinstance(o, Output) else Output(o) for o in outputs)
        return Graph(self.name, tuple(self.inputs), tuple(self.nodes), outs, dict(meta or {}))
