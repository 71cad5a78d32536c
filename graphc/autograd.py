"""graphc.autograd: runs what graphc.Tensor recorded (the face: it wires the tape to passes and runtime).

    backward(root)   the recorded graph + autodiff (the root seeded with 1, or the given gradient)
                     -> the pass pipeline (clean-ups, fusion, autodiff, clean-ups) -> one plan,
                     run once; every live recorded value gets its value, leaves accumulate .grad
    evaluate(tape)   the forward values of every live recorded value (the recording stays open)

Plans are cached by the graph's structure (its inputs' types, nodes with attributes and source
lines, outputs) and what is differentiated. A structure seen for the first time runs on the
reference interpreter (no compile: the first iteration stays fast); from its second sighting
(COMPILE_AFTER) it is compiled to native code once and every later sighting is one native call.
`stats` counts compiles, recompiles and runs; `GRAPHC_LOG=recompiles` logs why each new plan of
an already compiled call site was needed (which input's shape or dtype, which node changed).
"""
from __future__ import annotations

import logging

import numpy as np

from . import eager as _eager
from .eager import Tensor
from .ir import GraphcError, interpret

COMPILE_AFTER = 2  # sightings of one structure before it is compiled (1: compile at once)
MODE = "jit"       # "interpret": run every plan on the reference interpreter
log = logging.getLogger("graphc.recompiles")
stats = {"compiles": 0, "recompiles": 0, "native_runs": 0, "interpreted_runs": 0, "joined_steps": 0,
         "replayed_steps": 0}


class _Entry:
    """One structure: how often it was seen, and its compiled plan once it has one."""

    __slots__ = ("seen", "exe", "order", "graph", "labels", "hyper", "grad_slots")

    def __init__(self, graph):
        self.seen, self.exe, self.order, self.graph, self.labels = 0, None, None, graph, None


_cache: dict[tuple, _Entry] = {}
_sites: dict[tuple, object] = {}  # call site -> the graph last compiled there (for recompile reasons)


def reset() -> None:
    """Forget every cached plan and counter (tests), and start the next recording on a new tape:
    operations recorded before (and never read) would otherwise join the next loop's first step."""
    from . import replay

    flush()
    _eager._tape = None
    global _last, fast_step
    _cache.clear()
    _sites.clear()
    _replays.clear()
    _last, fast_step = None, join_step
    replay.reset()
    for k in stats:
        stats[k] = 0


# ------------------------------------------------------------------ entry points (from graphc.eager)


def evaluate(tape) -> None:
    if _eager._pending is not None and _eager._pending[1] is tape:
        flush()  # the deferred backward computes every live value of this recording
        return
    live = [t for t in tape.live() if t._data is None]
    if not live:
        return
    graph = tape.builder.build([t._value for t in live])
    values, _ = _run(graph, tape, wrt=(), seeded=False, gradient=None)
    for t, v in zip(live, values):
        t._data = v


def backward(root, gradient, inputs=None):
    """Run the recording of `root` with autodiff. inputs=None: accumulate into every leaf's .grad;
    else return the gradients of those leaves (None where unreached), touching no .grad (graphc.func)."""
    if _eager._pending is not None and _eager._pending[0] is not root:
        flush()
    tape = root._tape
    if tape.closed:
        raise GraphcError("backward() through a graph that was already run (graphc frees the recording after "
                          "backward(), as torch does without retain_graph=True); compute the loss again")
    live = [t for t in tape.live() if t._data is None and t is not root]
    graph = tape.builder.build([root._value] + [t._value for t in live])
    leaves = dict(tape.leaves)
    if inputs is not None:
        names = {id(v): n for n, v in leaves.items()}
        wanted = [names.get(id(v)) for v in inputs]
        wrt = tuple(n for n in wanted if n is not None)
    else:
        wrt = tuple(name for name in leaves if graph.input_by_name[name].type.is_float)
    values, grads = _run(graph, tape, wrt=wrt, seeded=True, gradient=gradient)
    root._data = values[0] if root._data is None else root._data
    for t, v in zip(live, values[1:]):
        t._data = v
    if inputs is not None:
        _close(tape)
        return [grads[n].copy() if n in grads else None for n in wanted]
    for name, g in grads.items():
        leaf = leaves[name]
        if isinstance(leaf, Tensor):
            if leaf.grad is None:
                leaf.grad = Tensor._from(g.copy())
            else:
                leaf.grad._data = leaf.grad._data + g
        elif leaf.grad is None:
            leaf.grad = g.copy()
        else:
            leaf.grad += g
    _close(tape)


