"""Inspection: readable reports, graph pictures and dumps of every compilation stage.

    graphc.dump(step, "dumps/")            # NN_stage.{txt,dot,svg} + index.md
    print(graphc.inspect.saved_report(step))
    graphc.inspect.to_dot(graph)           # a pydot graph
"""
from .dot import render, to_dot, write_graph
from .dump import dump
from .reports import diff, fusion_report, memory_plan, passes_report, saved_report

__all__ = ["dump", "to_dot", "render", "write_graph", "diff", "passes_report", "saved_report", "memory_plan",
           "fusion_report"]
