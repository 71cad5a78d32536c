"""graphc.replay: a training step recorded before is replayed, not recorded again.

Why: graphc.Tensor's autograd records every operation of a step into IR in Python. A loop
records the same graph every iteration; re-recording it op by op costs far more than the
compiled step it ends up running (issue 16: the S loop was ~2x torch eager, not 20x).

What: an outermost eager module call (`model(x)`, `crit(out, y)`) is recorded once as a
*fragment*: the nodes its forward emitted, with every value it read named by where it came
from (argument i, a Parameter by identity, a fresh Dropout seed). The fragment is kept per
module and call signature (argument shapes and dtypes; which earlier call's output an argument
is; Python scalars by value). A later call with the same signature, while nothing that could
change the recording has changed, does not run forward: it appends an event (its site and this
call's own external values) and returns lazy Tensors at once. When `loss.backward(); opt.step()`
then close a recording made only of events whose joined plan is known, graphc.autograd runs
that plan directly; anything else fills the graph from the events first (`fill`), which writes
exactly the nodes a full recording would have, and takes the ordinary path.

When a call is replayed instead of run (all must hold; anything else runs forward again):
  - the module's structure counter and attribute counter (nn.module: any Parameter or
    sub-module assignment, train()/eval(), requires_grad changes, any plain attribute
    assignment on any Module) are what they were when the fragment was recorded; a changed
    counter re-records the call and keeps the old fragment when the new one is the same;
  - grad mode is on and the call is not inside another recorded forward;
  - the recording of the call was clean: forward read no value (no .item(), printing,
    data-dependent branch), assigned no module attribute, kept no intermediate alive (no
    side channel), read only its arguments, Parameters and Dropout seeds (no array made
    inside forward, no buffer), returned lazy Tensors (one or a tuple), and drew no other
    random numbers (graphc.random's draw count moved only by its Dropout seeds).
What it cannot see: forward reading Python state that is not a Module attribute (a global,
a closure, a list mutated in place) to decide what to record. Set `graphc.replay.ENABLED =
False` (or GRAPHC_REPLAY=0) for such models; `GRAPHC_LOG=recompiles` logs every re-recording
whose fragment changed.
"""
from __future__ import annotations

import logging
import os
import weakref

import numpy as np

from . import eager as _eager
from . import random as _random
from .eager import Tensor
from .ir.graph import Node
from .tracing import _active, _eager_depth, from_eager, to_eager

ENABLED = os.environ.get("GRAPHC_REPLAY", "1") != "0"
log = logging.getLogger("graphc.recompiles")
stats = {"captures": 0, "replayed_calls": 0, "rerecorded": 0}

LAZY, DATA, OBJ, RNG = 0, 1, 2, 3  # where a fragment's external value comes from
_sites: dict[int, dict] = {}        # id(module) -> {call signature: Site}
_hot: dict[int, object] = {}        # id(module) -> _hot_call's function for its last replayed call
_seeds = _random.seeds              # the drawn block of Dropout seeds (next_seed pops from it)
_Parameter = None
_versions = None                    # nn.module's (structure, attribute) counters


class Fragment:
    """What one module call recorded: external values, nodes over local value indices, outputs."""

    __slots__ = ("ext", "nodes", "outputs", "out_types", "single", "norm", "per_call")

    def __init__(self, ext, nodes, outputs, out_types, single):
        self.ext, self.nodes, self.outputs, self.out_types, self.single = ext, nodes, outputs, out_types, single
        # what a replay records per call (Parameters are the same every call: read from ext when filled)
        self.per_call = tuple((k, o) for k, o, _ in ext if k != OBJ)
        # what two recordings must share to be the same (Parameters by identity)
        self.norm = (tuple((k, id(o) if k == OBJ else o, kind) for k, o, kind in ext), nodes, outputs, single)