def _close(tape) -> None:
    for t in tape.live():
        if t._data is None:  # not reached by this plan (cannot happen: every live value is an output)
            raise GraphcError("internal: a recorded value has no value after backward")
    tape.closed = True
    tape.clear()


# ------------------------------------------------------------------ deferred backward, joined optimizer step
#
# loss.backward() with no gradient argument does not run at once: it becomes `_pending`. If the
# next thing that happens is optimizer.step() of a graphc SGD/Adam holding exactly the recorded
# parameters, all with .grad None (zero_grad ran), forward, backward and update run as ONE plan
# (the train-step graph compile_train_step builds), compiled once per structure. Anything else
# that needs the gradients or the recording (reading .grad, a value, a new operation, another
# backward, an in-place write) runs the pending backward first, exactly as if it had run at once.

def defer(root) -> None:
    flush()
    if root._tape.closed:
        raise GraphcError("backward() through a graph that was already run (graphc frees the recording after "
                          "backward(), as torch does without retain_graph=True); compute the loss again")
    _eager._pending = (root, root._tape)


def flush() -> None:
    """Run a deferred backward now (called before anything that could observe it)."""
    pending = _eager._pending
    if pending is not None:
        root, tape = pending
        _eager._pending = None
        if not tape.closed:
            backward(root, None)


def join_step(opt) -> bool:
    """optimizer.step() on a deferred backward: run forward + backward + update as one plan when
    that is exactly what eager execution would do; True if it did."""
    pending = _eager._pending
    if pending is None:
        return False
    root, tape = pending
    if tape.filled != len(tape.events) and root._ref is not None and tape.pure:
        global _last, fast_step
        live = []  # _replay_key, inline (this runs every step)
        for r in tape.tensors:
            t = r()
            if t is not None and t is not root and t._data is None and t._tape is tape:
                live.append(t._ref)
        plan = _last  # the step replayed last time, compared without building its key
        key = None
        if plan is None or plan.sites != tape.sites or plan.root != root._ref or plan.live_refs != live:
            key = (tuple(tape.sites), root._ref, tuple(live))
            plan = _replays.get(key)
        if plan is not None and plan.opt() is opt and plan.run(opt, root, tape):
            _last, fast_step = plan, plan.step  # optimizer.step() calls it first next time
            return True
        if key is None:
            key = (tuple(tape.sites), root._ref, tuple(live))
    elif tape.pure and tape.events and root._ref is not None:
        key = _replay_key(tape, root)  # before the values below are set (they decide what is live)
    else:
        key = None
    return _join_recorded(opt, root, tape, key)


fast_step = join_step  # what optimizer.step() calls on a pending backward: the last replayed plan's step, or join_step


