"""graphc.passes: graph -> graph transforms and the compile pipeline (imports graphc.ir only).

    from graphc.passes import PassManager, INFERENCE_PIPELINE, compile_pipeline
    result = PassManager(INFERENCE_PIPELINE).run(graph)   # .graph, .snapshots, .fusion_records
    plans = compile_pipeline(graph, "training")           # .forward, .backward, .stages, ...
"""
from .manager import (PASSES, Checker, FusionRecord, PassContext, PassError, PassInfo, PassManager, PipelineResult,
                      Snapshot, get_pass, known_passes, register_pass)
from . import cleanup, conv, decompose, fusion, kernels  # noqa: F401  (registers the passes)
from .pipeline import (CLEANUP_PIPELINE, FUSION_PIPELINE, INFERENCE_PIPELINE, PIPELINES, TRAIN_STEP_PIPELINE,
                       TRAINING_PIPELINE, CompiledPlans, compile_pipeline, default_pipeline)

__all__ = [
    "PASSES", "Checker", "FusionRecord", "PassContext", "PassError", "PassInfo", "PassManager", "PipelineResult",
    "Snapshot", "get_pass", "known_passes", "register_pass", "CLEANUP_PIPELINE", "FUSION_PIPELINE",
    "INFERENCE_PIPELINE", "TRAINING_PIPELINE", "TRAIN_STEP_PIPELINE", "PIPELINES", "CompiledPlans",
    "compile_pipeline", "default_pipeline",
]
