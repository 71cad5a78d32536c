"""Op kernels lowered to LLVM IR per node: what an op's kernel entry returns instead of a numba
function when its loops are generated for the node's constant shapes (runtime/conv_llvm.py).

Why: numba compiles a library kernel once per process and cache directory in 0.3-5 s (conv2d's
wide forward and backward took 3 s each cold: the typing of np.dot on reshaped views), while
llvmlite turns the IR of one node's kernel into object code in tens of milliseconds. The IR is
the node's (its shapes and attributes are constants of the text), so it goes into the kernel
library like a generated kernel of the kernel stage: `LlvmKernel(ir, dtypes)`, keyed by its
text, compiled once and shared by every plan with the same layer. Codegen calls it by address
(`name(x_f.ctypes.data, ...)`), from the LLVM glue or numba alike; direct calls (run_kernel,
the kernel tests) compile it in this process and call it through ctypes.

`Fn` is a small structured builder over llvmlite.ir (counted loops, typed loads and stores,
memcpy/memset, BLAS gemm as numba's np.dot calls it) so the generators read like the numba
loops they replace.
"""
from __future__ import annotations

import ctypes
from contextlib import contextmanager
from dataclasses import dataclass

from llvmlite import ir

I64, I32, I8 = ir.IntType(64), ir.IntType(32), ir.IntType(8)
ELEM = {"f32": ir.FloatType(), "f64": ir.DoubleType(), "i64": I64, "bool": I8}
FAST = ("reassoc", "contract")  # conv_direct.FM's fastmath: reassociation and FMA, never nnan/ninf


@dataclass(frozen=True)
class LlvmCall:
    """One node's kernel as LLVM IR: `define void @kernel(ptr...)` over its arrays' addresses, in
    the order of `dtypes` (each array's element dtype). `name` is what the plan calls it by."""

    name: str
    ir: str
    dtypes: tuple[str, ...]

    @property
    def __name__(self) -> str:  # noqa: A003  (codegen names calls after their function)
        return self.name

    def __call__(self, *arrays) -> None:
        """Direct call on arrays (run_kernel): compiled and loaded in this process, called by address."""
        from .kernel_lib import LlvmKernel, _load_object, compile_ir

        if len(arrays) != len(self.dtypes):
            raise TypeError(f"{self.name} takes {len(self.dtypes)} arrays, got {len(arrays)}")
        k = LlvmKernel(self.ir, list(self.dtypes))
        fn = _direct.get(k.symbol)
        if fn is None:
            addr = _load_object(k.symbol, compile_ir(k.text)[0])
            fn = _direct[k.symbol] = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * len(arrays))(addr)
        fn(*[a.ctypes.data for a in arrays])


_direct: dict[str, object] = {}  # symbol -> ctypes function, for direct calls in this process


def use_llvm() -> bool:
    """Op kernels are lowered to LLVM IR when the plan's generated kernels are (codegen.use_llvm),
    unless GRAPHC_OP_LLVM=0 keeps numba's library kernels for them (to compare the two)."""
    import os

    from .codegen import use_llvm as kernels_llvm

    return kernels_llvm() and os.environ.get("GRAPHC_OP_LLVM", "1") != "0"


