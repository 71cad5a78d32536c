"""Lowering of the kernel stage to LLVM IR: one kernel node -> the text of one LLVM function.

Why: numba compiles a small generated kernel in 0.25-0.45 s (its Python-side typing and
lowering, not LLVM), which made compile time the target every workload missed; llvmlite parses,
optimises (O3) and emits this text in ~30 ms. Codegen still decides nothing: the members, kind
and iteration space come from passes/kernels.py, and this lowers them with exactly the
semantics of runtime/lower.kernel_function (read that first; this mirrors it line for line):

- the iteration space, one counted loop per dim of size > 1 (size-1 dims are index 0), the flat
  index computed from the loop indices (affine in the innermost one, so the loop vectorizes);
- operands of the space's shape read at the flat index, broadcast ones through their strides,
  one-element ones (and rng seeds, passed as i64) once before the loop;
- a gemm kernel first calls BLAS as numba's np.dot(a, b, out) does (the same scipy BLAS entry
  points, the same choice of dot / gemv / gemm and transpose flags, so results are bit-equal),
  prologue transposes as transpose flags, then the epilogue loop over the product;
- a trailing reduction accumulates while the loop stores (a full sum in double, as numba's
  `acc = 0.0` does), outputs are stored at the end of each iteration;
- a rows kernel (`rows_ir`, mirroring lower.rows_function) loops over the rows; per row and
  pass, its row-shaped members once, a loop over the row for its full-shape members, then the
  row reduction in a loop of its own over what the pass stored, in the reduction's dtype with
  lower._accumulate's accumulators (8 lanes combined pairwise, or one) in the same order.

Every member computes in its own dtype; the helpers numba's kernels call are ported where bits
matter (`stream_key`/`uniform1`: dropout masks equal the interpreter's) or where they keep loops
vectorizable (`exp32`/`erf32`, float32 polynomials); the rest are LLVM intrinsics (sqrt, fabs,
floor, exp/log/pow, which LLVM turns into the same libm calls numba's become) and libm (tanh, erf).

The text names nothing of the plan (arguments %a0.. %o0.. %s0, function @kernel), so identical
kernels have identical text; kernel_lib renames @kernel to its symbol. A kernel using something
not lowered here raises Unsupported, and codegen keeps numba's lowering for that kernel.
"""
from __future__ import annotations

import math
import struct

import numpy as np

from graphc.ir import TensorType
from graphc.ir.graph import Node

from .kernels import broadcast_strides, c_strides
from .lower import GEMMS, LANES, REDUCTIONS, _rows_plan

_VAL = {"f32": "float", "f64": "double", "i64": "i64", "bool": "i1",  # the type of a value
        "i32": "i32", "i8": "i8", "ptr": "ptr"}  # (and of the helpers' intermediates)
_MEM = {"f32": "float", "f64": "double", "i64": "i64", "bool": "i8"}  # the type of an array element
_SIZE = {"f32": 4, "f64": 8, "i64": 8, "bool": 1}
FLOATS = ("f32", "f64")
MASK = (1 << 64) - 1
_GOLDEN, _MIX1, _MIX2, _STREAM = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x632BE59BD9B4E019


class Unsupported(Exception):
    """This kernel uses something the LLVM lowering does not have: codegen lowers it through numba."""


# every kernel function's attributes: 512-bit vectors where the CPU has them (AVX-512): LLVM's
# default for those CPUs is 256, and the compute-bound loops (GELU's erf, exp) run ~1.5x faster
# at 512. The same operations per lane in the same order: the results do not change.
ATTRIBUTES = 'nounwind "prefer-vector-width"="512"'


def _i(v: int) -> str:
    """An i64 literal of the unsigned 64-bit v (LLVM reads decimal literals as signed)."""
    v &= MASK
    return str(v - (1 << 64) if v >> 63 else v)


def fconst(dtype: str, value) -> str:
    """An exact LLVM literal of value rounded to dtype (hex: NaN, inf, -0.0 and every bit kept)."""
    if dtype == "f32":
        value = float(np.float32(value))  # LLVM writes float literals as the double of the same value
    return "0x%016X" % struct.unpack("<Q", struct.pack("<d", float(value)))[0]


def const(dtype: str, value) -> str:
    if dtype in FLOATS:
        return fconst(dtype, value)
    if dtype == "bool":
        return "true" if value else "false"
    return str(int(value))


class V:
    """A value of the kernel: its IR dtype, its LLVM operand text, and whether it is known before
    the loop (constants, hoisted loads, scalar arguments) or per iteration."""

    def __init__(self, dtype: str, ref: str, pre: bool = False, width: int | None = None):
        self.dtype, self.ref, self.pre, self.width = dtype, ref, pre, width

    @property
    def ty(self) -> str:
        """Its LLVM type: a vector of `width` lanes when it is one (a small GEMM's tile)."""
        return f"<{self.width} x {_VAL[self.dtype]}>" if self.width else _VAL[self.dtype]

    def __str__(self) -> str:
        return f"{self.ty} {self.ref}"


class _Fn:
    """The function being written: numbered SSA names, the sections of its entry block and the
    declarations it needs. `at` is the section instructions go to (see kernel_ir for the order)."""

    def __init__(self):
        self.n = 0
        self.sections: dict[str, list[str]] = {s: [] for s in ("alloca", "gemm", "hoist", "init", "body", "post")}
        self.decls: dict[str, str] = {}
        self.at = "body"
        self.index: V | None = None  # the flat index of the iteration
        self.width: int | None = None  # lanes per value: set while a small GEMM's tile epilogue is lowered

    def fresh(self, stem: str = "t") -> str:
        self.n += 1
        return f"%{stem}{self.n}"

    def line(self, text: str, section: str | None = None) -> None:
        self.sections[section or self.at].append("  " + text)

    def ins(self, text: str, dtype: str, stem: str = "t") -> V:
        name = self.fresh(stem)
        self.line(f"{name} = {text}")
        return V(dtype, name, self.at != "body", self.width)

    def declare(self, name: str, text: str) -> str:
        self.decls[name] = text
        return name

    def ty(self, dtype: str) -> str:
        """The LLVM type of a value of dtype: a vector of `width` lanes while lowering vectors."""
        return f"<{self.width} x {_VAL[dtype]}>" if self.width else _VAL[dtype]

    def call(self, fn: str, ret: str, args: list[V], dtype: str) -> V:
        """A call of an LLVM intrinsic (`llvm.sqrt`, ...: overloaded on the type, `.v16f32` on a
        vector) or a libm function (scalars only: a vector lowering of a member calling one is
        Unsupported, its kernel keeps the scalar loops)."""
        tys = ", ".join(a.ty for a in args)
        elem = "f32" if ret.endswith("float") or ret.endswith("float>") else "f64"
        if fn.startswith("llvm."):
            name = f"{fn}.{f'v{self.width}' if self.width else ''}{elem}"
        elif self.width:
            raise Unsupported(f"{fn} on vectors")
        else:
            name = fn
        self.declare(name, f"declare {ret} @{name}({tys})")
        return self.ins(f"call {ret} @{name}({', '.join(str(a) for a in args)})", dtype)

    def c(self, dtype: str, value) -> V:
        if self.width:  # the constant in every lane
            lane = f"{_VAL[dtype]} {const(dtype, value)}"
            return V(dtype, "<" + ", ".join([lane] * self.width) + ">", True, self.width)
        return V(dtype, const(dtype, value), True)