def _join_recorded(opt, root, tape, key) -> bool:
    """join_step on a recording that is not a known replayed step: the graph, its plan (compiled
    from the second sighting), one run; remembered for replay under `key` when that is not None."""
    from .optim import SGD, Adam, AdamW

    params = opt.params
    leaves = tape.leaves
    if (type(opt) not in (SGD, Adam, AdamW) or tape.closed or len(leaves) != len(params)
            or {id(v) for _, v in leaves} != {id(p) for p in params}
            or any(p.__dict__.get("_grad") is not None for p in params)
            or any(not graph_type.is_float for graph_type in (tape.builder.types[n] for n, _ in leaves))):
        return False
    live = [t for t in tape.live() if t._data is None and t is not root]
    graph = tape.builder.build([root._value] + [t._value for t in live])
    wrt = tuple(n for n, _ in leaves)
    from .compiler import _optimizer_spec
    from .passes.train_step import hyper_values

    group = {id(p): k for k, g in enumerate(opt.param_groups) for p in g["params"]}
    spec = _optimizer_spec(opt, {n: group[id(v)] for n, v in leaves})
    # hyperparameter values are plan inputs (a scheduler never recompiles); only the structure is keyed
    key_graph = (graph.inputs, graph.nodes, graph.outputs, wrt, "step", type(opt).__name__, spec.structure(),
                 tuple(id(v) for _, v in leaves))
    entry = _cache.get(key_graph)
    if entry is None:
        entry = _cache[key_graph] = _Entry(graph)
    entry.seen += 1
    if entry.exe is None:
        # the first sighting of this loop runs as it was written (backward, then the eager step)
        backward_seen = _cache.get((graph.inputs, graph.nodes, graph.outputs, wrt, True, False))
        if MODE != "jit" or (entry.seen < COMPILE_AFTER and backward_seen is None):
            return False
        _compile_step(entry, opt, leaves, spec)
    _eager._pending = None
    args = _args(graph, tape, None)
    for name, value in hyper_values(spec).items():
        entry.hyper[name][()] = value
    exe = entry.exe
    exe.run(*[args[name] for name in entry.order])
    stats["native_runs"] += 1
    outs = exe.outputs
    labels = entry.labels
    root._data = outs[0].copy()
    k = 1
    slots = []
    for t in live:  # the values read after the step (model outputs kept by the user)
        while labels[k] != "extra":
            k += 1
        t._data = outs[k].copy()
        slots.append(k)
        k += 1
    for (name, p), g in zip(leaves, entry.grad_slots):
        # the plan's gradient buffer (valid until the next step), or the operands it was fused from
        p.grad = outs[g] if type(g) is int else g
    if key is not None and all(type(p) is not _eager.Tensor for _, p in leaves):
        _remember_replay(key, entry, opt, spec, tape, leaves, slots)
    _close(tape)
    opt.count_step(groups=False)  # the plan advanced each group's step itself
    stats["joined_steps"] += 1
    return True


# ------------------------------------------------------------------ a replayed step (graphc.replay)
#
# A recording made only of replayed module calls (no graph built) whose sequence of calls, loss
# and kept outputs were seen before, and whose joined plan exists: its plan runs straight from
# the calls' arguments. The plan is found by the calls' sites (module, signature, fragment),
# which fix the graph exactly; hyperparameter values are re-read each step (a change of value
# only refills the plan's hyper inputs; a change of structure takes the full path).

_replays: dict[tuple, "_Replay"] = {}
_last: "_Replay | None" = None  # the plan of the last replayed step (a loop's next step is most likely the same)


class _Replay:
    __slots__ = ("entry", "opt", "args", "live", "grads", "dicts", "hyper_read", "hyper_seen", "structure", "group_of",
                 "plain_count", "run", "step", "sites", "root", "live_refs")


def _replay_key(tape, root) -> tuple:
    live = []
    for r in tape.tensors:
        t = r()
        if t is not None and t is not root and t._data is None and t._tape is tape:
            live.append(t._ref)
    return (tuple(tape.sites), root._ref, tuple(live))


