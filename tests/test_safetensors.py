"""graphc.save_safetensors / load_safetensors: the safetensors format written with numpy + json,
in torch's key names, read back by graphc (and by the reference package where installed)."""
import json
import struct

import numpy as np
import pytest

import graphc
from models import SimpleNet
from graphc.interop.safetensors import SafetensorsError


def test_round_trip_keeps_names_dtypes_shapes_and_values(tmp_path):
    rng = np.random.default_rng(0)
    state = {"linear1.weight": rng.standard_normal((20, 10)).astype(np.float32),
             "b.f64": rng.standard_normal(3), "step": np.array(7, np.int64),
             "mask": np.array([True, False]), "half": np.arange(4, dtype=np.float16).reshape(2, 2),
             "empty": np.zeros((0, 3), np.float32)}
    path = tmp_path / "w.safetensors"
    graphc.save_safetensors(state, path, metadata={"format": "pt"})
    back, meta = graphc.load_safetensors(path, with_metadata=True)
    assert meta == {"format": "pt"}
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
        assert back[k].flags.writeable


def test_layout_is_the_documented_format(tmp_path):
    path = tmp_path / "w.safetensors"
    graphc.save_safetensors({"a": np.array([1.0, 2.0], np.float32), "b": np.array([[3]], np.int64)}, path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(raw[8:8 + n])
    assert header == {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "I64", "shape": [1, 1], "data_offsets": [8, 16]}}
    assert np.frombuffer(raw[8 + n:8 + n + 8], "<f4").tolist() == [1.0, 2.0]


def test_model_weights_go_through_in_torch_names(tmp_path):
    graphc.manual_seed(0)
    model = SimpleNet()
    graphc.save_safetensors(model, tmp_path / "m.safetensors")
    graphc.manual_seed(1)
    other = SimpleNet()
    other.load_state_dict(graphc.load_safetensors(tmp_path / "m.safetensors"))
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_torch_state_dict_and_bf16(tmp_path):
    torch = pytest.importorskip("torch")
    tm = torch.nn.Linear(3, 2)
    graphc.save_safetensors(tm.state_dict(), tmp_path / "t.safetensors")
    back = graphc.load_safetensors(tmp_path / "t.safetensors")
    assert list(back) == ["weight", "bias"]
    np.testing.assert_array_equal(back["weight"], tm.weight.detach().numpy())
    # bfloat16 (common in shared checkpoints) loads as float32: the top half of each float32's bits
    bf = np.array([1.5, -2.0, 3.140625], np.float32)
    bits = (bf.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    header += b" " * (-len(header) % 8)
    (tmp_path / "bf.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bits)
    np.testing.assert_array_equal(graphc.load_safetensors(tmp_path / "bf.safetensors")["w"], bf)


def test_reference_package_reads_what_graphc_writes(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.array([1, 2], np.int64)}
    graphc.save_safetensors(state, tmp_path / "a.safetensors")
    back = st.load_file(str(tmp_path / "a.safetensors"))
    for k in state:
        np.testing.assert_array_equal(back[k], state[k])
    st.save_file(state, str(tmp_path / "b.safetensors"))
    for k, v in graphc.load_safetensors(tmp_path / "b.safetensors").items():
        np.testing.assert_array_equal(v, state[k])


def test_bad_files_and_values_are_clear(tmp_path):
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(SafetensorsError, match="not a safetensors file"):
        graphc.load_safetensors(tmp_path / "short")
    (tmp_path / "big").write_bytes(struct.pack("<Q", 10 ** 6) + b"{}")
    with pytest.raises(SafetensorsError, match="does not fit"):
        graphc.load_safetensors(tmp_path / "big")
    header = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}'
    (tmp_path / "cut").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(SafetensorsError, match="needs 4 elements"):
        graphc.load_safetensors(tmp_path / "cut")
    with pytest.raises(SafetensorsError, match="complex128"):
        graphc.save_safetensors({"c": np.zeros(2, np.complex128)}, tmp_path / "c")
    assert isinstance(SafetensorsError("x"), graphc.GraphcError)