class Site:
    """One module called with one signature: its fragment (None: not replayable, `why`)."""

    __slots__ = ("module", "frag", "v", "a", "why", "hot", "__weakref__")

    def __init__(self, module, frag, versions, why):
        self.module, self.frag, self.why = _ref(module), frag, why
        self.hot = {}  # what each argument was -> _hot_call's function for calls like that
        self.v, self.a = versions  # the (structure, attribute) counters it was recorded at (two ints: no tuple a call)

    versions = property(lambda self: (self.v, self.a))


_refs: dict[int, weakref.ref] = {}  # id(module) -> one weakref whose callback forgets the module's sites


def _ref(module) -> weakref.ref:
    key = id(module)
    r = _refs.get(key)
    if r is None or r() is not module:
        def forget(dead, key=key):
            if _refs.get(key) is dead:
                del _refs[key]
                _sites.pop(key, None)
                _hot.pop(key, None)

        r = _refs[key] = weakref.ref(module, forget)
    return r


# An event (one replayed, or recorded-as-fragment, call on a tape) is a tuple (site, binds, outs):
# binds are the call's own external values in frag.per_call order (an argument's data, a lazy
# argument's (event, output) position, a Dropout seed), outs its outputs' weakrefs. A tuple, not
# an object: a loop makes two a step. Once filled, tape.names[k] holds (input names of its
# external values in ext order, names of its outputs).


def reset() -> None:
    _sites.clear()
    _hot.clear()
    _refs.clear()
    for k in stats:
        stats[k] = 0


def setup(parameter_type, version, attr_version) -> None:
    """graphc.nn.module hands over Parameter and its (structure, attribute) counters when it is
    imported (it imports this module, so it cannot be imported from here at first)."""
    global _Parameter, _versions
    _Parameter, _versions = parameter_type, (version, attr_version)


# ------------------------------------------------------------------ the module call


def module_call(module, *args, **kwargs):
    """Module.__call__: inside a trace, forward; eagerly, replay a known call, or run (and maybe
    record) forward.

    (A loop runs this twice a step, so its common path is short: it is Module.__call__ itself,
    and a module's last call is replayed by a function written for it (_hot_call); otherwise
    the signature and the replay are written inline, each Python frame and allocation being a
    visible part of a small step.)"""
    if _tracing_now() is not None:  # current_tracer(), without its frame
        return module.forward(*args, **kwargs)
    if (kwargs or _eager._pending is not None or not ENABLED or _eager_depth.get()
            or not _grad_enabled()):
        return _forward(module, args, kwargs)
    tape = _eager._tape
    # the module's last replayed call, when every argument was a Tensor: a function written for
    # it (_hot_call) checks that this call is the same and replays it, or says None
    hot = _hot.get(id(module))
    if hot is not None:
        out = hot(args, tape)
        if out is not None:
            return out
    # the call's signature (_signature, inline), and what _hot checks
    sig = []
    checks = [None]
    for a in args:
        t = type(a)
        if t is Tensor:
            at = a._tape
            if at is not None and not at.closed:
                if at is not tape or a._ref is None:
                    return _forward(module, args, kwargs)
                t = a._type
                sig.append((a._ref, t.shape, t.dtype))  # (TensorType's own hash is a Python frame)
                checks.append((a._ref, t))
            elif a._requires_grad:
                return _forward(module, args, kwargs)  # a leaf that requires grad: its identity decides the graph
            else:
                t = a._type
                sig.append((t.shape, t.dtype, "T"))
                if at is None:
                    checks.append(t)
        elif t is np.ndarray or (isinstance(a, np.ndarray) and t is not _Parameter):
            sig.append((a.shape, a.dtype))
            if t is np.ndarray:
                checks.append(("A", a.shape, a.dtype))
        elif t in _SCALARS or a is None:
            sig.append((t, a))
        else:
            return _forward(module, args, kwargs)
    sig = tuple(sig)
    by_sig = _sites.get(id(module))
    site = by_sig.get(sig) if by_sig is not None else None
    if site is None or site.module() is not module:
        return _capture(module, args, sig, None)
    v, a = _versions
    if site.v != v[0] or site.a != a[0]:
        return _capture(module, args, sig, site)
    if site.frag is None:  # known not replayable (what it records marks the tape impure)
        return _forward(module, args, kwargs)
    if len(checks) == len(args) + 1 and site.frag.single:  # Tensors and arrays: the next call may skip the signature
        checks = tuple(checks[1:])
        fn = site.hot.get(checks)
        if fn is None:
            fn = site.hot[checks] = _hot_call(site, checks)
        _hot[id(module)] = fn
    frag = site.frag
    # the replay: this call's own external values, lazy outputs, one event on the open tape
    if tape is None or tape.closed:
        tape = _eager.open_tape()
    binds = []
    for kind, o in frag.per_call:
        if kind == DATA:
            a = args[o]
            t = type(a)
            # data is copied, as Tape.input_for does (the recording reads its values as they are now);
            # a Tensor is kept itself (its in-place writes run the recording first: flush_if_reads)
            binds.append(a if t is Tensor else a.copy() if t is np.ndarray else np.array(a, copy=True))
        elif kind == LAZY:
            binds.append(args[o]._ref)  # (event, output): not the tensor itself, which may die before the step
        else:  # a Dropout seed, an int (a graph input of its own once filled); next_seed(), inline
            binds.append(_seeds.pop() if _seeds else _random.next_seed())
    n = len(tape.events)
    if frag.single:
        out = object.__new__(Tensor)  # Tensor._lazy, inline
        out._data, out._tape, out._value, out._type, out._requires_grad, out._grad, out._ref = \
            None, tape, None, frag.out_types[0], False, None, _REF0[n] if n < _NREF else (n, 0)
        r = weakref.ref(out)
        tape.tensors.append(r)
        refs = (r,)
    else:
        out = tuple(Tensor._lazy(tape, None, t) for t in frag.out_types)
        refs = []
        for j, h in enumerate(out):
            h._ref = (n, j)
            refs.append(weakref.ref(h))
        tape.tensors += refs
    tape.events.append((site, binds, refs))
    tape.sites.append(site)
    stats["replayed_calls"] += 1
    return out