def _remember_replay(key, entry, opt, spec, tape, leaves, live_slots) -> None:
    import operator

    from .replay import OBJ

    where = {}  # input name -> (event, index in its binds), or (None, the object) for a Parameter of a fragment
    for k, ((site, _, _), (names, _)) in enumerate(zip(tape.events, tape.names)):
        j = 0
        for (kind, o, _), name in zip(site.frag.ext, names):
            if kind == OBJ:
                where.setdefault(name, (None, o))
            else:
                where.setdefault(name, (k, j))
                j += 1
    if any(name not in where for name in entry.order):
        return
    plan = _Replay()
    plan.entry, plan.opt = entry, __import__("weakref").ref(opt)
    plan.args = [where[name] for name in entry.order]  # (event, index in its binds), or (None, a fixed object)
    plan.live = live_slots
    # each Parameter's own __dict__ (where Parameter.grad keeps _grad; the object never changes)
    plan.grads = [(p.__dict__, g) for (_, p), g in zip(leaves, entry.grad_slots)]
    plan.dicts = [d for d, _ in plan.grads]
    plan.hyper_read = operator.itemgetter(*sorted(opt.defaults))
    plan.hyper_seen = tuple(map(plan.hyper_read, opt.param_groups))
    plan.structure = spec.structure()
    plan.group_of = dict(spec.group_of)
    from .optim.optimizer import Optimizer

    plan.plain_count = type(opt).count_step is Optimizer.count_step  # count_step(groups=False) is step_count += 1
    plan.sites, plan.root, plan.live_refs = list(key[0]), key[1], list(key[2])  # the key, as join_step compares it
    plan.run, plan.step = _replay_runner(plan)
    global _last, fast_step
    _replays[key] = plan
    _last, fast_step = None, join_step  # (it may be the plan this one replaces)


