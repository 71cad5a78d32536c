"""The numba pipeline of a generated `plan`: its own glue optimised lightly, its kernels fully.

A plan function is glue: views of the arenas and one call per kernel. Its kernels (library
kernels and the generated kernel functions) are compiled, each in its own numba library at the
full optimisation level, while the plan is type-inferred. What numba does next is costly and
buys nothing for glue: it links every callee's module into the plan's module and runs the full
LLVM pipeline (O3, vectorisers) over the plan's huge straight-line function and over the
already-optimised callees again. Measured on the GPT's forward plan that was 3/4 of its compile
(function passes on the glue, then the module passes). So after type inference (when every
callee is compiled) this pipeline lowers the plan with LLVM's pass level `GLUE_OPT`; the machine
code generator keeps numba's level, and the callees keep the code their own libraries optimised.

`NUMBA_OPT` is numba's process-wide setting, read when a pass manager is built; the pass below
sets it for the rest of this compile, the pipeline's last pass restores it, and `glue_compile`
restores it too when a compile fails half-way.
Every compile holds numba's global compiler lock, so no other compile sees the lowered level.
"""
from __future__ import annotations

import contextlib

import llvmlite.binding as ll
from numba.core import config
from numba.core.codegen import JITCodeLibrary
from numba.core.compiler import CompilerBase, DefaultPassBuilder
from numba.core.compiler_lock import require_global_compiler_lock
from numba.core.compiler_machinery import AnalysisPass, register_pass
from numba.core.typed_passes import NopythonTypeInference

GLUE_OPT = 1  # LLVM pass level of the plan's own function (numba's default is 3)


@register_pass(mutates_CFG=False, analysis_only=True)
class GlueOptLevel(AnalysisPass):
    """Runs after type inference: from here on (lowering, LLVM passes) this compile uses GLUE_OPT."""

    _name = "graphc_glue_opt_level"

    def __init__(self):
        AnalysisPass.__init__(self)

    def run_pass(self, state):
        _saved.append(config.OPT)
        if int(config.OPT) > GLUE_OPT:
            config.OPT = config._OptLevel(GLUE_OPT)
        if state.library is None:  # numba's lowering pass takes the library it finds here
            state.library = PlanLibrary(state.targetctx.codegen(), state.func_id.func_qualname)
            state.library.enable_object_caching()
        return False


@register_pass(mutates_CFG=False, analysis_only=True)
class RestoreOptLevel(AnalysisPass):
    """The pipeline's last pass: NUMBA_OPT back to what GlueOptLevel found (glue_compile() also
    restores it when a compile fails half-way)."""

    _name = "graphc_restore_opt_level"

    def __init__(self):
        AnalysisPass.__init__(self)

    def run_pass(self, state):
        if _saved:
            config.OPT = _saved.pop()
        return False


_saved: list = []  # NUMBA_OPT as GlueOptLevel found it (compiles hold numba's global lock)


class PlanLibrary(JITCodeLibrary):
    """The plan's code library: its own module (the glue) is optimised alone; the callees' modules,
    each optimised in its own library already, are linked in after that and only pruned of what
    nothing calls (their Python wrappers), instead of numba's default of optimising the linked
    whole again (which re-optimises every kernel once per plan)."""

    def finalize(self):
        require_global_compiler_lock()
        self._codegen._check_llvm_bugs()
        self._raise_if_finalized()
        self._optimize_final_module()
        seen = set()
        for library in self._linking_libraries:
            if library not in seen:
                seen.add(library)
                self._reload_init.update(library._reload_init)
                self._final_module.link_in(library._get_module_for_linking(), preserve=True)
        pm = ll.create_new_module_pass_manager()
        pm.add_global_dead_code_eliminate_pass()
        pm.run(self._final_module, self._codegen._pass_builder())
        self._final_module.verify()
        self._finalize_final_module()


class PlanCompiler(CompilerBase):
    """numba's nopython pipeline with GlueOptLevel after type inference."""

    def define_pipelines(self):
        pm = DefaultPassBuilder.define_nopython_pipeline(self.state)
        pm.add_pass_after(GlueOptLevel, NopythonTypeInference)
        pm.add_pass(RestoreOptLevel, "restore NUMBA_OPT")
        pm.finalize()
        return [pm]


@contextlib.contextmanager
def glue_compile():
    """Around a plan's compile (or cache load): restore NUMBA_OPT however the compile ends."""
    saved = config.OPT
    try:
        yield
    finally:
        config.OPT = saved
        _saved.clear()


# ------------------------------------------------------------------ the plan's views of its storage


if config.DISABLE_JIT:
    def view(base, offset, shape, dtype):
        """Plain-Python plans: the same view, through numba.carray on a ctypes pointer."""
        import ctypes

        import numpy as np
        from numba import carray

        return carray(ctypes.c_void_p(int(base) + int(offset) * np.dtype(dtype).itemsize), shape, dtype)
else:
    from numba.core import cgutils, types
    from numba.extending import intrinsic
    from numba.np.arrayobj import populate_array

    @intrinsic
    def view(typingctx, base, offset, shape, dtype):
        """view(base, offset, shape, dtype): the C-contiguous array of `dtype` and `shape` whose first
        element is element `offset` of the storage at integer address `base` (a bound array or an
        arena, from the plan's address table). Every value's storage in a plan is one of these: a
        few LLVM instructions each, where slicing the arena and then reshaping (with its
        size check and exception path) cost the plan's optimiser time per value, for nothing: the
        memory plan already proved the sizes."""
        if not (isinstance(base, types.Integer) and isinstance(offset, types.Integer)
                and isinstance(shape, types.BaseTuple) and isinstance(dtype, types.NumberClass)
                and all(isinstance(t, types.Integer) for t in shape)):
            return None
        arrty = types.Array(dtype.dtype, len(shape), "C")

        def codegen(context, builder, sig, args):
            base_v, off_v, shape_v, _ = args
            item = context.get_data_type(arrty.dtype)
            itemsize = context.get_constant(types.intp, context.get_abi_sizeof(item))
            off = context.cast(builder, off_v, sig.args[1], types.intp)
            data = builder.gep(builder.inttoptr(base_v, item.as_pointer()), [off])
            dims = [context.cast(builder, v, t, types.intp)
                    for v, t in zip(cgutils.unpack_tuple(builder, shape_v), sig.args[2])]
            strides, step = [], itemsize
            for d in reversed(dims):
                strides.insert(0, step)
                step = builder.mul(step, d)
            ary = context.make_array(arrty)(context, builder)
            populate_array(ary, data=data, shape=dims, strides=strides, itemsize=itemsize, meminfo=None)
            return ary._getvalue()

        return arrty(base, offset, shape, dtype), codegen