# ------------------------------------------------------------------ scalar expressions, one per op


def _float_or(n: Node, a: list[V], allowed=FLOATS) -> str:
    dt = a[0].dtype
    if dt not in allowed or any(x.dtype != dt for x in a):
        raise Unsupported(f"{n.op} on {'/'.join(x.dtype for x in a)}")
    return dt


def _arith(fop: str, iop: str | None):
    def lower(f: _Fn, a: list[V], n: Node) -> V:
        dt = _float_or(n, a, FLOATS + (("i64",) if iop else ()))
        op = fop if dt in FLOATS else iop
        return f.ins(f"{op} {a[0]}, {a[1].ref}", dt)
    return lower


_FCMP = {"eq": "oeq", "ne": "une", "lt": "olt", "le": "ole", "gt": "ogt", "ge": "oge"}  # numba's (Python's) semantics
_ICMP = {"eq": "eq", "ne": "ne", "lt": "slt", "le": "sle", "gt": "sgt", "ge": "sge"}


def _cmp(f: _Fn, kind: str, a: V, b: V) -> V:
    if a.dtype in FLOATS:
        return f.ins(f"fcmp {_FCMP[kind]} {a}, {b.ref}", "bool")
    if a.dtype == "i64" or (a.dtype == "bool" and kind in ("eq", "ne")):
        return f.ins(f"icmp {_ICMP[kind]} {a}, {b.ref}", "bool")
    raise Unsupported(f"{kind} on {a.dtype}")


def _compare(kind: str):
    def lower(f, a, n):
        if a[0].dtype != a[1].dtype:
            raise Unsupported(f"{n.op} on {a[0].dtype}/{a[1].dtype}")
        return _cmp(f, kind, a[0], a[1])
    return lower


def _select(f: _Fn, c: V, a: V, b: V) -> V:
    return f.ins(f"select {c}, {a}, {b}", a.dtype)


def _extremum(kind: str):
    """`a if a > b or a != a else b` (maximum; `<` for minimum): NaN in a propagates, as numba's."""
    def lower(f, a, n):
        dt = _float_or(n, a, FLOATS + ("i64",))
        win = _cmp(f, kind, a[0], a[1])
        if dt in FLOATS:
            win = f.ins(f"or {win}, {_cmp(f, 'ne', a[0], a[0]).ref}", "bool")
        return _select(f, win, a[0], a[1])
    return lower


def _neg(f, a, n):
    dt = _float_or(n, a, FLOATS + ("i64",))
    return f.ins(f"fneg {a[0]}", dt) if dt in FLOATS else f.ins(f"sub {f.c(dt, 0)}, {a[0].ref}", dt)


def _intrinsic(name: str):
    def lower(f, a, n):
        dt = _float_or(n, a)
        return f.call(f"llvm.{name}", a[0].ty, a, dt)
    return lower


def _libm(f32: str, f64: str):
    def lower(f, a, n):
        dt = _float_or(n, a)
        return f.call(f32 if dt == "f32" else f64, a[0].ty, a, dt)
    return lower


def _exp(f, a, n):
    dt = _float_or(n, a)
    return exp32(f, a[0]) if dt == "f32" else f.call("llvm.exp", a[0].ty, a, dt)


def _erf(f, a, n):
    dt = _float_or(n, a)
    return erf32(f, a[0]) if dt == "f32" else f.call("erf", "double", a, dt)


def _rsqrt(f, a, n):
    dt = _float_or(n, a)
    s = f.call("llvm.sqrt", a[0].ty, a, dt)
    return f.ins(f"fdiv {f.c(dt, 1.0)}, {s.ref}", dt)


def _pow(f, a, n):
    dt = _float_or(n, a)
    return f.call("llvm.pow", a[0].ty, [a[0], f.c(dt, n.attr["exponent"])], dt)


def _relu(f, a, n):
    dt = _float_or(n, a, FLOATS + ("i64",))
    z = f.c(dt, 0)
    return _select(f, _cmp(f, "lt", a[0], z), z, a[0])


def _sigmoid(f, a, n):
    """sigmoid1: exp of -|v| in v's dtype, the rest in double (numba's 1.0 literals), then v's dtype."""
    dt = _float_or(n, a)
    v = a[0]
    e = f.call("llvm.exp", v.ty, [f.ins(f"fneg {f.call('llvm.fabs', v.ty, [v], dt)}", dt)], dt)
    ed = f.ins(f"fpext {e} to {f.ty('f64')}", "f64") if dt == "f32" else e
    one = f.c("f64", 1.0)
    d = f.ins(f"fadd {one}, {ed.ref}", "f64")
    pos = f.ins(f"fdiv {one}, {d.ref}", "f64")
    neg = f.ins(f"fdiv {ed}, {d.ref}", "f64")
    vd = f.ins(f"fpext {v} to {f.ty('f64')}", "f64") if dt == "f32" else v
    r = _select(f, _cmp(f, "ge", vd, f.c("f64", 0.0)), pos, neg)
    return f.ins(f"fptrunc {r} to {f.ty('f32')}", dt) if dt == "f32" else r


def convert(f: _Fn, x: V, dt: str) -> V:
    """numba's conversion of a scalar to dtype dt (`np.float32(x)`, `x != 0` for bool)."""
    s = x.dtype
    if s == dt:
        return x
    if dt == "bool":
        return _cmp(f, "ne", x, f.c(s, 0))
    to = f.ty(dt)
    if s == "bool":
        return f.ins(f"{'uitofp' if dt in FLOATS else 'zext'} {x} to {to}", dt)
    if s in FLOATS and dt in FLOATS:
        return f.ins(f"{'fpext' if dt == 'f64' else 'fptrunc'} {x} to {to}", dt)
    if s in FLOATS:
        return f.ins(f"fptosi {x} to {to}", dt)
    return f.ins(f"sitofp {x} to {to}", dt)


def _cast(f, a, n):
    return convert(f, a[0], n.attr["dtype"])


def _relu_backward(f, a, n):
    dt = _float_or(n, a, FLOATS + ("i64",))
    z = f.c(dt, 0)
    return _select(f, _cmp(f, "gt", a[1], z), a[0], z)


def _sigmoid_backward(f, a, n):  # gy * y * (1 - y)
    dt = _float_or(n, a)
    t = f.ins(f"fmul {a[0]}, {a[1].ref}", dt)
    return f.ins(f"fmul {t}, {f.ins(f'fsub {f.c(dt, 1.0)}, {a[1].ref}', dt).ref}", dt)


def _tanh_backward(f, a, n):  # gy * (1 - y * y)
    dt = _float_or(n, a)
    yy = f.ins(f"fmul {a[1]}, {a[1].ref}", dt)
    return f.ins(f"fmul {a[0]}, {f.ins(f'fsub {f.c(dt, 1.0)}, {yy.ref}', dt).ref}", dt)


def _mse_loss_backward(f, a, n):  # (input - target) * (gy * 2/N)
    dt = _float_or(n, a)
    size = TensorType(n.types[0].shape).size
    d = f.ins(f"fsub {a[1]}, {a[2].ref}", dt)
    s = f.ins(f"fmul {a[0]}, {f.c(dt, 2.0 / (size if n.attr['reduction'] == 'mean' else 1)).ref}", dt)
    return f.ins(f"fmul {d}, {s.ref}", dt)


