"""The roofline of a train step: its GEMM FLOPs and the machine's FMA peak, measured here.

Why: a target such as "L at most 0.90x PyTorch eager's time" can ask for more than the machine
does. A train step of an MLP cannot take less time than its GEMMs' multiply-adds at the
fastest rate the cores retire them, so bench_train_step.py prints, next to graphc's and
torch's times, that floor measured in the same run:

- gemm_flops(sizes, batch): the step's GEMM FLOPs (2 per multiply-add): the forward
  (batch x in x out per layer), the weight gradients (the same) and the input gradients of
  every layer but the first (the model's input needs none);
- FmaPeak: a loop of independent <16 x float> fused multiply-adds (12 accumulators, two FMA
  ports' latency hidden; LLVM through llvmlite, for this CPU) on 1 or 2 threads; timing
  `flops` of it is the time those FLOPs take at the cores' peak. No GEMM reaches it (loads,
  packing, edges), so it is a hard lower bound; the best BLAS (the "GEMMs alone" rows) is the
  practical one.
"""
from __future__ import annotations

import ctypes
import threading

ACC, W = 12, 16  # accumulators, f32 lanes (one AVX-512 register; LLVM splits it on narrower CPUs)
FLOPS_PER_ITER = ACC * W * 2


def gemm_flops(sizes, batch: int) -> dict:
    """The train step's GEMM FLOPs by part: forward, weight gradients, input gradients."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    fwd = sum(2 * batch * a * b for a, b in pairs)
    dx = sum(2 * batch * a * b for a, b in pairs[1:])
    return {"forward": fwd, "weight grads": fwd, "input grads": dx, "total": 2 * fwd + dx}


def _ir() -> str:
    vt = f"<{W} x float>"
    c1 = "<" + ", ".join(["float 0x3FEFFFFFE0000000"] * W) + ">"  # 0.99999994: stays finite
    c2 = "<" + ", ".join(["float 0x3F50624DE0000000"] * W) + ">"
    lines = ["define void @fma_peak(i64 %n, ptr %out) {", "entry:", "  br label %loop", "loop:",
             "  %i = phi i64 [0, %entry], [%i1, %loop]"]
    lines += [f"  %a{a} = phi {vt} [zeroinitializer, %entry], [%b{a}, %loop]" for a in range(ACC)]
    lines += [f"  %b{a} = call {vt} @llvm.fma.v{W}f32({vt} %a{a}, {vt} {c1}, {vt} {c2})" for a in range(ACC)]
    lines += ["  %i1 = add i64 %i, 1", "  %c = icmp ult i64 %i1, %n", "  br i1 %c, label %loop, label %done", "done:"]
    s = "%b0"
    for a in range(1, ACC):
        lines.append(f"  %s{a} = fadd {vt} {s}, %b{a}")
        s = f"%s{a}"
    lines += [f"  %e = extractelement {vt} {s}, i32 0", "  store float %e, ptr %out", "  ret void", "}",
              f"declare {vt} @llvm.fma.v{W}f32({vt}, {vt}, {vt})"]
    return "\n".join(lines)


class FmaPeak:
    """`run(flops)`: execute `flops` FLOPs of independent FMAs split over `threads` threads
    (ctypes releases the GIL, so they run on separate cores)."""

    def __init__(self, threads: int):
        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        target = llvm.Target.from_default_triple()
        tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                          features=llvm.get_host_cpu_features().flatten(), opt=2)
        mod = llvm.parse_assembly(_ir())
        mod.verify()
        self._ee = llvm.create_mcjit_compiler(mod, tm)  # kept alive: owns the code
        self._ee.finalize_object()
        self._fn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p)(self._ee.get_function_address("fma_peak"))
        self._out = (ctypes.c_float * threads)()
        self.threads = threads

    def run(self, flops: float) -> None:
        iters = max(1, int(flops / FLOPS_PER_ITER / self.threads))
        if self.threads == 1:
            self._fn(iters, ctypes.addressof(self._out))
            return
        ts = [threading.Thread(target=self._fn, args=(iters, ctypes.addressof(self._out) + 4 * t))
              for t in range(self.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
