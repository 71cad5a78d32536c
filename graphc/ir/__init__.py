"""graphc's IR: typed SSA graphs, the op table, text form, verifier and reference interpreter.

The ground floor: nothing here imports the rest of graphc.
"""
from .errors import GraphcError, ParseError, ShapeError, VerifyError
from .types import DTYPES, TensorType, dtype_name
from .graph import Graph, GraphBuilder, Input, Node, Output, INPUT_KINDS
from . import ops
from .opdef import OPS, OpDef, get_op, no_gradient
from .text import parse, print_graph
from .interpreter import interpret

__all__ = [
    "GraphcError", "ParseError", "ShapeError", "VerifyError", "DTYPES", "TensorType", "dtype_name",
    "Graph", "GraphBuilder", "Input", "Node", "Output", "INPUT_KINDS", "ops", "OPS", "OpDef", "get_op",
    "no_gradient", "parse", "print_graph", "interpret",
]