def _replay_runner(plan: _Replay):
    """plan's step as Python functions written for this plan: run(opt, root, tape) -> bool, and
    step(opt), which is optimizer.step()'s whole joined path while this plan is the last one
    replayed (fast_step): join_step's checks that the pending recording is this plan's step,
    then run's body, inline.

    Why generated: a replayed small step (S) is a few microseconds of native plan inside ~10 of
    Python, and most of that Python is loops over a handful of known items (the Parameters'
    .grad, the optimizer's groups, the arguments, the key of the step). Unrolled, with every
    fixed object a constant of the function, the step does the same checks and writes in about
    half the time. What run does, in order (False, touching nothing, hands the step to the full
    path; step calls join_step instead, which takes that path):
      - every Parameter's .grad is None (zero_grad ran; else gradients accumulate);
      - the optimizer's hyperparameters are the plan's (else refill its hyper inputs, or False);
      - the arguments: each from the step's events (a Tensor's current values), or fixed;
      - the native plan (its fallback on a rejected argument, as Executable.run's);
      - the loss and the values kept alive by the user; each .grad set to the plan's buffer (or
        the GEMM operands it was fused from); the tape emptied for the next step (or closed);
        the step counted."""
    exe = plan.entry.exe
    outs = exe.outputs
    ns = {"Tensor": Tensor, "_eager": _eager, "stats": stats, "plan": plan, "exe": exe, "o0": outs[0],
          "CLOSED": _eager.CLOSED, "refill": _refill_checked, "read": plan.hyper_read, "join_step": join_step,
          "OPT": plan.opt, "SITES": plan.sites, "ROOT": plan.root, "LIVE": plan.live_refs,
          "table": exe.table}
    src = []
    if plan.dicts:
        for k, d in enumerate(plan.dicts):
            ns[f"d{k}"] = d
        # (Parameter.__new__ and __array_finalize__ set _grad: every Parameter's __dict__ has it)
        src.append("    if " + " or ".join(f"d{k}['_grad'] is not None" for k in range(len(plan.dicts))) + ":")
        src.append("        return FAIL  # gradients accumulate into existing .grad: the full path decides")
    n_groups = len(plan.hyper_seen)
    src.append("    g = opt.param_groups")
    src.append("    seen = plan.hyper_seen")
    src.append(f"    if len(g) != {n_groups} or " + " or ".join(f"read(g[{k}]) != seen[{k}]" for k in range(n_groups))
               + ":")
    src.append("        if not refill(plan, opt):")
    src.append("            return FAIL")
    names = []
    for k, (ev, j) in enumerate(plan.args):
        if ev is None:
            ns[f"c{k}"] = j
            names.append(f"c{k}")
            continue
        src.append(f"    a{k} = tape.events[{ev}][1][{j}]")
        src.append(f"    if type(a{k}) is Tensor:  # a Tensor argument (not lazy: see replay's signature): its values now")
        src.append(f"        a{k} = a{k}._data")
        names.append(f"a{k}")
    call = ", ".join(names)
    src.append("    _eager._pending = None")
    src.append("    native = exe.native")
    src.append("    if native is None:")
    src.append(f"        exe.run({call})")
    src.append("    else:")
    src.append("        try:")
    src.append(f"            native({call}{', ' if call else ''}table)  # the plan straight, as TrainStep calls it")
    src.append("        except (TypeError, ValueError) as e:")
    src.append(f"            exe.recover(e{', ' if call else ''}{call})")
    # the tape: when it is the open one and no graph was built from it (the usual replayed step),
    # its tensors are handed to a closed tape and it is emptied, to record the next step (no
    # new Tape a step); else it is closed, as _close does
    src.append("    recycle = _eager._tape is tape and tape._b is None")
    src.append("    root._data = o0.copy()")
    src.append("    if recycle:")
    src.append("        root._tape = CLOSED")
    if plan.live:
        src.append("    k = 0")
        src.append("    for r in tape.tensors:  # the values the user kept (model outputs), in recording order")
        src.append("        t = r()")
        src.append("        if t is not None and t is not root and t._data is None and t._tape is tape:")
        src.append("            t._data = outs[live[k]].copy()")
        src.append("            k += 1")
        src.append("            if recycle:")
        src.append("                t._tape = CLOSED")
        ns["outs"], ns["live"] = outs, list(plan.live)
    for k, (d, g) in enumerate(plan.grads):
        ns[f"v{k}"] = outs[g] if type(g) is int else g  # the plan's gradient buffer or operands (fixed objects)
        src.append(f"    d{k}['_grad'] = v{k}")
    src.append("    if recycle:")
    src.append("        tape.tensors.clear()")
    src.append("        tape.events.clear()")
    src.append("        tape.sites.clear()")
    src.append("    else:")
    src.append("        tape.closed = True")
    src.append("        tape.events = tape.sites = ()  # (a replayed tape has no sources, names or leaves to drop)")
    src.append("    tape.filled = 0")
    src.append("    opt.step_count += 1" if plan.plain_count else "    opt.count_step(groups=False)")
    for counter in ("native_runs", "joined_steps", "replayed_steps"):
        src.append(f"    stats[{counter!r}] += 1")
    src.append("    return True")
    head = ["def step(opt):",
            "    root, tape = _eager._pending",
            "    if (OPT() is not opt or tape.sites != SITES or root._ref != ROOT or not tape.pure",
            "            or tape.filled == len(tape.events)):",
            "        return join_step(opt)",
            "    kept = []" if plan.live else "",
            "    for r in tape.tensors:  # the values the user kept: this plan's",
            "        t = r()",
            "        if t is not None and t is not root and t._data is None and t._tape is tape:",
            "            kept.append(t._ref)" if plan.live else "            return join_step(opt)"]
    if plan.live:
        head += ["    if kept != LIVE:", "        return join_step(opt)"]
    text = "\n".join(["def run(opt, root, tape):"] + [ln.replace("FAIL", "False") for ln in src]
                     + head + [ln.replace("FAIL", "join_step(opt)") for ln in src])
    exec(compile(text, f"<graphc replayed step {id(plan):x}>", "exec"), ns)
    return ns["run"], ns["step"]


def _refill_checked(plan: _Replay, opt) -> bool:
    hyper = tuple(map(plan.hyper_read, opt.param_groups))
    return hyper == plan.hyper_seen or _refill_hyper(plan, opt, hyper)