class Fn:
    """The function being built: `define void @kernel(<pointer per dtype>)`, one entry block for
    the BLAS argument slots, then the body the generator writes through `b`."""

    def __init__(self, dtypes: list[str], comment: str, threads: int = 1, tasks: int = 0):
        self.dtypes, self.comment, self.threads = list(dtypes), comment, threads
        self.tasks = (tasks or threads) if threads > 1 else 1
        self.module = ir.Module()
        ty = ir.FunctionType(ir.VoidType(), [ELEM[d].as_pointer() for d in dtypes])
        self.fn = ir.Function(self.module, ty, "kernel")
        self.fn.attributes.add("nounwind")
        for k, a in enumerate(self.fn.args):
            a.name = f"a{k}"
        self._slots: dict[tuple, ir.Value] = {}
        self._decls: dict[str, ir.Function] = {}
        self._opened: list[tuple] = []  # (entry, body, builder) of each function, for text()
        self._open(self.fn, list(self.fn.args))
        # threads > 1: the task's index (its share of the work, `share`) and the id of the
        # thread running it (< threads: its slice of per-thread scratch); arguments of the task
        self.task: ir.Value = self.c(0)
        self.thread: ir.Value = self.c(0)
        if threads > 1:
            self._launcher()

    def _open(self, fn: ir.Function, args: list) -> None:
        """Write into fn from now on: its entry block (allocas, BLAS argument slots) and a body."""
        self.entry = fn.append_basic_block("entry")
        body = fn.append_basic_block("body")
        self.b = ir.IRBuilder(body)
        self._args = args
        self._opened.append((self.entry, body, self.b, args))

    def _launcher(self) -> None:
        """threads > 1: @kernel packs its arguments into a context array and calls
        graphc_parallel_for(@kernel_task, ctx, tasks, threads) (runtime/threads.py); the
        generator then writes @kernel_task(ctx, task, thread), one task's share, whose `args` are
        loaded from ctx. `after_join()` writes code that runs once after every task is done."""
        p8 = I8.as_pointer()
        task_ty = ir.FunctionType(ir.VoidType(), [p8, I64, I64])
        task = ir.Function(self.module, task_ty, "kernel_task")
        task.linkage = "internal"
        task.attributes.add("nounwind")
        pool = self._intrinsic("graphc_parallel_for", ir.FunctionType(ir.VoidType(), [task_ty.as_pointer(), p8, I64, I64]))
        k = len(self.dtypes)
        ctx = ir.IRBuilder(self.entry).alloca(ir.ArrayType(p8, k))
        for j, a in enumerate(self.fn.args):
            self.b.store(self.b.bitcast(a, p8), self.b.gep(ctx, [self.c(0), self.c(j)], inbounds=True))
        self.b.call(pool, [task, self.b.bitcast(ctx, p8), self.c(self.tasks), self.c(self.threads)])
        self._main = self._opened[-1][:3] + (list(self.fn.args),)
        self._open(task, [])
        tb = ir.IRBuilder(self.entry)
        tctx = tb.bitcast(task.args[0], p8.as_pointer())
        self._args = [tb.bitcast(tb.load(tb.gep(tctx, [self.c(j)], inbounds=True)), ELEM[d].as_pointer())
                      for j, d in enumerate(self.dtypes)]
        self._opened[-1] = self._opened[-1][:3] + (self._args,)
        self.task, self.thread = task.args[1], task.args[2]

    @contextmanager
    def after_join(self):
        """Write code into @kernel after the parallel call returns (a reduction of per-thread
        partial results); yields @kernel's own arguments."""
        saved = (self.entry, self.b, self._args)
        self.entry, _, self.b, self._args = self._main
        try:
            yield self._args
        finally:
            self.entry, self.b, self._args = saved

    def share(self, n: int):
        """This task's share [lo, hi) of range(n) (i64 values; ints with one thread): the first
        n % tasks tasks take one more, so shares differ by at most one."""
        if self.threads == 1:
            return 0, n
        q, r = divmod(n, self.tasks)
        t = self.task
        lo = self.b.add(self.b.mul(t, self.c(q)), self.b.select(self.b.icmp_unsigned("<", t, self.c(r)), t, self.c(r)))
        hi = self.b.add(lo, self.b.select(self.b.icmp_unsigned("<", t, self.c(r)), self.c(q + 1), self.c(q)))
        return lo, hi

    @property
    def args(self):
        return self._args

    # ---- integers
    def c(self, v: int) -> ir.Constant:
        return ir.Constant(I64, int(v))

    def i(self, v) -> ir.Value:
        return v if isinstance(v, ir.Value) else self.c(v)

    def add(self, *xs):
        """The sum of i64 values and ints (constants folded, nsw: every index here is nonnegative)."""
        const = sum(x for x in xs if isinstance(x, int))
        vals = [x for x in xs if not isinstance(x, int)]
        if not vals:
            return self.c(const)
        acc = vals[0]
        for v in vals[1:]:
            acc = self.b.add(acc, v, flags=["nsw", "nuw"])
        return self.b.add(acc, self.c(const), flags=["nsw", "nuw"]) if const else acc

    def mul(self, x, k: int):
        if isinstance(x, int):
            return x * k
        if k == 0:
            return 0
        return x if k == 1 else self.b.mul(x, self.c(k), flags=["nsw", "nuw"])

    def lin(self, base, *terms):
        """base + sum(index * stride) over (index, stride) pairs: an i64 value, or an int when constant."""
        parts = [base] + [self.mul(ix, s) for ix, s in terms]
        consts = sum(p for p in parts if isinstance(p, int))
        vals = [p for p in parts if not isinstance(p, int)]
        return consts if not vals else self.add(*vals, consts)

    # ---- memory
    def at(self, ptr, idx):
        return self.b.gep(ptr, [self.i(idx)], inbounds=True)

    def load(self, ptr, idx):
        return self.b.load(self.at(ptr, idx))

    def store(self, val, ptr, idx):
        self.b.store(val, self.at(ptr, idx))

    def _intrinsic(self, name: str, ty: ir.FunctionType) -> ir.Function:
        if name not in self._decls:
            self._decls[name] = ir.Function(self.module, ty, name)
        return self._decls[name]

    def memcpy(self, dst, src, n: int, size: int) -> None:
        """n elements of `size` bytes from src to dst (distinct buffers)."""
        if n <= 0:
            return
        p = ir.IntType(8).as_pointer()
        f = self._intrinsic("llvm.memcpy.p0i8.p0i8.i64", ir.FunctionType(ir.VoidType(), [p, p, I64, ir.IntType(1)]))
        self.b.call(f, [self.b.bitcast(dst, p), self.b.bitcast(src, p), self.c(n * size), ir.Constant(ir.IntType(1), 0)])

    def zero(self, dst, n, size: int) -> None:
        """n elements (an int, or an i64 value >= 0) of `size` bytes at dst set to zero (all-zero
        bits: 0.0 in floats)."""
        if isinstance(n, int) and n <= 0:
            return
        p = ir.IntType(8).as_pointer()
        f = self._intrinsic("llvm.memset.p0i8.i64", ir.FunctionType(ir.VoidType(), [p, I8, I64, ir.IntType(1)]))
        nbytes = self.c(n * size) if isinstance(n, int) else self.b.mul(n, self.c(size))
        self.b.call(f, [self.b.bitcast(dst, p), ir.Constant(I8, 0), nbytes, ir.Constant(ir.IntType(1), 0)])

    # ---- control flow
    @contextmanager
    def loop(self, n, start=0):
        """for i in range(start, n): yields i (i64). n: an int (a loop of one iteration yields the
        constant start, without a loop) or an i64 value.

        Every loop is marked not to be unrolled (`_no_unroll`). With the shapes constant, LLVM
        unrolled loops completely: a short row (LeNet's 28 columns) vanished and the loop around
        it was vectorized instead, with gathers and scatters (the conv epilogue ran 3x slower),
        and the taps' copy loops became 150 copies (0.3 s of O3 for one conv backward, 50 ms
        without); kept as loops, the vectorizer takes the rows and interleaves them itself."""
        if isinstance(n, int) and isinstance(start, int) and n - start == 1:
            yield self.c(start)
            return
        b = self.b
        pre = b.block
        head = b.append_basic_block("loop")
        body = b.append_basic_block("body")
        latch = b.append_basic_block("latch")
        done = b.append_basic_block("done")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64, "i")
        i.add_incoming(self.i(start), pre)
        b.cbranch(b.icmp_signed("<", i, self.i(n)), body, done)
        b.position_at_end(body)
        yield i
        b.branch(latch)
        b.position_at_end(latch)
        nxt = b.add(i, self.c(1), flags=["nsw", "nuw"])
        i.add_incoming(nxt, latch)
        b.branch(head)
        b.position_at_end(done)

    @contextmanager
    def when(self, cond):
        with self.b.if_then(cond):
            yield

    # ---- BLAS
    def _slot(self, ty, value):
        key = (id(self.entry), str(ty), str(value))
        if key not in self._slots:
            eb = ir.IRBuilder(self.entry)
            s = eb.alloca(ty)
            eb.store(ir.Constant(ty, value), s)
            self._slots[key] = s
        return self._slots[key]

    def gemm(self, dt: str, ta: str, tb: str, m: int, n: int, k: int, a, lda: int, b_, ldb: int, c, ldc: int,
             beta: float = 0.0) -> None:
        """Fortran (column-major) C[m, n] = op(A) op(B) + beta C through the BLAS entry points the
        kernel library registers (scipy's, the ones numba's np.dot calls): row-major callers pass
        C^T = B^T A^T, as numba does."""
        kind = "s" if dt == "f32" else "d"
        fty = ELEM[dt]
        p8 = I8.as_pointer()
        f = self._intrinsic(f"graphc_blas_{kind}gemm", ir.FunctionType(ir.VoidType(), [p8] * 13))
        vals = [self._slot(I8, ord(ta)), self._slot(I8, ord(tb)), self._slot(I32, m), self._slot(I32, n),
                self._slot(I32, k), self._slot(fty, 1.0), a, self._slot(I32, lda), b_, self._slot(I32, ldb),
                self._slot(fty, beta), c, self._slot(I32, ldc)]
        self.b.call(f, [self.b.bitcast(v, p8) for v in vals])

    def text(self) -> str:
        """The function's text, named as lower_llvm's kernels are (@kernel, no module header)."""
        for entry, body, b, _ in self._opened:
            ir.IRBuilder(entry).branch(body)
            b.ret_void()
        lines = [ln for ln in str(self.module).splitlines()
                 if not ln.startswith(("; ModuleID", "target triple", "target datalayout"))]
        text = "\n".join(lines).strip("\n").replace('@"kernel"(', "@kernel(")
        return f"; graphc op kernel: {self.comment}\n{_no_unroll(text)}\n"


def _no_unroll(text: str) -> str:
    """The back edge of every loop (the branch ending its "latch..." block) tagged with loop
    metadata llvm.loop.unroll.disable (llvmlite.ir cannot write a self-referencing loop id)."""
    import re

    out, k, in_row = [], 0, False
    for ln in text.split("\n"):
        if re.match(r'^"?latch[.\d]*"?:', ln):
            in_row = True
        elif in_row and ln.strip().startswith("br label"):
            k += 1
            ln += f", !llvm.loop !{k}"
            in_row = False
        out.append(ln)
    if k:
        out.append("")
        out += [f"!{j} = distinct !{{!{j}, !0}}" for j in range(1, k + 1)]
        out.append('!0 = !{!"llvm.loop.unroll.disable"}')
    return "\n".join(out)
