"""graphc.func: function transforms on plain Python functions of tensors or arrays (torch.func, JAX).

    df = graphc.func.grad(f)                  # df(x) = d f(x) / d x  (f returns a scalar)
    value, g = graphc.func.value_and_grad(f, argnums=(0, 1))(w, b)
    out, vjp_fn = graphc.func.vjp(f, x); (gx,) = vjp_fn(cotangent)

Each call records `f` on fresh leaf tensors and runs the recording with autodiff through the same
pipeline (and plan cache) as Tensor.backward(); nothing accumulates into any `.grad`. Gradients
come back as the inputs came in: numpy arrays for numpy arrays, Tensors for Tensors.
"""
from __future__ import annotations

import functools

import numpy as np

from .eager import Tensor, enable_grad
from .tracing import trace_error


def _leaf(x) -> Tensor:
    a = x._materialize() if isinstance(x, Tensor) else np.ndarray.view(np.asarray(x), np.ndarray)
    if a.dtype.kind != "f":
        raise trace_error(f"graphc.func: differentiated arguments must be float arrays or tensors, got {a.dtype}")
    return Tensor._from(a, requires_grad=True)


def _like(g, x):
    return Tensor._from(g) if isinstance(x, Tensor) else g


def _nums(argnums, n: int) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for k in nums:
        if not -n <= k < n:
            raise trace_error(f"graphc.func: argnums {k} is out of range for {n} positional argument(s)")
    return tuple(k % n for k in nums)


def _gradients(out, leaves, cotangent=None):
    from . import autograd

    if not isinstance(out, Tensor) or out._tape is None or out._tape.closed:
        return [np.zeros(leaf.shape, leaf.dtype) for leaf in leaves]  # out does not depend on them
    grads = autograd.backward(out, cotangent, inputs=leaves)
    return [np.zeros(leaf.shape, leaf.dtype) if g is None else g for g, leaf in zip(grads, leaves)]


def value_and_grad(fn, argnums=0, has_aux: bool = False):
    """fn(*args) -> scalar (or (scalar, aux) with has_aux); returns a function giving (value, grads),
    grads one per argnums (a single one when argnums is an int)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        nums = _nums(argnums, len(args))
        args = list(args)
        leaves = []
        originals = []
        for k in nums:
            originals.append(args[k])
            args[k] = _leaf(args[k])
            leaves.append(args[k])
        with enable_grad():
            out = fn(*args, **kwargs)
        aux = None
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise trace_error("graphc.func: with has_aux=True the function must return (value, aux)")
            out, aux = out
        if int(np.prod(np.shape(out))) != 1:
            raise trace_error(f"graphc.func.grad: the function must return a scalar, got shape {list(np.shape(out))}")
        grads = [_like(g, x) for g, x in zip(_gradients(out, leaves), originals)]
        value = out.detach() if isinstance(out, Tensor) else out
        if not isinstance(originals[0], Tensor):
            value = np.asarray(value)[()]
        result = grads[0] if isinstance(argnums, int) else tuple(grads)
        return ((value, aux), result) if has_aux else (value, result)

    return wrapped


def grad(fn, argnums=0, has_aux: bool = False):
    """The gradient of a scalar function with respect to argument(s) argnums."""
    vg = value_and_grad(fn, argnums, has_aux)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        (value, aux), g = vg(*args, **kwargs) if has_aux else ((None, None), vg(*args, **kwargs)[1])
        return (g, aux) if has_aux else g

    return wrapped


def vjp(fn, *primals):
    """(fn(*primals), vjp_fn): vjp_fn(cotangent) -> one gradient per primal (cotangent^T @ J)."""
    with enable_grad():
        out = fn(*[_leaf(p) for p in primals])
    value = out.detach() if isinstance(out, Tensor) else out

    def vjp_fn(cotangent):
        leaves = [_leaf(p) for p in primals]
        with enable_grad():
            o = fn(*leaves)
        ct = cotangent._materialize() if isinstance(cotangent, Tensor) else np.asarray(cotangent, dtype=np.dtype(o.dtype))
        if ct.shape != tuple(o.shape):
            raise trace_error(f"vjp: the cotangent has shape {list(ct.shape)}, the output {list(o.shape)}")
        return tuple(_like(g, p) for g, p in zip(_gradients(o, leaves, ct.astype(o.dtype, copy=False)), primals))

    return (value if any(isinstance(p, Tensor) for p in primals) else np.asarray(value)), vjp_fn


__all__ = ["grad", "value_and_grad", "vjp"]
