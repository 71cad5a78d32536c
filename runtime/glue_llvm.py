"""A plan's glue lowered to LLVM IR: the generated `plan` function, translated line by line.

Why: numba spends 0.3-9 s typing and lowering a plan's glue (hundreds of view lines and kernel
calls: ~15 ms a line), more than every kernel it calls once those are cached. The glue decides
nothing (codegen wrote every view and call already), so this translates that Python text
mechanically into one LLVM function, compiled by llvmlite in tens of milliseconds:

    i32 @graphc_glue_<key>(i64* %table, i64 %in0, i64 %in1, ...)

`table` is the plan's address table (bound arrays, then arenas), the `in` arguments the call
inputs' data addresses (or an int64 scalar input's value). Each line of the plan's body becomes:
- `name = table[k]` / `view(base, offset, shape, np.dtype)` / `x.reshape(n)`: an address and a
  static shape (no code until a call needs the array);
- `k_fn(args)`: a call of the library kernel's numba-compiled native function through numba's
  own calling convention (arrays built as numba builds them, C-contiguous, no meminfo), by a
  stable symbol `graphc_lib_<hash>` that the loader binds to the address numba gives;
- `kernelN(addresses)` of an LLVM kernel: a call of its symbol;
- `if kernelN(addresses) != 0: raise ...` of an LLVM kernel returning a status (a plain gather or
  scatter_add, runtime/lower_nodes.py): the call, then a non-zero status fails as below.
A kernel's non-zero status (it raised) returns 1 at once; the runner then runs the numba glue
(`plan_full`, compiled only then) to raise the kernel's own error message.

Anything else in the text raises Unsupported and the plan keeps numba's glue (codegen says why).

`translate(..., profile=True)` is the same function instrumented for graphc.profile: a second
symbol `graphc_glueprof_<key>(table, prof, in...)` that stores the cycle counter
(`llvm.readcyclecounter`) into prof[0] on entry and into prof[k + 1] after call k; the plan's
own glue is generated without it (instrumentation is never in the plan that trains).
"""
from __future__ import annotations

import ast
import hashlib
import math
from dataclasses import dataclass, field

from .lower_llvm import fconst


class Unsupported(Exception):
    """The plan's text uses something this translation does not know: numba compiles its glue."""


@dataclass(frozen=True)
class Callee:
    """A numba function the glue calls: `source` is "module:function" (a library kernel) or
    "plan:kernelN:<library key>" (a generated kernel numba compiled, found in the plan module)."""
    symbol: str
    source: str
    signature: tuple  # numba types

    def dispatcher(self, plan_module):
        mod, fn = self.source.split(":")[:2]
        if mod == "plan":
            return getattr(plan_module, fn)
        import importlib

        return getattr(importlib.import_module(mod), fn)


@dataclass
class Glue:
    ir: str
    symbol: str
    callees: list[Callee] = field(default_factory=list)
    sites: list[int] = field(default_factory=list)  # per call, in order: the index of its line in the body


@dataclass
class _View:
    """An array the glue can build: data address (an i64 SSA name), element type name, shape."""
    addr: str
    dtype: str  # "f32", "f64", "i64", "bool", ...
    shape: tuple


# element types: numba type name, LLVM type of an element in memory (= as an argument), size
_ELEM = {"f32": ("float32", "float", 4), "f64": ("float64", "double", 8), "i64": ("int64", "i64", 8),
         "i32": ("int32", "i32", 4), "bool": ("boolean", "i8", 1), "u8": ("uint8", "i8", 1), "i8": ("int8", "i8", 1)}
_NP = {"float32": "f32", "float64": "f64", "int64": "i64", "int32": "i32", "bool": "bool", "bool_": "bool",
       "uint8": "u8", "int8": "i8"}