def _k64(f: _Fn, v: int) -> str:
    """An i64 literal (_i), in every lane when f is lowering vectors."""
    return "<" + ", ".join([f"i64 {_i(v)}"] * f.width) + ">" if f.width else _i(v)


def splat(f: _Fn, x: V) -> V:
    """A scalar x in every lane of an f.width vector."""
    vt = f"<{f.width} x {_VAL[x.dtype]}>"
    x1 = f.ins(f"insertelement {vt} poison, {x}, i64 0", x.dtype)
    return f.ins(f"shufflevector {vt} {x1.ref}, {vt} poison, <{f.width} x i32> zeroinitializer", x.dtype)


def splitmix64(f: _Fn, x: V) -> V:
    z = f.ins(f"add {x}, {_k64(f, _GOLDEN)}", "i64")
    for shift, mul in ((30, _MIX1), (27, _MIX2)):
        s = f.ins(f"lshr {z}, {_k64(f, shift)}", "i64")
        z = f.ins(f"mul {f.ins(f'xor {z}, {s.ref}', 'i64')}, {_k64(f, mul)}", "i64")
    return f.ins(f"xor {z}, {f.ins(f'lshr {z}, {_k64(f, 31)}', 'i64').ref}", "i64")


def stream_key(f: _Fn, seed: V, stream: int) -> V:
    """splitmix64(uint64(seed) ^ uint64(stream) * STREAM), before the loop (a scalar) when the seed is."""
    at, f.at = f.at, ("hoist" if seed.pre else f.at)
    width = f.width
    if seed.pre:
        f.width = None
    key = splitmix64(f, f.ins(f"xor {seed}, {_k64(f, stream * _STREAM)}", "i64"))
    f.at, f.width = at, width
    return key


def uniform1(f: _Fn, key: V) -> V:
    """The top 53 bits of splitmix64(key + i) as a double in [0, 1) (graphc/ir/rng.py)."""
    if f.width and not key.width:
        key = splat(f, key)
    z = splitmix64(f, f.ins(f"add {key}, {f.index.ref}", "i64"))
    u = f.ins(f"uitofp {f.ins(f'lshr {z}, {_k64(f, 11)}', 'i64')} to {V('f64', '', False, f.width).ty}", "f64")
    return f.ins(f"fmul {u}, {f.c('f64', 1.0 / 9007199254740992.0).ref}", "f64")


def _dropout(f, a, n):  # x * (1/(1-p) if u >= p else 0)
    dt = _float_or(n, a[:1])
    if a[1].dtype != "i64":
        raise Unsupported(f"dropout seed of dtype {a[1].dtype}")
    # u = (z >> 11) * 2^-53 (uniform1) is exact, so u >= p <=> (z >> 11) >= ceil(p * 2^53) <=> z >=
    # ceil(p * 2^53) << 11 (unsigned): the same keep bits without the shift, conversion and multiply
    key = stream_key(f, a[1], int(n.attr["stream"]))
    if f.width and not key.width:
        key = splat(f, key)
    z = splitmix64(f, f.ins(f"add {key}, {f.index.ref}", "i64"))
    bound = math.ceil(float(n.attr["p"]) * 9007199254740992.0) << 11
    keep = (f.ins(f"icmp uge {z}, {_k64(f, bound)}", "bool") if bound < 1 << 64 else
            f.ins(f"icmp ult {z}, {_k64(f, 0)}", "bool"))  # p >= 1: none kept
    m = _select(f, keep, f.c(dt, 1.0 / (1.0 - n.attr["p"])), f.c(dt, 0.0))
    return f.ins(f"fmul {a[0]}, {m.ref}", dt)


def _uniform(f, a, n):
    if a[0].dtype != "i64":
        raise Unsupported(f"uniform seed of dtype {a[0].dtype}")
    return convert(f, uniform1(f, stream_key(f, a[0], int(n.attr["stream"]))), n.types[0].dtype)


def _arange(f, a, n):
    """As the reference: i64 in integers; floats computed in double, then cast."""
    at = n.attr
    i = f.index
    if f.width:
        raise Unsupported("arange on vectors")
    if at["dtype"] == "i64":
        step = f.ins(f"mul i64 {int(at['step'])}, {i.ref}", "i64")
        return f.ins(f"add i64 {int(at['start'])}, {step.ref}", "i64")
    x = f.ins(f"sitofp {i} to double", "f64")
    x = f.ins(f"fmul double {fconst('f64', float(at['step']))}, {x.ref}", "f64")
    return convert(f, f.ins(f"fadd double {fconst('f64', float(at['start']))}, {x.ref}", "f64"), at["dtype"])


def _where(f, a, n):
    if a[1].dtype != a[2].dtype:
        raise Unsupported(f"where on {a[1].dtype}/{a[2].dtype}")
    return _select(f, a[0], a[1], a[2])


EXPR = {
    "add": _arith("fadd", "add"), "sub": _arith("fsub", "sub"), "mul": _arith("fmul", "mul"), "div": _arith("fdiv", None),
    "maximum": _extremum("gt"), "minimum": _extremum("lt"),
    **{k: _compare(k) for k in _FCMP},
    "where": _where, "neg": _neg, "exp": _exp, "log": _intrinsic("log"), "sqrt": _intrinsic("sqrt"),
    "rsqrt": _rsqrt, "erf": _erf, "tanh": _libm("tanhf", "tanh"), "pow": _pow, "relu": _relu,
    "sigmoid": _sigmoid, "cast": _cast, "relu_backward": _relu_backward, "sigmoid_backward": _sigmoid_backward,
    "tanh_backward": _tanh_backward, "dropout": _dropout, "uniform": _uniform, "arange": _arange,
    "mse_loss_backward": _mse_loss_backward,
    "broadcast_to": lambda f, a, n: a[0],  # its operand, already read through broadcast strides
}

# ------------------------------------------------------------------ exp32 / erf32 (runtime/kernels.py), ported


def _f(f: _Fn, op: str, a: V, b) -> V:
    return f.ins(f"{op} {a}, {b.ref if isinstance(b, V) else f.c('f32', b).ref}", "f32")