_SCALARS = frozenset((int, float, bool, str))
_NREF = 64
_REF0 = [(n, 0) for n in range(_NREF)]  # the (event, output) of a single-output event n: no tuple made a call
_grad_enabled = _eager._grad_enabled.get
_tracing_now = _active.get


def _hot_call(site: Site, checks: tuple):
    """A function call(args, tape) -> the call's output, or None: the replay of a call of `site`
    whose arguments are all Tensors or numpy arrays, written for what each argument was
    (`checks`: a data Tensor's TensorType object, a lazy argument's (event, output) and type,
    or ("A", shape, dtype) of an array), so the next call like it costs its checks and the
    replay itself (no signature, no loops).

    It answers None (module_call then takes its full path) unless: the same number of
    arguments; each a Tensor, a data one (no recording, not requiring grad) of that very
    TensorType object (graphc interns them by shape and dtype), or this recording's output of
    the same event and type; or a plain ndarray of that shape and dtype (copied, as every
    replayed call copies arrays); and the module counters the site was recorded at (a Parameter or
    sub-module assigned, a mode, requires_grad, any module attribute: re-recorded). Grad mode,
    tracing, nesting and a pending backward are module_call's own checks, made before."""
    frag = site.frag
    ns = {"Tensor": Tensor, "ndarray": np.ndarray, "site": site, "A": _versions[1], "open_tape": _eager.open_tape,
          "_eager": _eager, "seeds": _seeds, "next_seed": _random.next_seed, "new": object.__new__,
          "wref": weakref.ref, "REF0": _REF0, "NREF": _NREF, "OT": frag.out_types[0], "stats": stats}
    src = ["def call(args, tape):", f"    if len(args) != {len(checks)}:", "        return None"]
    lazy = False
    for k, c in enumerate(checks):
        src.append(f"    a{k} = args[{k}]")
        if type(c) is tuple and c[0] == "A":  # a numpy array of that shape and dtype
            ns[f"S{k}"], ns[f"D{k}"] = c[1], c[2]
            src.append(f"    if type(a{k}) is not ndarray or a{k}.shape != S{k} or a{k}.dtype != D{k}:")
        elif type(c) is tuple:
            lazy = True
            ns[f"R{k}"], ns[f"T{k}"] = c
            src.append(f"    if (type(a{k}) is not Tensor or a{k}._tape is not tape or a{k}._ref != R{k} "
                       f"or a{k}._type is not T{k} or tape.closed):")
        else:
            ns[f"T{k}"] = c
            src.append(f"    if type(a{k}) is not Tensor or a{k}._tape is not None or a{k}._type is not T{k} "
                       f"or a{k}._requires_grad:")
        src.append("        return None")
    src += ["    if site.a != A[0]:  # (nn.module bumps the attribute counter with the structure one)", "        return None"]
    if not lazy:
        src += ["    if tape is None or tape.closed:", "        tape = open_tape()"]
    binds = []
    for kind, o in frag.per_call:
        if kind == DATA and type(checks[o]) is tuple and checks[o][0] == "A":  # an array: copied, as module_call's replay does
            binds.append(f"a{o}.copy()")
        elif kind == DATA:
            binds.append(f"a{o}")  # a Tensor is kept itself, as module_call's replay keeps it
        elif kind == LAZY:
            binds.append(f"a{o}._ref")
        else:
            binds.append("(seeds.pop() if seeds else next_seed())")
    src += ["    n = len(tape.events)",
            f"    b = ({''.join(x + ', ' for x in binds)})",  # (a tuple: binds are never changed)
            "    out = new(Tensor)",
            "    out._data, out._tape, out._value, out._type, out._requires_grad, out._grad, out._ref = \\",
            "        None, tape, None, OT, False, None, REF0[n] if n < NREF else (n, 0)",
            "    r = wref(out)",
            "    tape.tensors.append(r)",
            "    tape.events.append((site, b, (r,)))",
            "    tape.sites.append(site)",
            "    stats['replayed_calls'] += 1",
            "    return out"]
    exec(compile("\n".join(src), f"<graphc replayed call {id(site):x}>", "exec"), ns)
    return ns["call"]


