"""Memory planning: where every value of a plan lives, decided once per plan.

Intermediate values whose lifetimes (from the graph order) do not overlap share a buffer of
the same dtype and size class; buffers are regions of one arena array per dtype, allocated
once per input signature and reused by every call. Graph outputs (including values saved for
the backward) get buffers of their own. `reshape` outputs are views of their operand. An
output labelled "update:<input>" is written straight into that input's buffer (the Parameter
or optimizer-state array itself) when that is safe, else computed aside and copied back at the
end of the plan. `full` constants get buffers filled once at allocation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from graphc.ir import Graph, TensorType

from .kernels import KERNELS

ALIGN = 64  # bytes: buffer offsets are cache-line (and AVX-512) aligned
UPDATE = "update:"


@dataclass
class Slot:
    """Where one value lives. kind: input | buffer | const | alias (view of `target`, a reshape) |
    inplace (written into input `target`'s own buffer) | piece (a strided view inside concat
    output `target`'s buffer, at `view` = (element offset, element strides))."""

    value: str
    type: TensorType
    kind: str
    buffer: int | None = None
    target: str | None = None
    start: int = 0  # lifetime in node indices (len(nodes) = the end of the plan)
    end: int = 0
    view: tuple[int, tuple[int, ...]] | None = None  # a piece: (element offset, strides) in target's buffer


@dataclass
class Buffer:
    """A region of the dtype's arena shared by values with disjoint lifetimes."""

    id: int
    dtype: str
    nbytes: int
    role: str  # temp (shared by values with disjoint lifetimes) | output (own buffer) | const (filled once)
    values: list[str] = field(default_factory=list)
    lifetimes: list[tuple[int, int]] = field(default_factory=list)
    offset: int = 0  # bytes into the dtype's arena

    @property
    def name(self) -> str:
        return f"b{self.id}"

    @property
    def lifetime(self) -> tuple[int, int]:
        return (min(s for s, _ in self.lifetimes), max(e for _, e in self.lifetimes)) if self.lifetimes else (0, 0)

    @property
    def size_class(self) -> int:
        return size_class(self.nbytes)


@dataclass
class MemoryPlan:
    graph_name: str
    n_nodes: int
    slots: dict[str, Slot]
    buffers: list[Buffer]
    scratch: dict[int, list[Slot]]  # node index -> its kernel's temporaries
    output_copies: list[tuple[str, int]]  # (graph input, buffer): outputs that are inputs, copied at the end
    update_copies: list[tuple[str, str]]  # (value, input): updates computed aside, copied back at the end
    arena_bytes: dict[str, int]
    concats_in_place: frozenset[str] = frozenset()  # concat outputs whose pieces their producers wrote

    @property
    def peak_bytes(self) -> int:
        """Bytes allocated for the plan's own buffers (all live at once: they persist across calls)."""
        return sum(self.arena_bytes.values())

    @property
    def naive_bytes(self) -> int:
        """What one buffer per value (no sharing, no views, no in-place updates) would take."""
        vals = [s for s in self.slots.values() if s.kind != "input"]
        vals += [s for ss in self.scratch.values() for s in ss]
        return sum(s.type.nbytes for s in vals)

    def buffer_of(self, value: str) -> Buffer | None:
        s = self.slots[value]
        return self.buffers[s.buffer] if s.buffer is not None else None

    def __str__(self) -> str:
        saved = 1 - self.peak_bytes / self.naive_bytes if self.naive_bytes else 0.0
        lines = [f"memory plan {self.graph_name}: {len(self.buffers)} buffers, peak {self.peak_bytes:,} B "
                 f"(one buffer per value: {self.naive_bytes:,} B; sharing saves {saved:.0%})"]
        lines.append("arenas: " + ", ".join(f"{dt} {n:,} B" for dt, n in self.arena_bytes.items()) if self.arena_bytes
                     else "arenas: none")
        rows = [["buffer", "dtype", "bytes", "offset", "role", "lifetime", "values [first use, last use]"]]
        for b in self.buffers:
            vals = ", ".join(f"%{v} [{s},{e}]" for v, (s, e) in zip(b.values, b.lifetimes))
            life = b.lifetime
            rows.append([b.name, b.dtype, f"{b.nbytes:,}", str(b.offset), b.role, f"[{life[0]}, {life[1]}]", vals])
        widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]) - 1)]
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
        views = [s for s in self.slots.values() if s.kind in ("alias", "inplace", "piece")]
        for s in views:
            if s.kind == "piece":
                lines.append(f"  %{s.value}: written by its kernel into %{s.target} at element {s.view[0]}, "
                             f"strides {list(s.view[1])} (the concat moves nothing)")
                continue
            how = "reshape view of" if s.kind == "alias" else "written in place into"
            lines.append(f"  %{s.value}: {how} %{s.target}")
        for v, b in self.output_copies:
            lines.append(f"  output %{v} is an input: copied into b{b} at the end")
        for v, x in self.update_copies:
            lines.append(f"  %{v} computed aside, copied into %{x} at the end (in place was unsafe)")
        return "\n".join(lines)