def _refill_hyper(plan: _Replay, opt, hyper) -> bool:
    """A hyperparameter value changed (a scheduler, `g['lr'] = ...`): refill the plan's hyper
    inputs, or False when the optimizer's structure changed (the full path decides)."""
    from .compiler import _optimizer_spec
    from .passes.train_step import hyper_values

    if len(opt.params) != len(plan.grads):
        return False
    spec = _optimizer_spec(opt, plan.group_of)
    if spec.structure() != plan.structure:
        return False
    checked = [opt._check(opt._settings(g)) for g in opt.param_groups]  # invalid values raise, as eager step does
    del checked
    for name, value in hyper_values(spec).items():
        plan.entry.hyper[name][()] = value
    plan.hyper_seen = hyper
    return True


def _compile_step(entry: _Entry, opt, leaves, spec) -> None:
    from .passes import compile_pipeline
    from .passes.autodiff import GRAD_PREFIX
    from .passes.pipeline import CLEANUP_PIPELINE, FUSION_PIPELINE
    from .passes.train_step import build_train_step, step_input
    from .runtime import Executable

    graph = entry.graph
    n_extra = len(graph.outputs) - 1
    wrt = [n for n, _ in leaves]

    def train_step(g, ctx=None):
        head = g.replace(outputs=g.outputs[:1])
        joint = _autodiff_pass(wrt, False)(head)[0]
        step = build_train_step(joint, spec)
        grads = [o for o in joint.outputs if o.label and o.label.startswith(GRAD_PREFIX)]
        extras = [o.__class__(o.value, "extra") for o in g.outputs[1:]]
        # the recorded outputs keep their places (loss, extras), then updates and gradients
        step = step.replace(outputs=(step.outputs[0], *extras, *step.outputs[1:], *grads)).verify()
        return (_defer_weight_grads(step) if defer else step), True

    defer = all(type(v) is not Tensor for _, v in leaves)  # Parameter.grad resolves an eager.DeferredGrad

    train_step.__name__ = "build_train_step"
    _why(graph)
    plans = compile_pipeline(graph, "inference", passes=[*CLEANUP_PIPELINE, *FUSION_PIPELINE, train_step,
                                                         *CLEANUP_PIPELINE])
    plan = plans.forward
    opt.ensure_state()
    by_name = dict(leaves)
    entry.hyper = {}
    steps = {step_input(k): opt.group_step(k) for k in range(len(opt.param_groups))}
    bound = {}
    for i in plan.inputs:
        if i.kind == "param":
            bound[i.name] = by_name[i.name]
        elif i.kind == "hyper":
            bound[i.name] = entry.hyper[i.name] = np.zeros((), np.float64)
        elif i.kind == "state":
            if i.name in steps:
                bound[i.name] = steps[i.name]
            else:
                pname, _, sname = i.name[len("state."):].rpartition(".")
                bound[i.name] = opt.state_of(by_name[pname])[sname]
    exe = Executable(plan, bound, MODE, name="eager_step")
    entry.exe, entry.order = exe, [i.name for i in exe.call_inputs]
    entry.labels = [o.label for o in plan.outputs]
    slots = {lab[len(GRAD_PREFIX):]: k for k, lab in enumerate(entry.labels) if lab and lab.startswith(GRAD_PREFIX)}
    operands = {}  # param -> {"a"/"b": the operand's output view, transposed as the GEMM reads it}
    for k, lab in enumerate(entry.labels):
        if lab and lab.startswith(DEFERRED_PREFIX):
            _, name, which, trans = lab.rsplit(":", 3)
            operands.setdefault(name, {})[which] = exe.outputs[k].T if trans == "1" else exe.outputs[k]
    for name, ab in operands.items():  # one object per weight: the views stay, the values are each run's
        slots[name] = _eager.DeferredGrad(ab["a"], ab["b"])
    entry.grad_slots = [slots.get(n) for n in wrt]
    if entry.labels.count("extra") != n_extra:
        raise GraphcError(f"internal: the joined step plan lost outputs: {entry.labels}")
    stats["compiles"] += 1