def _forward(module, args, kwargs):
    from .tracing import eager_forward

    return eager_forward(module.forward, args, kwargs)


def fill(tape) -> None:
    """Write the events not yet in tape's graph as nodes: the same inputs (names, order) and nodes
    a full recording of those calls would have made."""
    b = tape._b
    types = b.types
    events = tape.events
    names = tape.names
    while tape.filled < len(events):
        site, binds, outs = events[tape.filled]
        frag = site.frag
        vals = []
        own = iter(binds)
        for kind, o, ikind in frag.ext:
            if kind == OBJ:
                vals.append(tape.add_source(o, ikind))
                continue
            v = next(own)
            if kind == LAZY:
                vals.append(names[v[0]][1][v[1]])
            elif kind == RNG:
                vals.append(tape.add_source(np.asarray(v, dtype=np.int64), "rng"))  # a fresh array: its own input
            else:
                vals.append(tape.add_source(v, ikind))
        ext_names = list(vals)
        for op, ins, out_types, attrs, loc in frag.nodes:
            outs_ = tuple(b.fresh() for _ in out_types)
            for o, t in zip(outs_, out_types):
                types[o] = t
            b.nodes.append(Node(op, tuple(vals[i] for i in ins), outs_, out_types, attrs, loc, None))
            vals.extend(outs_)
        out_names = [vals[k] for k in frag.outputs]
        names.append((ext_names, out_names))
        for r, name in zip(outs, out_names):
            h = r()
            if h is not None:
                h._value = name
        tape.filled += 1


# ------------------------------------------------------------------ recording a call as a fragment