def exp32(f: _Fn, x: V) -> V:
    """runtime/kernels.exp32 op for op (Cephes' expf polynomial; both sides selected: vectorizes)."""
    lo, hi = -87.33654, 88.72283
    xc = _select(f, _cmp(f, "gt", x, f.c("f32", lo)), x, f.c("f32", lo))  # max(x, lo)
    xc = _select(f, _cmp(f, "lt", xc, f.c("f32", hi)), xc, f.c("f32", hi))  # min(., hi)
    n = f.call("llvm.floor", f.ty("f32"), [_f(f, "fadd", _f(f, "fmul", xc, 1.44269504088896341), 0.5)], "f32")
    r = _f(f, "fsub", _f(f, "fsub", xc, _f(f, "fmul", n, 0.693359375)), _f(f, "fmul", n, -2.12194440e-4))
    p = f.c("f32", 1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = _f(f, "fadd", _f(f, "fmul", p, r), c)
    p = _f(f, "fadd", _f(f, "fadd", _f(f, "fmul", p, _f(f, "fmul", r, r)), r), 1.0)
    k = f.ins(f"fptosi {n} to {f.ty('i32')}", "i32")
    h = f.ins(f"ashr {k}, {f.c('i32', 1).ref}", "i32")
    bias, shift = f.c("i32", 127).ref, f.c("i32", 23).ref
    b1 = f.ins(f"shl {f.ins(f'add {h}, {bias}', 'i32')}, {shift}", "i32")
    kh = f.ins(f"sub {k}, {h.ref}", "i32")
    b2 = f.ins(f"shl {f.ins(f'add {kh}, {bias}', 'i32')}, {shift}", "i32")
    e = _f(f, "fmul", _f(f, "fmul", p, f.ins(f"bitcast {b1} to {f.ty('f32')}", "f32")),
           f.ins(f"bitcast {b2} to {f.ty('f32')}", "f32"))
    e = _select(f, _cmp(f, "lt", x, f.c("f32", lo)), f.c("f32", 0.0), e)
    e = _select(f, _cmp(f, "gt", x, f.c("f32", hi)), f.c("f32", math.inf), e)
    return _select(f, _cmp(f, "ne", x, x), x, e)


def erf32(f: _Fn, x: V) -> V:
    """runtime/kernels.erf32 op for op (Eigen's rational erf on x clamped to [-4, 4])."""
    xc = _select(f, _cmp(f, "gt", x, f.c("f32", -4.0)), x, f.c("f32", -4.0))  # max(x, -4)
    xc = _select(f, _cmp(f, "lt", xc, f.c("f32", 4.0)), xc, f.c("f32", 4.0))  # min(., 4)
    z = _f(f, "fmul", xc, xc)
    coefs = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
             -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
    p = f.c("f32", coefs[0])
    for c in coefs[1:]:
        p = _f(f, "fadd", _f(f, "fmul", p, z), c)
    q = f.c("f32", -1.45660718464996e-05)
    for c in (-2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03, -1.42647390514189e-02):
        q = _f(f, "fadd", _f(f, "fmul", q, z), c)
    e = _f(f, "fdiv", _f(f, "fmul", p, xc), q)
    return _select(f, _cmp(f, "ne", x, x), x, e)


def lowerable(n: Node) -> bool:
    """Whether a member's op has an LLVM form here (its dtypes are checked while lowering)."""
    return n.op in EXPR or n.op in GEMMS or n.op in REDUCTIONS


# ------------------------------------------------------------------ one kernel -> one function


def kernel_ir(node: Node, scalars: set[str], out_strides: dict | None = None) -> tuple[str, list[str], list[str], list[str]]:
    """(IR text of `define void @kernel(...)`, operand values in argument order, output values in
    argument order (+ "#scratch0"), argument types: "i64 scalar" or the array's dtype). Raises
    Unsupported when the kernel holds something this lowering lacks. An elementwise, rows,
    reduce, gemm or strided GEMM kernel with `threads=k` (passes/parallel.py) is split over the
    pool (runtime/split_llvm.py; a gemm kernel as its `split` says). `out_strides`: {output:
    element strides} of outputs the memory plan stores as strided pieces of a concat's buffer (a
    strided GEMM writes through them)."""
    text, ins, outs, args = _kernel_ir(node, scalars, out_strides)
    threads = node.attr.get("threads", 1)
    if threads > 1 and node.attr["kind"] in ("elementwise", "rows", "strided_gemm", "reduce") and node.attr.get("impl") != "loops":
        from .split_llvm import split, summed_outputs

        row = _rows_plan(node)[0][-1] if node.attr["kind"] == "rows" else 0
        scratch = {len(ins) + j: row * _SIZE[args[len(ins) + j]] for j, v in enumerate(outs) if v.startswith("#scratch")}
        partials = []
        if node.attr["kind"] == "reduce":  # partial sums: one more argument each (the kernel's scratch)
            for j, (v, t) in enumerate(summed_outputs(node)):
                partials.append((len(ins) + outs.index(v), t.size, t.dtype))
            outs = outs + [f"#scratch{j}" for j in range(len(partials))]
            args = args + [t for _, _, t in partials]
        try:
            text = split(text, threads, scratch, partials)[0]
        except Unsupported:  # no loop to cut (one iteration): one thread, taking the partials it was given
            head = text.index("define void @kernel(")
            close = text.index(") #0 {", head)
            extra = "".join(f", ptr %part{j}" for j in range(len(partials)))
            text = text[:close] + extra + text[close:]
    elif threads > 1 and node.attr["kind"] == "gemm" and node.attr.get("impl") != "loops":  # (loops: split above)
        from .split_llvm import split_gemm, split_gemm_rows

        how = node.attr["split"]  # passes/parallel.gemm_split
        if how == "rows":  # rows of C: each task its gemm rows, then its epilogue on them
            text = split_gemm_rows(text, threads)
        else:  # the gemm in blocks of C's rows or columns, the epilogue after the join
            text = split_gemm(text, threads, how == "gemm_cols")
    return text, ins, outs, args


def _kernel_ir(node: Node, scalars: set[str], out_strides: dict | None = None) -> tuple[str, list[str], list[str], list[str]]:
    body = node.body
    kind = node.attr["kind"]
    if kind == "rows":
        if node.attr.get("vector", 1) > 1:  # passes/parallel.py's choice: explicit vectors (runtime/lower_rows.py)
            from .lower_rows import rows_block_ir, rows_vector_ir

            if "interleave" in node.attr:  # short rows whole in registers, `interleave` of them at a time
                try:
                    return rows_block_ir(node, scalars, node.attr["vector"], node.attr["interleave"])
                except Unsupported:
                    pass
            try:
                return rows_vector_ir(node, scalars, node.attr["vector"])
            except Unsupported:  # a member without a vector form: the scalar loops
                pass
        return rows_ir(node, scalars)
    if kind == "strided_gemm" and node.attr.get("impl") == "loops":  # (split over threads there)
        from .lower_strided import strided_loops_ir

        return strided_loops_ir(node, (out_strides or {}).get(node.outputs[0]))
    if kind == "strided_gemm":
        from .lower_strided import strided_gemm_ir

        return strided_gemm_ir(node, (out_strides or {}).get(node.outputs[0]))
    if kind not in ("elementwise", "gemm", "reduce"):
        raise Unsupported(f"kernel kind {kind}")
    if node.attr.get("impl") == "loops" and body.nodes[0].op == "addmm":  # the SGD update's GEMM as loops
        from .lower_small_gemm import addmm_ir

        return addmm_ir(node)
    if node.attr.get("impl") == "loops" and kind == "gemm":  # one pass: the epilogue on each register tile
        from .lower_small_gemm import tile_epilogue_ir

        got = tile_epilogue_ir(node, scalars)
        if got is not None:
            return got
    members = list(body.nodes)
    types = body.types
    inputs = [i.name for i in body.inputs]
    outputs = list(node.outputs)
    for k, m in enumerate(members):
        if not lowerable(m) and not (kind == "gemm" and m.op == "transpose"):
            raise Unsupported(f"op {m.op}")
        if m.op in REDUCTIONS and k != len(members) - 1:
            raise Unsupported(f"{m.op} before the kernel's last member")
    if any(t.size == 0 for t in types.values()):
        raise Unsupported("an empty tensor")
    f = _Fn()
    gemm = next(m for m in members if m.op in GEMMS) if kind == "gemm" else None
    prologue = {m.outputs[0]: m.inputs[0] for m in members[:members.index(gemm)]} if gemm is not None else {}
    red = members[-1] if members[-1].op in REDUCTIONS else None
    space = (types[gemm.outputs[0]].shape if gemm is not None else
             types[red.inputs[0]].shape if red is not None else types[members[0].outputs[0]].shape)
    ptr = {v: f"%a{k}" for k, v in enumerate(inputs)}
    ptr.update({v: f"%o{k}" for k, v in enumerate(outputs)})
    idx = [V("i64", f"%i{d}") if n != 1 else V("i64", "0", True) for d, n in enumerate(space)]
    cache: dict[str, V] = {}

    def load(p: str, dt: str, at: V) -> V:
        q = f.ins(f"getelementptr inbounds {_MEM[dt]}, ptr {p}, i64 {at.ref}", "ptr", "p")
        x = f.ins(f"load {_MEM[dt]}, ptr {q.ref}", dt if dt != "bool" else "i8", "x")
        return f.ins(f"icmp ne i8 {x.ref}, 0", "bool") if dt == "bool" else x

    def store(p: str, dt: str, at: V, x: V) -> None:
        q = f.ins(f"getelementptr inbounds {_MEM[dt]}, ptr {p}, i64 {at.ref}", "ptr", "p")
        if dt == "bool":
            x = f.ins(f"zext i1 {x.ref} to i8", "i8")
        f.line(f"store {_MEM[dt]} {x.ref}, ptr {q.ref}")

    def offset(strides) -> V:
        terms = [(ix, s) for ix, s in zip(idx, strides) if s and ix.ref != "0"]
        if not terms:
            return V("i64", "0", True)
        acc = None
        for ix, s in terms:
            t = ix if s == 1 else f.ins(f"mul nuw nsw i64 {ix.ref}, {s}", "i64")
            acc = t if acc is None else f.ins(f"add nuw nsw i64 {acc.ref}, {t.ref}", "i64")
        return acc

    def read(v: str) -> V:
        """Operand v (external to the members) at the current iteration."""
        if v in cache:
            return cache[v]
        t = types[v]
        if v in scalars:
            got = V("i64", ptr[v], True)
        elif t.size == 1:
            at, f.at = f.at, "hoist"
            got = load(ptr[v], t.dtype, V("i64", "0", True))
            f.at = at
        elif t.shape == space:
            got = load(ptr[v], t.dtype, f.index)
        else:
            got = load(ptr[v], t.dtype, offset(broadcast_strides(t.shape, space)))
        cache[v] = got
        return got

    # the flat index of the iteration, from the loop indices
    f.index = offset(c_strides(space))
    gemm_dst = None
    if gemm is not None:
        g_out, g_t = gemm.outputs[0], types[gemm.outputs[0]]
        if g_out in outputs:
            gemm_dst = ptr[g_out]
        else:
            gemm_dst = next((ptr[o] for o in outputs if types[o] == g_t), None) or "%s0"
        if node.attr.get("impl") == "loops":  # the kernel pass chose a loop nest (passes/gemm_impl.py)
            from .lower_small_gemm import lower_gemm

            threads = node.attr.get("threads", 1)
            if threads > 1 and node.attr.get("split") != "gemm_rows":
                raise Unsupported(f"impl=loops, threads={threads}: split={node.attr.get('split')!r} here")
            lower_gemm(f, gemm, types, prologue, ptr, gemm_dst, threads)
        else:
            _blas(f, gemm, types, prologue, ptr, gemm_dst)

    local: dict[str, V] = {}
    for m in members:
        if m.outputs[0] in prologue or m is red:
            continue
        if m is gemm:
            e = load(gemm_dst, m.types[0].dtype, f.index)
            if len(m.inputs) == 3:  # the bias
                e = EXPR["add"](f, [e, read(m.inputs[2])], m)
            if m.op == "linear_relu":
                e = _relu(f, [e], m)
            local[m.outputs[0]] = e
            continue
        ops = [local[i] if i in local else read(i) for i in m.inputs]
        got = EXPR[m.op](f, ops, m)
        if got.dtype != m.types[0].dtype:
            raise Unsupported(f"{m.op} gives {got.dtype}, the IR says {m.types[0].dtype}")
        local[m.outputs[0]] = got
    for v in outputs:
        if red is None or v != red.outputs[0]:
            store(ptr[v], types[v].dtype, f.index, local[v])
    if red is not None:
        _reduction(f, red, types, space, local, read, idx, offset, load, store, ptr)

    params = [f"i64 {ptr[v]}" if v in scalars else f"ptr {ptr[v]}" for v in inputs]
    params += [f"ptr {ptr[v]}" for v in outputs] + (["ptr %s0"] if gemm_dst == "%s0" else [])
    text = _assemble(f, space, params, [m.op for m in members], kind)
    args = ["i64 scalar" if v in scalars else types[v].dtype for v in inputs]
    args += [types[v].dtype for v in outputs]
    if gemm_dst == "%s0":
        args.append(gemm.types[0].dtype)
    return text, inputs, outputs + (["#scratch0"] if gemm_dst == "%s0" else []), args


# A reduction into an array of at most this many bytes accumulates in a stack buffer (alloca),
# copied to its output after the loop: the same adds in the same order, but LLVM knows the buffer
# aliases no operand or output, so the vectorized loop needs no runtime overlap checks (they ran
# once per row of a bias gradient's [32, 32, 64] sum, as many instructions as the row's adds).
REDUCE_BUFFER = 16 * 1024


def _reduction(f: _Fn, red: Node, types, space, local, read, idx, offset, load, store, ptr) -> None:
    r_out, r_in, dims = red.outputs[0], red.inputs[0], red.attr["dims"]
    src = local[r_in] if r_in in local else read(r_in)
    rt = types[r_out]
    o = ptr[r_out]
    count = int(np.prod([space[d] for d in dims], dtype=np.int64))
    if rt.dtype == "bool" or (red.op == "mean" and rt.dtype not in FLOATS):
        raise Unsupported(f"{red.op} of {rt.dtype}")
    if rt.size == 1 and red.op != "max":  # numba's `acc = 0.0`: a double accumulator
        f.line("%acc = alloca double", "alloca")
        f.line(f"store double {fconst('f64', 0.0)}, ptr %acc", "init")
        a = f.ins("load double, ptr %acc", "f64")
        s = f.ins(f"fadd {a}, {convert(f, src, 'f64').ref}", "f64")
        f.line(f"store double {s.ref}, ptr %acc")
        f.at = "post"
        total = f.ins("load double, ptr %acc", "f64")
        if red.op == "mean":
            total = f.ins(f"fdiv {total}, {fconst('f64', count)}", "f64")
        store(o, rt.dtype, V("i64", "0", True), convert(f, total, rt.dtype))
        return
    init = -math.inf if rt.is_float else -(1 << 63)
    out = o
    if rt.size * _SIZE[rt.dtype] <= REDUCE_BUFFER:  # accumulate in a stack buffer, copied to o after
        f.line(f"%rbuf = alloca [{rt.size} x {_MEM[rt.dtype]}], align 64", "alloca")
        o = "%rbuf"
    _fill(f, "init", o, rt, const(rt.dtype, 0 if red.op != "max" else init))
    keep = tuple(1 if d in dims else n for d, n in enumerate(space))
    at = offset([0 if d in dims else s for d, s in enumerate(c_strides(keep))])
    old = load(o, rt.dtype, at)
    if red.op == "max":  # `if v > o[off] or v != v: o[off] = v`, as a select
        new = _extremum("gt")(f, [src, old], red)
    else:
        new = f.ins(f"{'fadd' if rt.is_float else 'add'} {old}, {src.ref}", rt.dtype)
    store(o, rt.dtype, at, new)
    if o != out:
        f.declare("llvm.memcpy.p0.p0.i64", "declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)")
        f.line(f"call void @llvm.memcpy.p0.p0.i64(ptr {out}, ptr align 64 %rbuf, i64 {rt.size * _SIZE[rt.dtype]}, i1 false)", "post")
        o = out
    if red.op == "mean":  # o[q] = o[q] / count for every q, after the loop
        ty, c = _MEM[rt.dtype], const(rt.dtype, count)
        f.sections["post"] += [
            "  br label %mean", "mean:", "  %m.q = phi i64 [ 0, %done ], [ %m.next, %mean ]",
            f"  %m.p = getelementptr inbounds {ty}, ptr {o}, i64 %m.q", f"  %m.x = load {ty}, ptr %m.p",
            f"  %m.y = fdiv {ty} %m.x, {c}", f"  store {ty} %m.y, ptr %m.p", "  %m.next = add nuw nsw i64 %m.q, 1",
            f"  %m.end = icmp eq i64 %m.next, {rt.size}", "  br i1 %m.end, label %mean.done, label %mean", "mean.done:"]


def _fill(f: _Fn, section: str, p: str, t: TensorType, value: str) -> None:
    """p[q] = value for every q, before the loop (the reduction's start)."""
    if t.size == 1:
        f.line(f"store {_MEM[t.dtype]} {value}, ptr {p}", section)
        return
    s = f.sections[section]
    s += ["  br label %fill", "fill:", "  %f.q = phi i64 [ 0, %start ], [ %f.next, %fill ]",
          f"  %f.p = getelementptr inbounds {_MEM[t.dtype]}, ptr {p}, i64 %f.q",
          f"  store {_MEM[t.dtype]} {value}, ptr %f.p",
          "  %f.next = add nuw nsw i64 %f.q, 1", f"  %f.end = icmp eq i64 %f.next, {t.size}",
          "  br i1 %f.end, label %filled, label %fill", "filled:"]


def _blas(f: _Fn, gemm: Node, types, prologue, ptr, dst: str) -> None:
    """np.dot(A, B, out) as numba's dot_3_mm calls BLAS: (1,k)x(k,1) -> dot, a vector on either
    side -> gemv, else gemm computing C^T = B^T A^T in BLAS's column-major terms; an operand
    behind a prologue transpose (or linear's weight) is an F-ordered view: a transpose flag."""
    at, f.at = f.at, "gemm"
    a_v, b_v = gemm.inputs[0], gemm.inputs[1]
    dt = gemm.types[0].dtype
    if dt not in FLOATS:
        raise Unsupported(f"{gemm.op} on {dt}")
    kind = "s" if dt == "f32" else "d"
    ty = _VAL[dt]

    def operand(v, transposed):
        src = prologue.get(v, v)
        shape = types[src].shape
        if v in prologue:
            transposed = not transposed
        return ptr[src], ("F" if transposed else "C"), ((shape[1], shape[0]) if transposed else shape)

    pa, la, (m, k) = operand(a_v, False)
    pb, lb, (_, n) = operand(b_v, gemm.op != "matmul")  # linear: x @ w.T
    slots: dict[str, str] = {}

    def slot(ty_: str, value) -> str:
        key = f"{ty_} {value}"
        if key not in slots:
            name = f"%b{len(slots)}"
            f.line(f"{name} = alloca {ty_}", "alloca")
            f.line(f"store {ty_} {value}, ptr {name}")
            slots[key] = name
        return slots[key]

    def i32(x: int) -> str:
        return slot("i32", x)

    one, zero, inc = slot(ty, fconst(dt, 1.0)), slot(ty, fconst(dt, 0.0)), i32(1)
    if m == 1 and n == 1:  # V * V
        fn = f.declare(f"graphc_blas_{kind}dot", f"declare {ty} @graphc_blas_{kind}dot(ptr, ptr, ptr, ptr, ptr)")
        r = f.fresh("dot")
        f.line(f"{r} = call {ty} @{fn}(ptr {i32(k)}, ptr {pa}, ptr {inc}, ptr {pb}, ptr {inc})")
        f.line(f"store {ty} {r}, ptr {dst}")
    elif n == 1 or m == 1:  # M * V (the matrix is A) or V * M (the matrix is B)
        if n == 1:
            mat, lay, (rows, cols), vec, trans = pa, la, (m, k), pb, la == "C"
        else:
            mat, lay, (rows, cols), vec, trans = pb, lb, (k, n), pa, lb != "C"
        mm, nn, lda = (rows, cols, rows) if lay == "F" else (cols, rows, cols)
        fn = f.declare(f"graphc_blas_{kind}gemv", f"declare void @graphc_blas_{kind}gemv(" + ", ".join(["ptr"] * 11) + ")")
        f.line(f"call void @{fn}(ptr {slot('i8', ord('t' if trans else 'n'))}, ptr {i32(mm)}, ptr {i32(nn)}, "
               f"ptr {one}, ptr {mat}, ptr {i32(lda)}, ptr {vec}, ptr {inc}, ptr {zero}, ptr {dst}, ptr {inc})")
    else:  # M * M: C^T (n x m) = B^T A^T, B first
        ta, lda_ = ("n", n) if lb == "C" else ("t", k)
        tb, ldb_ = ("n", k) if la == "C" else ("t", m)
        fn = f.declare(f"graphc_blas_{kind}gemm", f"declare void @graphc_blas_{kind}gemm(" + ", ".join(["ptr"] * 13) + ")")
        f.line(f"call void @{fn}(ptr {slot('i8', ord(ta))}, ptr {slot('i8', ord(tb))}, ptr {i32(n)}, ptr {i32(m)}, "
               f"ptr {i32(k)}, ptr {one}, ptr {pb}, ptr {i32(lda_)}, ptr {pa}, ptr {i32(ldb_)}, ptr {zero}, "
               f"ptr {dst}, ptr {i32(n)})")
    f.at = at


# An innermost loop of a multiple of this many iterations (whole AVX-512 vectors of f32) stays a
# loop: LLVM would otherwise unroll it fully (a constant trip count) before vectorizing, then
# vectorize the outer loop with gathers and scatters (B's [128, 32] linear_relu kernel: 4.2 ->
# 2.5 us). Other trip counts vectorize worse as loops (a remainder loop; S's [64, 20]). The loops
# around it stay rolled too: O3 unrolled a 32-trip loop around a kept one (a BatchNorm mean over
# [64,16,32,32]: 1.2 s of O3 instead of 65 ms).
KEEP_INNER = 16
KEEP_MD = 100  # the metadata ids of kept loops (lower_nodes.no_unroll numbers its own from 0)


def _assemble(f: _Fn, space, params, ops, kind) -> str:
    """The function: allocas, BLAS call, hoisted values, reduction start, the loop nest, the end."""
    s = f.sections
    out = [f"; graphc kernel {{kind={kind}}}: {', '.join(ops)}; iteration space {list(space)}",
           f"define void @kernel({', '.join(params)}) #0 {{", "entry:"]
    out += s["alloca"] + s["gemm"] + s["hoist"] + ["  br label %start", "start:"] + s["init"]
    loops = [d for d, n in enumerate(space) if n != 1]
    prev = "%start" if not any(ln == "filled:" for ln in s["init"]) else "%filled"
    for j, d in enumerate(loops):
        out.append(f"  br label %loop{d}")
        out.append(f"loop{d}:")
        back = f"%latch{loops[j + 1]}" if j + 1 < len(loops) else f"%loop{d}"
        out.append(f"  %i{d} = phi i64 [ 0, {prev} ], [ %i{d}.next, {back} ]")
        prev = f"%loop{d}"
    out += s["body"]
    for j, d in reversed(list(enumerate(loops))):
        if j + 1 < len(loops):
            out.append(f"latch{loops[j + 1]}:")
        out.append(f"  %i{d}.next = add nuw nsw i64 %i{d}, 1")
        out.append(f"  %i{d}.end = icmp eq i64 %i{d}.next, {space[d]}")
        nxt = f"latch{d}" if j > 0 else "done"
        keep = f", !llvm.loop !{KEEP_MD + 1 + j}" if space[loops[-1]] % KEEP_INNER == 0 else ""
        out.append(f"  br i1 %i{d}.end, label %{nxt}, label %loop{d}{keep}")
    if not loops:
        out.append("  br label %done")
    out.append("done:")
    out += s["post"]
    out.append("  ret void")
    out.append("}")
    out += [""] + [f.decls[k] for k in sorted(f.decls)]
    out += ["", f"attributes #0 = {{ {ATTRIBUTES} }}"]
    if loops and space[loops[-1]] % KEEP_INNER == 0:
        out += [f'!{KEEP_MD} = !{{!"llvm.loop.unroll.disable"}}']
        out += [f"!{KEEP_MD + 1 + j} = distinct !{{!{KEEP_MD + 1 + j}, !{KEEP_MD}}}" for j in range(len(loops))]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ rows kernels (runtime/lower.rows_function)


def _load(f: _Fn, p: str, dt: str, at: V) -> V:
    q = f.ins(f"getelementptr inbounds {_MEM[dt]}, ptr {p}, i64 {at.ref}", "ptr", "p")
    x = f.ins(f"load {_MEM[dt]}, ptr {q.ref}", dt if dt != "bool" else "i8", "x")
    return f.ins(f"icmp ne i8 {x.ref}, 0", "bool") if dt == "bool" else x


def _store(f: _Fn, p: str, dt: str, at: V, x: V) -> None:
    q = f.ins(f"getelementptr inbounds {_MEM[dt]}, ptr {p}, i64 {at.ref}", "ptr", "p")
    if dt == "bool":
        x = f.ins(f"zext i1 {x.ref} to i8", "i8")
    f.line(f"store {_MEM[dt]} {x.ref}, ptr {q.ref}")


def _affine(f: _Fn, terms) -> V:
    """sum of index * stride over (index V, stride) pairs, as lower.py's offsets (0 when none)."""
    acc = None
    for ix, s in terms:
        if not s or ix.ref == "0":
            continue
        t = ix if s == 1 else f.ins(f"mul nuw nsw i64 {ix.ref}, {s}", "i64")
        acc = t if acc is None else f.ins(f"add nuw nsw i64 {acc.ref}, {t.ref}", "i64")
    return acc if acc is not None else V("i64", "0", True)


def rows_ir(node: Node, scalars: set[str]) -> tuple[str, list[str], list[str], list[str]]:
    """kernel_ir of a rows kernel, mirroring runtime/lower.rows_function: a loop nest over the rows
    (all dims but the last); in each row, per pass, its row-shaped members once (flat index i = the
    row), one loop over the row for its full-shape members (i = row start + k), then its reduction
    in a loop of its own that reads what the pass stored, with the same accumulators in the same
    order (LANES of them combined pairwise when the row allows, else one; the reduction's dtype,
    numba's `acc = np.float32(0.0)`), so the results are bit-equal to numba's."""
    body = node.body
    types = body.types
    members = list(body.nodes)
    inputs = [i.name for i in body.inputs]
    outputs = list(node.outputs)
    for m in members:
        if m.op not in EXPR and m.op not in REDUCTIONS:
            raise Unsupported(f"op {m.op}")
    if any(t.size == 0 for t in types.values()):
        raise Unsupported("an empty tensor")
    space, passes, kept = _rows_plan(node)
    n, lead = space[-1], space[:-1]
    reds = [m for m in members if m.op in REDUCTIONS]
    if n == 1:
        raise Unsupported("rows of one element")
    # numba types each of `acc`, `acc0`.., `x`.. once for the whole function (shared by the passes):
    # reductions of different dtypes would unify to another dtype there, so they stay numba's
    rdt = {(types[r.inputs[0]].dtype, types[r.outputs[0]].dtype) for r in reds}
    if len(rdt) != 1 or next(iter(rdt))[0] != next(iter(rdt))[1] or next(iter(rdt))[0] not in FLOATS:
        raise Unsupported(f"row reductions of {sorted(rdt)}")
    f = _Fn()
    ptr = {v: f"%a{k}" for k, v in enumerate(inputs)}
    ptr.update({v: f"%o{k}" for k, v in enumerate(outputs)})
    scratch = {v: f"%s{k}" for k, v in enumerate(kept)}
    idx = [V("i64", f"%i{d}") if size != 1 else V("i64", "0", True) for d, size in enumerate(lead)]
    f.sections["row"] = []  # the row's start: its offsets, computed before any of its loops
    bases: dict[tuple, V] = {}
    loops = [d for d, size in enumerate(lead) if size != 1]
    cur = [f"loop{loops[-1]}" if loops else "start"]  # the block instructions go to now (a phi names its predecessor)
    k_now: list[V] = [V("i64", "0", True)]  # the position in the row of the current iteration

    def base(st) -> V:
        st = tuple(st[:-1])
        if st not in bases:
            at, f.at = f.at, "row"
            bases[st] = _affine(f, zip(idx, st))
            f.at = at
        return bases[st]

    def read_row(v: str) -> V:
        if v in scalars:
            return V("i64", ptr[v], True)
        if types[v].size == 1:
            at, f.at = f.at, "hoist"
            got = _load(f, ptr[v], types[v].dtype, V("i64", "0", True))
            f.at = at
            return got
        return _load(f, ptr[v], types[v].dtype, base(broadcast_strides(types[v].shape, space)))

    def read_full(v: str) -> V:
        st = broadcast_strides(types[v].shape, space)
        if v in scalars or types[v].size == 1 or st[-1] == 0:
            return read_row(v)
        k = k_now[0] if st[-1] == 1 else f.ins(f"mul nuw nsw i64 {k_now[0].ref}, {st[-1]}", "i64")
        return _load(f, ptr[v], types[v].dtype, f.ins(f"add nuw nsw i64 {base(st).ref}, {k.ref}", "i64"))

    def block(label: str) -> None:
        f.line(f"br label %{label}")
        f.sections["body"].append(f"{label}:")
        cur[0] = label

    def check(m: Node, got: V) -> V:
        if got.dtype != m.types[0].dtype:
            raise Unsupported(f"{m.op} gives {got.dtype}, the IR says {m.types[0].dtype}")
        return got

    row_base = base(c_strides(space))
    at, f.at = f.at, "row"
    r = _affine(f, zip(idx, c_strides(lead)))
    f.at = at
    local: dict[str, V] = {}
    done: set[str] = set()
    for p, ms in enumerate(passes):
        row_ms = [m for m in ms if types[m.outputs[0]].shape != space and m.op not in REDUCTIONS]
        full_ms = [m for m in ms if types[m.outputs[0]].shape == space]
        red = ms[-1] if ms and ms[-1].op in REDUCTIONS else None
        f.index = r
        for m in row_ms:
            v = m.outputs[0]
            local[v] = check(m, EXPR[m.op](f, [local[i] if i in done else read_row(i) for i in m.inputs], m))
            done.add(v)
            if v in outputs:
                _store(f, ptr[v], types[v].dtype, r, local[v])
        if not full_ms and red is None:
            continue
        here: set[str] = set()

        def operand(i: str) -> V:
            if i in here or i in done:
                return local[i]
            if i in outputs and types[i].shape == space:
                return _load(f, ptr[i], types[i].dtype, f.index)
            if i in scratch:
                return _load(f, scratch[i], types[i].dtype, k_now[0])
            return read_full(i)

        if full_ms:
            start = cur[0]
            block(f"p{p}")
            k = V("i64", f"%k{p}")
            f.line(f"{k.ref} = phi i64 [ 0, %{start} ], [ {k.ref}.next, %p{p} ]")
            k_now[0] = k
            f.index = f.ins(f"add nuw nsw i64 {row_base.ref}, {k.ref}", "i64")
            for m in full_ms:
                v = m.outputs[0]
                local[v] = check(m, EXPR[m.op](f, [operand(i) for i in m.inputs], m))
                here.add(v)
                if v in outputs:
                    _store(f, ptr[v], types[v].dtype, f.index, local[v])
                if v in scratch:
                    _store(f, scratch[v], types[v].dtype, k, local[v])
            _latch(f, k.ref, 1, n, f"p{p}")
            cur[0] = f"p{p}.done"
        if red is not None:
            here.clear()  # the reduction's loop reads what the pass stored
            v, dt = red.outputs[0], types[red.outputs[0]].dtype
            acc = _row_reduce(f, red, dt, n, cur, p, row_base, k_now, lambda: operand(red.inputs[0]))
            if red.op == "mean":
                acc = f.ins(f"fdiv {acc}, {fconst(dt, n)}", dt)
            local[v] = acc
            done.add(v)
            f.index = r
            if v in outputs:
                _store(f, ptr[v], dt, r, acc)
    params = [f"i64 {ptr[v]}" if v in scalars else f"ptr {ptr[v]}" for v in inputs]
    params += [f"ptr {ptr[v]}" for v in outputs] + [f"ptr {scratch[v]}" for v in kept]
    text = _assemble_rows(f, space, params, [m.op for m in members], cur[0])
    args = ["i64 scalar" if v in scalars else types[v].dtype for v in inputs]
    args += [types[v].dtype for v in outputs] + [types[v].dtype for v in kept]
    return text, inputs, outputs + [f"#scratch{k}" for k in range(len(kept))], args


def _latch(f: _Fn, k: str, step: int, n: int, loop: str) -> None:
    f.line(f"{k}.next = add nuw nsw i64 {k}, {step}")
    f.line(f"{k}.end = icmp eq i64 {k}.next, {n}")
    f.line(f"br i1 {k}.end, label %{loop}.done, label %{loop}")
    f.sections["body"].append(f"{loop}.done:")


def _row_reduce(f: _Fn, red: Node, dt: str, n: int, cur: list, p: int, row_base: V, k_now: list, src) -> V:
    """lower._accumulate: the sum or max (NaN wins) of src() over the row, accumulated in dt; LANES
    accumulators combined pairwise ((a0 . a1) . (a2 . a3)) . ... when n is a multiple of LANES
    and at least 2 * LANES, else one. Returns the result (in the block after the loop)."""
    def step(a: V, x: V) -> V:
        return _extremum("gt")(f, [x, a], red) if red.op == "max" else f.ins(f"fadd {a}, {x.ref}", dt)

    init = fconst(dt, -math.inf if red.op == "max" else 0.0)
    lanes = 1 if n % LANES or n < 2 * LANES else LANES
    start, loop = cur[0], f"r{p}"
    f.line(f"br label %{loop}")
    f.sections["body"].append(f"{loop}:")
    k0 = V("i64", f"%k{p}r")
    f.line(f"{k0.ref} = phi i64 [ 0, %{start} ], [ {k0.ref}.next, %{loop} ]")
    accs, phis = [], []
    for j in range(lanes):
        a = V(dt, f.fresh("acc"))
        phis.append(len(f.sections["body"]))
        f.line("")  # the phi, written once its next value is known
        accs.append(a)
    nexts = []
    for j, a in enumerate(accs):
        k = k0 if j == 0 else f.ins(f"add nuw nsw i64 {k0.ref}, {j}", "i64")
        k_now[0] = k
        f.index = f.ins(f"add nuw nsw i64 {row_base.ref}, {k.ref}", "i64")
        nexts.append(step(a, src()))
    for a, at, nx in zip(accs, phis, nexts):
        f.sections["body"][at] = f"  {a.ref} = phi {a.ty} [ {init}, %{start} ], [ {nx.ref}, %{loop} ]"
    _latch(f, k0.ref, lanes, n, loop)
    cur[0] = f"{loop}.done"
    level = nexts
    while len(level) > 1:
        level = [step(a, b) for a, b in zip(level[::2], level[1::2])]
    return level[0]


def _assemble_rows(f: _Fn, space, params, ops, last: str) -> str:
    """The function: hoisted values, the loops over the leading dims, in the innermost the row's
    offsets then its passes (blocks of their own), the latches, the end."""
    s = f.sections
    lead = space[:-1]
    out = [f"; graphc kernel {{kind=rows}}: {', '.join(ops)}; iteration space {list(space)}",
           f"define void @kernel({', '.join(params)}) #0 {{", "entry:"]
    out += s["alloca"] + s["hoist"] + ["  br label %start", "start:"]
    loops = [d for d, size in enumerate(lead) if size != 1]
    prev = "%start"
    for d in loops:
        out += [f"  br label %loop{d}", f"loop{d}:", f"  %i{d} = phi i64 [ 0, {prev} ], [ %i{d}.next, %latch{d} ]"]
        prev = f"%loop{d}"
    body = s["body"]
    out += s["row"] + body
    for j, d in reversed(list(enumerate(loops))):
        out += [f"  br label %latch{d}", f"latch{d}:"] if j == len(loops) - 1 else [f"latch{d}:"]
        out.append(f"  %i{d}.next = add nuw nsw i64 %i{d}, 1")
        out.append(f"  %i{d}.end = icmp eq i64 %i{d}.next, {lead[d]}")
        out.append(f"  br i1 %i{d}.end, label %{f'latch{loops[j - 1]}' if j > 0 else 'done'}, label %loop{d}")
    if not loops:
        out.append("  br label %done")
    out += ["done:", "  ret void", "}"]
    out += [""] + [f.decls[k] for k in sorted(f.decls)]
    out += ["", f"attributes #0 = {{ {ATTRIBUTES} }}"]
    return "\n".join(out) + "\n"