def translate(body: list[str], params: list[str], scalars: set[str], resolve, inputs: dict,
              profile: bool = False) -> Glue:
    """The LLVM glue of a plan whose `plan(params..., table)` body is `body` (source lines, no
    `def`, shape check or return). `resolve(name)` says what a called global is: ("numba",
    "module:function") or ("llvm", symbol); `inputs` maps each array call input to (numpy dtype
    name, shape). profile: the instrumented variant (the module docstring)."""
    from numba import types

    text = "\n".join(body)
    key = hashlib.sha256(text.encode()).hexdigest()[:24]
    symbol = f"graphc_glue{'prof' if profile else ''}_{key}"
    out: list[str] = []  # the function body's instructions
    sites: list[int] = []
    n = [0]

    def tick(line_no: int) -> None:
        """After a call: note its line; profiling: store the cycle counter in its prof slot."""
        sites.append(line_no)
        if profile:
            c, p = tmp(), tmp()
            out.append(f"  {c} = call i64 @llvm.readcyclecounter()")
            out.append(f"  {p} = getelementptr i64, i64* %prof, i64 {len(sites)}")
            out.append(f"  store i64 {c}, i64* {p}")

    def tmp() -> str:
        n[0] += 1
        return f"%t{n[0]}"

    env: dict[str, object] = {}
    for k, p in enumerate(params):
        env[p] = ("int", f"%in{k}") if p in scalars else ("input", f"%in{k}")
    callees: dict[tuple, Callee] = {}
    decls: dict[str, str] = {}
    fntypes: dict[tuple, list[str]] = {}

    def const_int(e):
        if isinstance(e, ast.Constant) and type(e.value) is int:
            return e.value
        if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub):
            return -const_int(e.operand)
        raise Unsupported(f"not a constant int: {ast.unparse(e)}")

    def int_value(e) -> str:
        """An i64 operand for an integer expression (addresses, table slots)."""
        if isinstance(e, ast.Constant) and type(e.value) is int:
            return str(e.value)
        if isinstance(e, ast.Name) and isinstance(env.get(e.id), tuple) and env[e.id][0] == "int":
            return env[e.id][1]
        if isinstance(e, ast.Subscript) and isinstance(e.value, ast.Name) and e.value.id == "table":
            p, v = tmp(), tmp()
            out.append(f"  {p} = getelementptr i64, i64* %table, i64 {const_int(e.slice)}")
            out.append(f"  {v} = load i64, i64* {p}")
            return v
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Add):
            return add(int_value(e.left), int_value(e.right))
        if (isinstance(e, ast.Attribute) and e.attr == "data" and isinstance(e.value, ast.Attribute)
                and e.value.attr == "ctypes" and isinstance(e.value.value, ast.Name)):
            v = env.get(e.value.value.id)
            if isinstance(v, tuple) and v[0] == "input":
                return v[1]
            if isinstance(v, _View):
                return v.addr
        raise Unsupported(f"integer expression {ast.unparse(e)}")

    def add(a: str, b: str) -> str:
        if b == "0":
            return a
        v = tmp()
        out.append(f"  {v} = add i64 {a}, {b}")
        return v

    def dtype_of(e) -> str:
        name = ast.unparse(e)
        if name.startswith("np.") and name[3:] in _NP:
            return _NP[name[3:]]
        raise Unsupported(f"dtype {name}")

    def view_of(e) -> _View:
        if isinstance(e, ast.Name):
            v = env.get(e.id)
            if isinstance(v, _View):
                return v
            if isinstance(v, tuple) and v[0] == "input" and e.id in inputs:
                dt, shape = inputs[e.id]
                if dt not in _NP:
                    raise Unsupported(f"input dtype {dt}")
                return _View(v[1], _NP[dt], tuple(shape))
            raise Unsupported(f"array {e.id}")
        if isinstance(e, ast.Subscript) and isinstance(e.slice, ast.Slice) and e.slice.step is None:
            v = view_of(e.value)
            if len(v.shape) != 1:
                raise Unsupported("slice of an array of rank > 1")
            size = v.shape[0]
            lo = const_int(e.slice.lower) if e.slice.lower is not None else 0
            hi = const_int(e.slice.upper) if e.slice.upper is not None else size
            lo, hi = (lo + size if lo < 0 else lo), (hi + size if hi < 0 else hi)
            lo, hi = max(0, min(lo, size)), max(0, min(hi, size))
            return _View(add(v.addr, str(lo * _ELEM[v.dtype][2])), v.dtype, (max(hi - lo, 0),))
        if (isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and e.func.attr == "reshape"
                and len(e.args) == 1 and not e.keywords):
            v = view_of(e.func.value)
            shape = e.args[0]
            shape = tuple(const_int(x) for x in shape.elts) if isinstance(shape, ast.Tuple) else (const_int(shape),)
            if math.prod(shape) != math.prod(v.shape):
                raise Unsupported(f"reshape {v.shape} -> {shape}")
            return _View(v.addr, v.dtype, shape)
        raise Unsupported(f"array expression {ast.unparse(e)}")

    def array_args(v: _View) -> list[str]:
        """numba's argument form of a C-contiguous array: meminfo, parent, nitems, itemsize,
        data, shape..., strides... (no meminfo: the plan owns the storage)."""
        _, ll, size = _ELEM[v.dtype]
        data = tmp()
        out.append(f"  {data} = inttoptr i64 {v.addr} to {ll}*")
        strides, step = [], size
        for d in reversed(v.shape):
            strides.insert(0, step)
            step *= d
        return (["i8* null", "i8* null", f"i64 {math.prod(v.shape)}", f"i64 {size}", f"{ll}* {data}"]
                + [f"i64 {d}" for d in v.shape] + [f"i64 {s}" for s in strides])

    def argument(e):
        """(numba type, [typed LLVM operands]) of a library kernel's argument."""
        if isinstance(e, ast.Constant):
            if type(e.value) is bool:
                return types.boolean, [f"i8 {int(e.value)}"]
            if type(e.value) is float:
                return types.float64, [f"double {fconst('f64', e.value)}"]
            if e.value is None:
                return types.none, ["i8* null"]
            raise Unsupported(f"constant argument {e.value!r} (numba would specialise on it)")
        if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub) and isinstance(e.operand, ast.Constant) \
                and type(e.operand.value) is float:
            return types.float64, [f"double {fconst('f64', -e.operand.value)}"]
        if isinstance(e, ast.Call) and isinstance(e.func, (ast.Name, ast.Attribute)) and len(e.args) == 1:
            f = ast.unparse(e.func)
            if f == "i64":
                return types.int64, [f"i64 {const_int(e.args[0])}"]
            if f == "np.bool_" and isinstance(e.args[0], ast.Constant):
                return types.boolean, [f"i8 {int(bool(e.args[0].value))}"]
            if f == "float" and isinstance(e.args[0], ast.Constant):
                return types.float64, [f"double {fconst('f64', float(e.args[0].value))}"]
        if isinstance(e, ast.Tuple) and e.elts:
            vals = [argument(x) for x in e.elts]
            if all(t == types.int64 for t, _ in vals):
                return types.UniTuple(types.int64, len(vals)), [x for _, xs in vals for x in xs]
            raise Unsupported(f"tuple argument {ast.unparse(e)}")
        if isinstance(e, ast.Name) and isinstance(env.get(e.id), tuple) and env[e.id][0] == "int":
            return types.int64, [f"i64 {env[e.id][1]}"]  # a scalar call input
        if isinstance(e, ast.Subscript) and isinstance(e.slice, ast.Constant) and e.slice.value == 0:
            v = view_of(e.value)  # x_f[0]: the element (numba passes a boolean as i8, as stored)
            nb, ll, _ = _ELEM[v.dtype]
            p, x = tmp(), tmp()
            out.append(f"  {p} = inttoptr i64 {v.addr} to {ll}*")
            out.append(f"  {x} = load {ll}, {ll}* {p}")
            return getattr(types, nb), [f"{ll} {x}"]
        v = view_of(e)
        return types.Array(getattr(types, _ELEM[v.dtype][0]), len(v.shape), "C"), array_args(v)

    for line_no, line in enumerate(body):
        st = line.strip()
        if not st or st.startswith("#"):
            continue
        node = ast.parse(st).body[0]
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, e = node.targets[0].id, node.value
            if isinstance(e, ast.Subscript):
                env[name] = ("int", int_value(e))
            elif isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id == "view" and len(e.args) == 4:
                base, off, shape, dt = e.args
                dtype = dtype_of(dt)
                env[name] = _View(add(int_value(base), str(const_int(off) * _ELEM[dtype][2])), dtype,
                                  tuple(const_int(x) for x in shape.elts))
            elif isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and e.func.attr == "reshape":
                env[name] = view_of(e)
            else:
                raise Unsupported(f"statement {st}")
            continue
        if isinstance(node, ast.If):  # `if kernelN(...) != 0: raise ...`: an LLVM kernel's status
            test = node.test
            if not (not node.orelse and len(node.body) == 1 and isinstance(node.body[0], ast.Raise)
                    and isinstance(test, ast.Compare) and [type(o) for o in test.ops] == [ast.NotEq]
                    and ast.unparse(test.comparators[0]) == "0" and isinstance(test.left, ast.Call)
                    and isinstance(test.left.func, ast.Name) and not test.left.keywords):
                raise Unsupported(f"statement {st}")
            kind, what = resolve(test.left.func.id)
            if kind != "llvm":
                raise Unsupported(f"status of {test.left.func.id}")
            args = [f"i64 {int_value(a)}" for a in test.left.args]
            decl = f"declare i32 @{what}({', '.join(['i64'] * len(args))})"
            if decls.setdefault(what, decl) != decl:
                raise Unsupported(f"{what} declared twice differently")
            s_, ok = tmp(), tmp()
            out.append(f"  {s_} = call i32 @{what}({', '.join(args)})")
            tick(line_no)
            out.append(f"  {ok} = icmp eq i32 {s_}, 0")
            label = f"ok{n[0]}"
            out.append(f"  br i1 {ok}, label %{label}, label %fail")
            out.append(f"{label}:")
            continue
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)):
            raise Unsupported(f"statement {st}")
        call = node.value
        if call.keywords:
            raise Unsupported(f"keyword arguments in {st}")
        kind, what = resolve(call.func.id)
        if kind == "llvm":
            args = [f"i64 {int_value(a)}" for a in call.args]
            decl = f"declare void @{what}({', '.join(['i64'] * len(args))})"
            if decls.setdefault(what, decl) != decl:
                raise Unsupported(f"{what} called with {len(args)} arguments and with another count")
            out.append(f"  call void @{what}({', '.join(args)})")
            tick(line_no)
            continue
        typed = [argument(a) for a in call.args]
        sig = tuple(t for t, _ in typed)
        callee = callees.get((what, sig))
        if callee is None:
            h = hashlib.sha256(f"{what}{sig}".encode()).hexdigest()[:20]
            callee = callees[(what, sig)] = Callee(f"graphc_lib_{h}", what, sig)
            fnty = fntypes.get(sig)
            if fnty is None:
                fnty = fntypes[sig] = _function_type(sig)
            decls[callee.symbol] = f"declare i32 @{callee.symbol}({', '.join(fnty)})"
        flat = [x for _, xs in typed for x in xs]
        want = fntypes[sig][2:]
        if [x.rsplit(" ", 1)[0] for x in flat] != want:
            raise Unsupported(f"argument types of {what}: {flat} vs {want}")
        s_, a_, b_, ok = tmp(), tmp(), tmp(), tmp()
        out.append(f"  {s_} = call i32 @{callee.symbol}({fntypes[sig][0]} %ret, {fntypes[sig][1]} %exc, {', '.join(flat)})")
        tick(line_no)
        out.append(f"  {a_} = icmp eq i32 {s_}, 0")
        out.append(f"  {b_} = icmp eq i32 {s_}, -2")  # numba's "returned None"
        out.append(f"  {ok} = or i1 {a_}, {b_}")
        label = f"ok{n[0]}"
        out.append(f"  br i1 {ok}, label %{label}, label %fail")
        out.append(f"{label}:")
    exc_t = _function_type((types.none,))[1][:-1]  # excinfo**: allocate one excinfo*
    head = [f"define i32 @{symbol}(i64* %table{', i64* %prof' if profile else ''}"
            f"{''.join(f', i64 %in{k}' for k in range(len(params)))}) {{",
            "entry:", "  %ret = alloca i8*", f"  %exc = alloca {exc_t}", f"  store {exc_t} null, {exc_t}* %exc"]
    if profile:
        decls["llvm.readcyclecounter"] = "declare i64 @llvm.readcyclecounter()"
        head += ["  %c0 = call i64 @llvm.readcyclecounter()", "  store i64 %c0, i64* %prof"]
    ir_text = "\n".join(sorted(decls.values()) + [""] + head + out + ["  ret i32 0", "fail:", "  ret i32 1", "}", ""])
    return Glue(ir_text, symbol, list(callees.values()), sites)


