"""graphc.save / graphc.load: checkpoints of nested dicts of arrays and plain values, in a file
whose loading never executes code.

    graphc.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "epoch": epoch,
                 "rng": graphc.random.get_state()}, "run.ckpt")
    ckpt = graphc.load("run.ckpt")

The file is a numpy `.npz` archive (a zip): every array is one entry, and one more entry,
`__graphc__`, holds a JSON header that describes the nesting and the plain values (str, int,
float, bool, None, lists, tuples; dict keys may be str, int, float, bool or None). It is read
with `np.load(allow_pickle=False)` and `json.loads`: no pickle, so a file from elsewhere can
carry wrong data but no code. Floats round-trip exactly (JSON keeps Python's shortest repr;
inf and nan included), arrays bit for bit (dtype and shape kept; a Parameter comes back as a
plain ndarray, which load_state_dict takes). torch tensors are saved as numpy arrays.
The file is written to a temporary name and renamed, so a crash never leaves half a checkpoint.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile

import numpy as np

from .ir import GraphcError

FORMAT = "graphc-checkpoint"
VERSION = 1
HEADER = "__graphc__"


class CheckpointError(GraphcError, ValueError):
    """A value cannot be saved, or a file is not a graphc checkpoint; the message names where."""


def _where(path: list) -> str:
    return "checkpoint" + "".join(f"[{k!r}]" for k in path) if path else "the checkpoint itself"


def _encode(obj, path: list, arrays: dict):
    if hasattr(obj, "detach") and hasattr(obj, "numpy"):  # a torch or graphc tensor
        obj = obj.detach()
        obj = (obj.cpu() if hasattr(obj, "cpu") else obj).numpy()
    if isinstance(obj, (np.ndarray, np.generic)):
        a = np.asarray(obj)
        if a.dtype.kind not in "biufc":
            raise CheckpointError(f"graphc.save: {_where(path)} is an array of {a.dtype}; checkpoints hold numeric arrays")
        name = f"a{len(arrays)}"
        arrays[name] = (a if a.flags.c_contiguous else np.ascontiguousarray(a)).view(np.ndarray)  # 0-d stays 0-d
        return {"__array__": name, **({"scalar": True} if isinstance(obj, np.generic) else {})}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else {"__float__": repr(obj)}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not (k is None or isinstance(k, (str, int, float, bool))):
                raise CheckpointError(f"graphc.save: {_where(path)} has a key {k!r} of type {type(k).__name__}; "
                                      f"keys must be str, int, float, bool or None")
            items.append([k, _encode(v, path + [k], arrays)])
        return {"__dict__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, path + [k], arrays) for k, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, path + [k], arrays) for k, v in enumerate(obj)]
    raise CheckpointError(f"graphc.save: {_where(path)} is a {type(obj).__module__}.{type(obj).__qualname__}; "
                          f"checkpoints hold arrays and plain values (dict, list, tuple, str, int, float, bool, None). "
                          f"Save its state_dict() instead")


def save(obj, path) -> None:
    """Write `obj` (nested dicts/lists/tuples of arrays and plain values) to `path`."""
    arrays: dict[str, np.ndarray] = {}
    header = {"format": FORMAT, "version": VERSION, "value": _encode(obj, [], arrays)}
    text = json.dumps(header, allow_nan=False)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".graphc-save-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{HEADER: np.frombuffer(text.encode(), np.uint8)}, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path):
    """Read a checkpoint written by graphc.save (arrays come back as numpy arrays)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if HEADER not in z.files:
                raise CheckpointError(f"graphc.load: {path} is not a graphc checkpoint (no {HEADER} entry)")
            header = json.loads(z[HEADER].tobytes().decode())
            arrays = {name: z[name] for name in z.files if name != HEADER}
    except (zipfile.BadZipFile, ValueError, OSError, UnicodeDecodeError, EOFError) as e:
        if isinstance(e, CheckpointError):
            raise
        if isinstance(e, FileNotFoundError):
            raise CheckpointError(f"graphc.load: no such file {path}") from None
        raise CheckpointError(f"graphc.load: {path} is not a readable graphc checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"graphc.load: {path} is not a graphc checkpoint")
    if header.get("version") != VERSION:
        raise CheckpointError(f"graphc.load: {path} has checkpoint version {header.get('version')}; "
                              f"this graphc reads version {VERSION}")
    return _decode(header["value"], arrays, path)


def _decode(v, arrays: dict, path: str):
    if isinstance(v, list):
        return [_decode(x, arrays, path) for x in v]
    if not isinstance(v, dict):
        return v
    if "__array__" in v:
        try:
            a = arrays[v["__array__"]]
        except KeyError:
            raise CheckpointError(f"graphc.load: {path} is damaged (array {v['__array__']} missing)") from None
        return a[()] if v.get("scalar") else a
    if "__dict__" in v:
        return {(tuple(k) if isinstance(k, list) else k): _decode(x, arrays, path) for k, x in v["__dict__"]}
    if "__tuple__" in v:
        return tuple(_decode(x, arrays, path) for x in v["__tuple__"])
    if "__float__" in v:
        return float(v["__float__"])
    raise CheckpointError(f"graphc.load: {path} is damaged (unknown entry {sorted(v)})")


__all__ = ["save", "load", "CheckpointError"]
