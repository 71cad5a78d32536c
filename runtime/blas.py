"""The BLAS behind every GEMM of a plan: scipy's OpenBLAS, reached through numba's np.dot.

OpenBLAS picks CPU-specific kernels when it loads. Versions that do not know a recent AMD CPU
(Zen 4 / Zen 5) fall back to the AVX2 "Haswell" kernels although the CPU has AVX-512; there the
AVX-512 ("SkylakeX") kernels run the GEMMs of a 784-512-512-10 MLP train step 1.7x faster and
tiny GEMMs ~1.5x faster. So, before scipy's OpenBLAS is loaded, graphc.runtime asks for those
kernels on AMD CPUs that have the AVX-512 subsets they use, unless OPENBLAS_CORETYPE is already
set. numpy's own OpenBLAS (another copy, loaded with numpy) is not affected; graphc never
mixes the two in a plan.
"""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("graphc.runtime")
AVX512_KERNELS = "SkylakeX"
_NEEDED = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


def _cpu() -> tuple[str, set[str]]:
    try:
        with open("/proc/cpuinfo") as f:
            vendor, flags = "", set()
            for line in f:
                if line.startswith("vendor_id") and not vendor:
                    vendor = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
            return vendor, flags
    except OSError:
        return "", set()


def choose_kernels() -> str | None:
    """Set OPENBLAS_CORETYPE for scipy's OpenBLAS if it helps and is still possible; returns what was set."""
    if os.environ.get("OPENBLAS_CORETYPE") or "scipy.linalg.cython_blas" in sys.modules:
        return None
    vendor, flags = _cpu()
    if vendor != "AuthenticAMD" or not _NEEDED <= flags:
        return None  # Intel CPUs are detected right; without AVX-512 these kernels would not run
    os.environ["OPENBLAS_CORETYPE"] = AVX512_KERNELS
    log.debug("OPENBLAS_CORETYPE=%s for scipy's OpenBLAS (AMD CPU with AVX-512)", AVX512_KERNELS)
    return AVX512_KERNELS