def _function_type(sig) -> list[str]:
    """The LLVM parameter types of numba's native function for `sig` returning None: retptr,
    excinfo**, then each argument flattened as numba passes it."""
    from numba import types
    from numba.core.registry import cpu_target

    ctx = cpu_target.target_context
    return [str(t) for t in ctx.call_conv.get_function_type(types.none, list(sig)).args]


_bound: dict[str, int] = {}  # callee symbol -> address, bound in this process


def load(glue: Glue, plan_module, folder) -> str:
    """Bind the glue's callees to numba's code for them (compiled, or loaded from numba's cache),
    then load the glue's object code from `folder` (glue.ll, glue.o) or compile and store it
    there (folder None: compile, store nothing). Returns "cached" or "compiled". Raises Unsupported if a callee returns a value (the
    glue calls every library kernel as returning nothing)."""
    from pathlib import Path

    import llvmlite.binding as ll
    from numba import types

    from . import kernel_lib

    for c in glue.callees:
        if c.symbol in _bound:
            continue
        disp = c.dispatcher(plan_module)
        disp.compile(c.signature)
        cres = disp.overloads[tuple(c.signature)]
        if cres.signature.return_type != types.none:
            raise Unsupported(f"{c.source} returns {cres.signature.return_type}")
        _bound[c.symbol] = addr = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
        ll.add_symbol(c.symbol, addr)
    if glue.symbol in kernel_lib._in_engine:
        return "reused"
    if folder is None:  # not stored (graphc.profile's instrumented glue)
        tm, _ = kernel_lib._engine()
        m = ll.parse_assembly(glue.ir)
        m.verify()
        kernel_lib._load_object(glue.symbol, tm.emit_object(m))
        return "compiled"
    folder = Path(folder)
    ll_path, o_path = folder / "glue.ll", folder / "glue.o"
    if o_path.is_file() and ll_path.is_file() and ll_path.read_text() == glue.ir:
        kernel_lib._load_object(glue.symbol, o_path.read_bytes())
        return "cached"
    tm, _ = kernel_lib._engine()
    m = ll.parse_assembly(glue.ir)
    m.verify()
    obj = tm.emit_object(m)
    ll_path.write_text(glue.ir)
    o_path.write_bytes(obj)
    kernel_lib._load_object(glue.symbol, obj)
    return "compiled"