def size_class(nbytes: int) -> int:
    c = ALIGN
    while c < nbytes:
        c *= 2
    return c


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def update_targets(g: Graph) -> dict[str, str]:
    """value -> the input its "update:<input>" output writes back into."""
    out = {}
    for o in g.outputs:
        if o.label and o.label.startswith(UPDATE):
            target = o.label[len(UPDATE):]
            if target not in g.input_by_name:
                from graphc.ir import GraphcError

                raise GraphcError(f"plan {g.name}: output %{o.value} is labelled {o.label!r} but {target!r} is not an input")
            out[o.value] = target
    return out


def plan_memory(g: Graph) -> MemoryPlan:
    n_nodes = len(g.nodes)
    end = n_nodes  # graph outputs are read at the end
    slots: dict[str, Slot] = {i.name: Slot(i.name, i.type, "input") for i in g.inputs}
    plain_outputs = {o.value for o in g.outputs if not (o.label and o.label.startswith(UPDATE))}
    updates = update_targets(g)
    output_values = plain_outputs | set(updates)

    # reshape outputs are views of their operand's storage (unless they are outputs themselves)
    root: dict[str, str] = {i.name: i.name for i in g.inputs}
    for n in g.nodes:
        for o in n.outputs:
            root[o] = o
        if n.op == "reshape" and n.out not in output_values:
            root[n.out] = root[n.inputs[0]]

    # the last time each storage root is read (a node index, or `end` for graph outputs)
    last: dict[str, int] = {}
    for k, n in enumerate(g.nodes):
        for i in n.inputs:
            last[root[i]] = max(last.get(root[i], -1), k)
    for o in g.outputs:
        last[root[o.value]] = end

    inplace = _safe_updates(g, updates, root, last)
    update_copies = [(v, x) for v, x in updates.items() if v not in inplace]
    pieces = _concat_pieces(g, root, output_values | set(inplace), set(inplace))  # piece root -> (concat output, view)
    first_piece: dict[str, int] = {}
    for k, n in enumerate(g.nodes):
        for o in n.outputs:
            if o in pieces:
                first_piece.setdefault(pieces[o][0], k)
    concat_buffer: dict[str, int] = {}

    buffers: list[Buffer] = []
    free: dict[tuple[str, int], list[int]] = {}
    releases: dict[int, list[int]] = {}
    scratch: dict[int, list[Slot]] = {}

    def new_buffer(t: TensorType, role: str, value: str, start: int, stop: int) -> int:
        b = Buffer(len(buffers), t.dtype, t.nbytes, role, [value], [(start, stop)])
        buffers.append(b)
        return b.id

    def take(t: TensorType, value: str, start: int, stop: int) -> int:
        key = (t.dtype, size_class(t.nbytes))
        pool = free.get(key)
        if pool:
            bid = min(pool)
            pool.remove(bid)
            b = buffers[bid]
            b.nbytes = max(b.nbytes, t.nbytes)
            b.values.append(value)
            b.lifetimes.append((start, stop))
        else:
            bid = new_buffer(t, "temp", value, start, stop)
        releases.setdefault(stop, []).append(bid)
        return bid

    def concat_buffer_of(c: str, k: int) -> int:
        """The buffer of concat output c, taken when its first piece is made (at node k)."""
        if c not in concat_buffer:
            t, stop = g.types[c], last.get(c, k)
            concat_buffer[c] = (new_buffer(t, "output", c, k, end) if c in output_values else take(t, c, k, stop))
        return concat_buffer[c]

    for k, n in enumerate(g.nodes):
        for o, t in zip(n.outputs, n.types):
            if o in pieces:
                c, view = pieces[o]
                slots[o] = Slot(o, t, "piece", concat_buffer_of(c, k), target=c, start=k, end=last.get(o, k), view=view)
            elif o in first_piece:
                stop = end if o in output_values else last.get(o, k)
                slots[o] = Slot(o, t, "buffer", concat_buffer_of(o, k), start=first_piece[o], end=stop)
            elif o in inplace:
                slots[o] = Slot(o, t, "inplace", target=inplace[o], start=k, end=last.get(o, k))
            elif root[o] != o:
                slots[o] = Slot(o, t, "alias", target=n.inputs[0], start=k, end=last.get(root[o], k))
            elif n.op == "full":
                slots[o] = Slot(o, t, "const", new_buffer(t, "const", o, 0, end), start=k, end=end)
            elif o in output_values:
                slots[o] = Slot(o, t, "buffer", new_buffer(t, "output", o, k, end), start=k, end=end)
            else:
                stop = last.get(o, k)
                slots[o] = Slot(o, t, "buffer", take(t, o, k, stop), start=k, end=stop)
        if n.body is not None:  # a kernel node: its generated function's temporaries
            from .lower import kernel_scratch

            temps = kernel_scratch(n)
        else:
            spec = KERNELS[n.op].scratch if n.op in KERNELS else None
            temps = spec(n, g.types) if spec else ()
        for j, t in enumerate(temps):
            name = f"{n.outputs[0]}.scratch{j}"
            bid = take(t, name, k, k)
            scratch.setdefault(k, []).append(Slot(name, t, "buffer", bid, start=k, end=k))
        for bid in releases.pop(k, ()):  # free after the node ran: its outputs never overlap its inputs
            b = buffers[bid]
            free.setdefault((b.dtype, size_class(b.nbytes)), []).append(bid)

    output_copies = []
    for o in g.outputs:
        if o.value in plain_outputs and o.value in g.input_by_name and o.value not in [v for v, _ in output_copies]:
            t = g.types[o.value]
            output_copies.append((o.value, new_buffer(t, "output", o.value, end, end)))

    arena: dict[str, int] = {}
    for b in buffers:
        b.offset = arena.get(b.dtype, 0)
        arena[b.dtype] = b.offset + _align(b.nbytes)
    return MemoryPlan(g.name, n_nodes, slots, buffers, scratch, output_copies, update_copies, arena,
                      frozenset(first_piece))


