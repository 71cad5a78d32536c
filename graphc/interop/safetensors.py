"""Weights in the safetensors format, in torch's key names, with numpy and json only.

    graphc.save_safetensors(model.state_dict(), "model.safetensors")
    model.load_state_dict(graphc.load_safetensors("model.safetensors"))

The format (huggingface/safetensors, docs "Format"): 8 bytes little-endian u64 N, then N
bytes of JSON `{name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}` (padded with spaces to a multiple of 8), then the tensors' bytes,
little-endian, row-major, offsets relative to the end of the header. It is small enough that
the `safetensors` package would not earn its place as a dependency.
"""
from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict

import numpy as np

from ..ir import GraphcError

__all__ = ["load_safetensors", "save_safetensors", "SafetensorsError"]

# safetensors dtype name <-> numpy dtype (little-endian). BF16 has no numpy dtype: loaded as float32.
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {dt: name for name, dt in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit


class SafetensorsError(GraphcError):
    """A file that is not valid safetensors, or a value that cannot be written as one."""


def _as_numpy(name: str, v) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().cpu().numpy()
    a = np.asarray(v)
    if a.dtype.newbyteorder("<") not in _NAMES and a.dtype not in _NAMES:
        raise SafetensorsError(f"save_safetensors: {name!r} has dtype {a.dtype}, which safetensors cannot hold "
                               f"(supported: {', '.join(str(d) for d in _NAMES)})")
    # np.asarray(order="C"), not ascontiguousarray: that would make a 0-d value 1-d
    return np.asarray(a, dtype=a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype, order="C")


def save_safetensors(state_dict, path, metadata: dict[str, str] | None = None) -> None:
    """Write `state_dict` (name -> numpy array or torch tensor; or a module, whose state_dict()
    is taken) to `path`. Keys are kept as given: torch's names stay torch's names."""
    if hasattr(state_dict, "state_dict") and callable(state_dict.state_dict):
        state_dict = state_dict.state_dict()
    arrays = [(str(k), _as_numpy(str(k), v)) for k, v in state_dict.items()]
    header: dict = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise SafetensorsError("save_safetensors: metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, a in arrays:
        if name == "__metadata__":
            raise SafetensorsError("save_safetensors: '__metadata__' is reserved and cannot name a tensor")
        dt = a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype
        header[name] = {"dtype": _NAMES[dt], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, a in arrays:
            f.write(a.tobytes())


def load_safetensors(path, with_metadata: bool = False):
    """Read a safetensors file into an OrderedDict name -> numpy array (file order of offsets).

    BF16 tensors come back as float32 (numpy has no bfloat16). With `with_metadata=True`,
    returns `(tensors, metadata)`."""
    with open(path, "rb") as f:
        data = f.read()
    where = os.fspath(path)
    if len(data) < 8:
        raise SafetensorsError(f"{where}: not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or 8 + n > len(data):
        raise SafetensorsError(f"{where}: header length {n} does not fit the file ({len(data)} bytes)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{where}: the header is not JSON: {e}") from None
    metadata = header.pop("__metadata__", None) or {}
    body = memoryview(data)[8 + n:]
    out = OrderedDict()
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if dtype == "BF16":
            raw = np.frombuffer(body[begin:end], dtype="<u2")
            a = (raw.astype(np.uint32) << 16).view(np.float32)
        elif dtype in _DTYPES:
            a = np.frombuffer(body[begin:end], dtype=_DTYPES[dtype])
        else:
            raise SafetensorsError(f"{where}: tensor {name!r} has dtype {dtype}, which graphc cannot read "
                                   f"(supported: {', '.join([*_DTYPES, 'BF16'])})")
        count = int(np.prod(shape, dtype=np.int64))
        if a.size != count or end > len(body):
            raise SafetensorsError(f"{where}: tensor {name!r} {dtype}{list(shape)} needs {count} elements, "
                                   f"its offsets [{begin}, {end}] hold {a.size}")
        out[name] = a.reshape(shape).astype(a.dtype.newbyteorder("="), copy=True)
    return (out, metadata) if with_metadata else out
