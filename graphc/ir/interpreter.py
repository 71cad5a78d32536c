"""The reference interpreter: runs any graph op by op with the numpy reference kernels.

It is the semantic oracle: passes are checked by running it before and after, and the
numba runtime is checked against it.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .errors import ShapeError
from .graph import Graph
from .opdef import OPS
from .types import DTYPES, TensorType


def _describe(a: np.ndarray) -> str:
    """`f32[8,11]` for dtypes graphc knows, `float16[8,11]` otherwise."""
    name = next((k for k, v in DTYPES.items() if v == a.dtype), str(a.dtype))
    return f"{name}[{','.join(str(s) for s in a.shape)}]"


def bind_inputs(g: Graph, args: Sequence | Mapping) -> dict[str, np.ndarray]:
    """Match positional or named arguments to the graph's inputs, checking shape and dtype."""
    if isinstance(args, Mapping):
        missing = [i.name for i in g.inputs if i.name not in args]
        if missing:
            raise ShapeError(f"graph {g.name}: missing inputs {missing}")
        vals = [args[i.name] for i in g.inputs]
    else:
        if len(args) != len(g.inputs):
            raise ShapeError(f"graph {g.name} takes {len(g.inputs)} inputs ({', '.join(i.name for i in g.inputs)}), got {len(args)}")
        vals = list(args)
    env = {}
    for inp, v in zip(g.inputs, vals):
        a = np.asarray(v)
        got = TensorType(a.shape, inp.type.dtype) if a.dtype == inp.type.np_dtype else None
        if got != inp.type:
            raise ShapeError(f"graph {g.name}: input %{inp.name} expected {inp.type}, got {_describe(a)}")
        env[inp.name] = a
    return env


def interpret(g: Graph, args: Sequence | Mapping, return_env: bool = False):
    """Evaluate `g` on numpy arrays; returns the list of output arrays (and every value if asked)."""
    env = bind_inputs(g, args)
    for n in g.nodes:
        if n.body is not None:  # a kernel of the kernel stage: its body, on the node's operands
            res = tuple(interpret(n.body, [env[i] for i in n.inputs]))
        else:
            res = OPS[n.op].reference(*[env[i] for i in n.inputs], **dict(n.attrs))
        res = res if isinstance(res, tuple) else (res,)
        for name, t, v in zip(n.outputs, n.types, res):
            v = np.asarray(v)
            if v.shape != t.shape or v.dtype != t.np_dtype:
                raise AssertionError(f"reference kernel of {n.op} gave {v.dtype}{list(v.shape)} for %{name}: {t}")
            env[name] = v
    outs = [env[o.value] for o in g.outputs]
    return (outs, env) if return_env else outs