def _capture(module, args, sig, old):
    """Run forward with recording on; keep what it recorded as the site's fragment if it is clean."""
    tape = _eager.current_tape()
    b = tape._b
    n_nodes, n_tensors = len(b.nodes), len(tape.tensors)
    v, a = _versions
    before = (v[0], a[0])
    reads = _eager.reads
    draws = _random.generator().bit_generator.state  # (settled: the seeds handed out so far are drawn)
    wrapped = [to_eager(x) for x in args]
    token = _eager_depth.set(1)
    _eager.capturing += 1
    try:
        out = module.forward(*wrapped)
    except BaseException:
        tape.pure = False  # what it recorded before raising belongs to no event
        raise
    finally:
        _eager.capturing -= 1
        _eager_depth.reset(token)
    out = from_eager(out)
    why = None
    if _eager._tape is not tape or tape.closed or _eager._pending is not None or _eager.reads != reads:
        why = "forward read a value (a data-dependent recording)"
    elif (v[0], a[0]) != before:
        why = "forward assigned a module attribute"
    frag = names = None
    if why is None:
        frag, why, names = _fragment(tape, n_nodes, n_tensors, wrapped, out, draws)
    stats["captures"] += 1
    versions = (v[0], a[0])
    if frag is not None and old is not None and old.frag is not None and old.frag.norm == frag.norm:
        site = old  # re-recorded after a counter moved, and nothing changed: keep the site (and its plans)
        site.v, site.a = versions
    else:
        if old is not None:
            stats["rerecorded"] += 1
            if log.isEnabledFor(logging.INFO):
                log.info("eager call of %s (%s) recorded again, not replayed: %s", type(module).__name__,
                         _moved(old.versions, versions), why or _describe(old.frag, frag))
        site = Site(module, frag, versions, why)
        by_sig = _sites.get(id(module))
        if by_sig is None or not by_sig or next(iter(by_sig.values())).module() is not module:
            by_sig = _sites[id(module)] = {}
        by_sig[sig] = site
    if frag is None:
        if _eager._tape is tape:
            tape.pure = False
        return out
    # this call is the tape's next event (its nodes are already in the graph)
    outs = out if isinstance(out, tuple) else (out,)
    n = len(tape.events)
    refs = []
    for j, h in enumerate(outs):
        h._ref = (n, j)
        refs.append(weakref.ref(h))
    tape.events.append((site, _binds(tape, frag, wrapped, names), tuple(refs)))
    tape.sites.append(site)
    tape.names.append((names, [h._value for h in outs]))
    tape.filled += 1
    return out


def _moved(old, new) -> str:
    if old[0] != new[0]:
        return "a Parameter or sub-module was assigned, or a mode or requires_grad changed"
    return "a module attribute was assigned"


def _describe(old, new) -> str:
    """What differs between two fragments of one call, in the user's terms."""
    if old is None:
        return "it can be replayed now"
    for (op1, _, _, a1, _), (op2, _, _, a2, loc) in zip(old.nodes, new.nodes):
        if op1 != op2:
            return f"operation at {loc}: {op1} -> {op2} (a mode or control flow changed)"
        if a1 != a2:
            return f"{op2} at {loc}: attributes {dict(a1)} -> {dict(a2)}"
    if len(old.nodes) != len(new.nodes):
        return f"{len(old.nodes)} -> {len(new.nodes)} operations recorded (a mode or control flow changed)"
    for (k1, o1, kind1), (k2, o2, kind2) in zip(old.ext, new.ext):
        if k1 != k2 or (o1 is not o2 if k1 == OBJ else o1 != o2):
            return "it reads another Parameter or argument (a Parameter was replaced)"
        if kind1 != kind2:
            return "a Parameter's requires_grad changed"
    return "its inputs or outputs changed"