DEFERRED_PREFIX = "gradmm:"  # gradmm:<param>:a|b:<transposed 0|1>, a weight gradient's GEMM operands


def _defer_weight_grads(g):
    """A weight gradient dW = op(a) @ op(b) that only a plain SGD update reads (and `.grad`): the
    step outputs a and b in its place, so passes/update_gemm.py fuses the update into the GEMM
    (as in compile_train_step, which stores no gradient) and `.grad` computes op(a) @ op(b) when
    it is read (graphc.eager.DeferredGrad). The composite linear_backward is decomposed first
    (as the kernel stage would) so that the GEMM and its operands are nodes of their own."""
    from .passes.kernels import decompose_for_kernels
    from .passes.update_gemm import _plain_sgd

    given, g = g, decompose_for_kernels(g)
    producer = g.producers
    outs = []
    changed = False
    for o in g.outputs:
        mm = producer.get(o.value) if o.label and o.label.startswith("grad:") else None
        users = g.users.get(o.value, ())
        if (mm is not None and mm.op == "matmul" and len(users) == 1 and _plain_sgd(users[0])
                and users[0].inputs[1] == o.value and g.output_values.count(o.value) == 1
                and all(len(g.types[v].shape) == 2 for v in (*mm.inputs, o.value))):
            operands = []
            for v in mm.inputs:
                t = producer.get(v)
                if t is not None and t.op == "transpose" and len(g.users.get(v, ())) == 1:
                    operands.append((t.inputs[0], 1))  # update_gemm folds this transpose into the GEMM
                else:
                    operands.append((v, 0))
            name = o.label[len("grad:"):]
            outs += [o.__class__(v, f"{DEFERRED_PREFIX}{name}:{which}:{trans}")
                     for (v, trans), which in zip(operands, "ab")]
            changed = True
        else:
            outs.append(o)
    return g.replace(outputs=tuple(outs)).verify() if changed else given  # nothing deferred: as it came


# ------------------------------------------------------------------ running a recorded graph


def _autodiff_pass(wrt, gradient: bool):
    """The pipeline's autodiff stage for an eager recording: only output 0 (the root) is seeded;
    the other outputs are values the user may still read."""
    from .passes.autodiff import grad_graph, is_joint

    def autodiff(g, ctx=None):
        if is_joint(g):
            return g, False
        head = g.replace(outputs=g.outputs[:1])
        joint = grad_graph(head, wrt=list(wrt), seeds="inputs" if gradient else "ones")
        outs = (joint.outputs[0], *g.outputs[1:], *joint.outputs[1:])
        return joint.replace(outputs=outs).verify(), True

    autodiff.__name__ = "autodiff"
    return autodiff


def _joint(graph, wrt, seeded: bool, gradient: bool):
    if not seeded or not wrt:
        return graph
    return _autodiff_pass(wrt, gradient)(graph)[0]


def _args(graph, tape, gradient) -> dict:
    by_name = dict(zip((i.name for i in tape.builder.inputs), tape.sources))
    args = {}
    for i in graph.inputs:
        if i.kind == "grad":
            args[i.name] = gradient
            continue
        v = by_name[i.name]
        if hasattr(v, "_materialize"):
            v = v._materialize()
        args[i.name] = int(v) if i.kind == "rng" else np.ndarray.view(np.asarray(v), np.ndarray)
    return args