def _concat_pieces(g: Graph, root: dict[str, str], taken: set[str], inplace: set[str]) -> dict[str, tuple[str, tuple]]:
    """{piece root: (concat output, (element offset, strides))} for each plain `concat` whose every
    piece is (a reshape view of) the output of a kernel that can write it through those strides,
    read by nothing but that concat and reshape views of it, no plan output; `taken`: values
    with storage decided elsewhere (outputs, in-place updates), `inplace` the updates written into
    their inputs (a concat among them keeps its copy)."""
    from graphc.ir.strides import _reshape, contiguous

    from .lower_strided import writes_through

    readers: dict[str, list] = {}
    for n in g.nodes:
        for i in n.inputs:
            readers.setdefault(root[i], []).append(n)
    producer = {o: n for n in g.nodes for o in n.outputs}
    found: dict[str, tuple[str, tuple]] = {}
    for n in g.nodes:
        if n.op != "concat" or n.body is not None or n.out in inplace or len(set(n.inputs)) != len(n.inputs):
            continue
        dim, st = n.attr["dim"], contiguous(n.types[0].shape)[2]
        mine, at = {}, 0
        for v in n.inputs:
            r, t = root[v], g.types[v]
            p = producer.get(r)
            ok = (p is not None and p.body is not None and p.attr.get("kind") == "strided_gemm" and len(p.outputs) == 1
                  and r not in taken and r not in mine and t.size > 0
                  and all(u is n or (u.op == "reshape" and root[u.out] == r) for u in readers.get(r, ())))
            view = _reshape((at * st[dim], t.shape, st), g.types[r].shape) if ok else None
            if view is None or not writes_through(p, view[2]):
                break
            mine[r] = (n.out, (view[0], view[2]))
            at += t.shape[dim]
        else:
            found.update(mine)
    return found


def _may_share(n, x: str, root: dict[str, str]) -> bool:
    """Whether node n may write its output into input x's buffer: its kernel reads x elementwise
    (inplace=True, and x itself, not a view of it), or only at the input positions it names."""
    if n.body is not None and len(n.body.nodes) == 1 and n.body.nodes[0].inputs == n.inputs:
        n = n.body.nodes[0]  # a kernel of one member (an addmm as loops) reads its operands as that op does
    k = KERNELS.get(n.op)
    if k is None or not k.inplace:
        return False
    allowed = range(len(n.inputs)) if k.inplace is True else k.inplace
    return all(i == x and j in allowed for j, i in enumerate(n.inputs) if root[i] == x)


def _safe_updates(g: Graph, updates: dict[str, str], root: dict[str, str], last: dict[str, int]) -> dict[str, str]:
    """The "update:" outputs that can be written straight into their target input's buffer.

    Safe when the value is computed by a node (not an input, view or constant), nothing reads
    the target after that node, the target is updated once and is no plain output, and the node
    either does not read the target or reads it elementwise at the same shape (kernel.inplace)."""
    counts: dict[str, int] = {}
    for x in updates.values():
        counts[x] = counts.get(x, 0) + 1
    plain = {o.value for o in g.outputs if not (o.label and o.label.startswith(UPDATE))}
    index = {o: k for k, n in enumerate(g.nodes) for o in n.outputs}
    safe = {}
    for v, x in updates.items():
        k = index.get(v)
        if k is None or root[v] != v or counts[x] > 1 or x in plain or v in plain:
            continue
        n = g.nodes[k]
        if n.op in ("full", "reshape") or g.types[x] != g.types[v]:
            continue
        reads_target = [i for i in n.inputs if root[i] == x]
        if last.get(x, -1) > k:
            continue
        if reads_target and not _may_share(n, x, root):
            continue
        safe[v] = x
    return safe