def _fragment(tape, n_nodes, n_tensors, wrapped, out, draws):
    """(Fragment, None), or (None, why the call cannot be replayed)."""
    outs = out if isinstance(out, tuple) else (out,)
    if not outs or any(type(h) is not Tensor or h._tape is not tape or h._value is None for h in outs):
        return None, "forward did not return recorded tensors (one, or a tuple)", None
    if len({id(h) for h in outs}) != len(outs):
        return None, "forward returned one tensor twice", None
    alive = {id(h) for h in outs}
    for r in tape.tensors[n_tensors:]:
        h = r()
        if h is not None and id(h) not in alive and h._tape is tape:
            return None, "forward kept an intermediate tensor (a side effect the replay would skip)", None
    b = tape._b
    nodes = b.nodes[n_nodes:]
    if not nodes:
        return None, "forward recorded nothing", None
    lazy_args = {x._value: i for i, x in enumerate(wrapped) if type(x) is Tensor and x._tape is tape}
    arg_ids = {id(x): i for i, x in enumerate(wrapped)}
    arg_arrays = [(i, x._data if type(x) is Tensor else x) for i, x in enumerate(wrapped)
                  if (type(x) is Tensor and x._data is not None) or (isinstance(x, np.ndarray) and type(x) is not _Parameter)]
    kinds = {i.name: i.kind for i in b.inputs}
    produced = {o for n in nodes for o in n.outputs}
    # external values, in order of first use (the order a full recording creates its inputs in)
    ext, ext_names, local = [], [], {}
    for node in nodes:
        for name in node.inputs:
            if name in local or name in produced:
                continue
            if name in lazy_args:
                e = (LAZY, lazy_args[name], None)
            elif name in kinds:
                kind = kinds[name]
                src = tape.origin.get(name)
                if kind == "rng":
                    e = (RNG, None, "rng")
                elif id(src) in arg_ids and type(src) is not _Parameter:
                    e = (DATA, arg_ids[id(src)], kind)
                elif type(src) is _Parameter:
                    e = (OBJ, src, kind)
                elif (i := _same_memory(src, arg_arrays)) is not None:
                    e = (DATA, i, kind)  # the argument seen through another view (np.asarray of it, say)
                else:
                    return None, f"forward read an array that is neither an argument nor a Parameter (%{name})", None
            else:
                return None, "forward used a tensor recorded outside it", None
            local[name] = len(ext)
            ext.append(e)
            ext_names.append(name)
    k = len(ext)
    for node in nodes:
        for o in node.outputs:
            local[o] = k
            k += 1
    fnodes = tuple((n.op, tuple(local[i] for i in n.inputs), n.types, n.attrs, n.loc) for n in nodes)
    outputs = []
    for h in outs:
        k = local.get(h._value)
        if k is None or k < len(ext):
            return None, "forward returned one of its inputs", None
        outputs.append(k)
    if not _only_seeds_drawn(draws, sum(1 for e in ext if e[0] == RNG)):
        return None, "forward drew random numbers other than its Dropout seeds", None
    return Fragment(tuple(ext), fnodes, tuple(outputs), tuple(h._type for h in outs),
                    not isinstance(out, tuple)), None, ext_names


def _only_seeds_drawn(before: dict, n: int) -> bool:
    """Whether graphc's generator moved by exactly n Dropout seeds since it was at `before`
    (a replay draws those seeds again, and nothing else)."""
    bg = _random.generator().bit_generator
    expect = type(bg)()
    expect.state = before
    if n:
        expect.random_raw(n)
    return expect.state == bg.state


def _same_memory(a, candidates):
    """The index of the argument whose array `a` views exactly (same memory, shape, strides, dtype)."""
    if not isinstance(a, np.ndarray):
        return None
    addr = a.__array_interface__["data"][0]
    for i, b in candidates:
        if (b.dtype == a.dtype and b.shape == a.shape and b.strides == a.strides
                and b.__array_interface__["data"][0] == addr):
            return i
    return None


def _binds(tape, frag, wrapped, names):
    """The call's own external values, recorded in full (what a replay of it would have bound)."""
    src_of = dict(zip((i.name for i in tape._b.inputs), tape._sources))
    return [wrapped[o]._ref if kind == LAZY else int(src_of[name]) if kind == RNG else src_of[name]
            for (kind, o, _), name in zip(frag.ext, names) if kind != OBJ]