def _run(graph, tape, wrt, seeded: bool, gradient):
    """(values of graph's outputs, {leaf input name: gradient})."""
    key = (graph.inputs, graph.nodes, graph.outputs, wrt, seeded, gradient is not None)
    entry = _cache.get(key)
    if entry is None:
        entry = _cache[key] = _Entry(graph)
    entry.seen += 1
    if entry.exe is None and MODE == "jit" and entry.seen >= COMPILE_AFTER:
        _compile(entry, wrt, seeded, gradient is not None)
    args = _args(graph, tape, gradient)
    if gradient is not None:
        args["grad.0"] = gradient
    n = len(graph.outputs)
    if entry.exe is None:
        joint = _joint(graph, wrt, seeded, gradient is not None)
        env = {**args, **{k: np.asarray(v, np.int64) for k, v in args.items() if isinstance(v, int)}}
        outs = interpret(joint, env)
        stats["interpreted_runs"] += 1
        labels = [o.label for o in joint.outputs]
    else:
        exe = entry.exe
        exe.run(*[args[name] for name in entry.order])
        outs = [o.copy() for o in exe.outputs]
        stats["native_runs"] += 1
        labels = entry.labels
    values = [np.ndarray.view(np.asarray(o), np.ndarray) for o in outs[:n]]
    grads = {lab[len("grad:"):]: np.asarray(o) for lab, o in zip(labels[n:], outs[n:]) if lab and lab.startswith("grad:")}
    return values, grads


def _compile(entry: _Entry, wrt, seeded: bool, gradient: bool) -> None:
    from .passes import compile_pipeline
    from .passes.pipeline import CLEANUP_PIPELINE, FUSION_PIPELINE
    from .runtime import Executable

    graph = entry.graph
    _why(graph)
    if seeded and wrt:
        passes = [*CLEANUP_PIPELINE, *FUSION_PIPELINE, _autodiff_pass(wrt, gradient), *CLEANUP_PIPELINE]
    else:
        passes = [*CLEANUP_PIPELINE, *FUSION_PIPELINE, *CLEANUP_PIPELINE]
    plans = compile_pipeline(graph, "inference", passes=passes)
    plan = plans.forward
    exe = Executable(plan, {}, MODE, name="eager")
    entry.exe, entry.order = exe, [i.name for i in exe.call_inputs]
    entry.labels = [o.label for o in plan.outputs]
    entry.graph = graph
    stats["compiles"] += 1


def _site(graph) -> tuple:
    return tuple(n.loc for n in graph.nodes[:1]) + tuple(n.loc for n in graph.nodes[-1:])


def _why(graph) -> None:
    """Log why a call site that already has a plan needs another one (GRAPHC_LOG=recompiles)."""
    site = _site(graph)
    before = _sites.get(site)
    _sites[site] = graph
    if before is None:
        return
    stats["recompiles"] += 1
    if log.isEnabledFor(logging.INFO):
        log.info("recompiling the eager step recorded at %s: %s", site[0] or "?", describe_change(before, graph))


def describe_change(a, b) -> str:
    """What differs between two recorded graphs, in the user's terms."""
    ta, tb = {i.name: i for i in a.inputs}, {i.name: i for i in b.inputs}
    for name in ta.keys() | tb.keys():
        x, y = ta.get(name), tb.get(name)
        if x is None or y is None:
            return f"input {name} {'appeared' if x is None else 'disappeared'}"
        if x.type.shape != y.type.shape:
            return f"input {name} changed shape: {x.type} -> {y.type}"
        if x.type.dtype != y.type.dtype:
            return f"input {name} changed dtype: {x.type} -> {y.type}"
        if x.kind != y.kind:
            return f"input {name} changed kind ({x.kind} -> {y.kind}: requires_grad changed)"
    for na, nb in zip(a.nodes, b.nodes):
        if na != nb:
            if na.op != nb.op:
                return f"operation at {nb.loc}: {na.op} -> {nb.op} (a different mode or control flow)"
            if na.attrs != nb.attrs:
                return f"{nb.op} at {nb.loc}: attributes {dict(na.attrs)} -> {dict(nb.attrs)} (a hyperparameter or constant changed)"
            return f"{nb.op} at {nb.loc}: inputs changed"
    if len(a.nodes) != len(b.nodes):
        return f"{len(a.nodes)} -> {len(b.nodes)} operations recorded"
    return "the values read after the step changed (other outputs)"
