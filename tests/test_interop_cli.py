"""`graphc inspect/dump --torch FILE.py:Class` and `graphc export-onnx`, run in process."""
import logging
from pathlib import Path

import numpy as np
import pytest

from graphc import cli

torch = pytest.importorskip("torch")
SIMPLE = f"{Path(__file__).resolve().parent / 'fixtures' / 'simple_net.py'}:SimpleNet"

TORCH_MODELS = '''
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(10, 16)
        self.fc2 = torch.nn.Linear(16, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


class UsesFFT(torch.nn.Module):
    def forward(self, x):
        return torch.fft.fft(x).real
'''


@pytest.fixture(autouse=True)
def _restore_logging():
    logger = logging.getLogger("graphc")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers


@pytest.fixture
def models(tmp_path):
    path = tmp_path / "torch_models.py"
    path.write_text(TORCH_MODELS)
    return path


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_and_dump_a_torch_model(models, tmp_path, capsys, cache_dir):
    code, out, err = run(capsys, "inspect", "--torch", f"{models}:Net", "--input", "8x10")
    assert code == 0, err
    assert "linear_relu(%x, %fc1.weight, %fc1.bias)  # torch_models.py:12" in out
    code, out, err = run(capsys, "inspect", f"{models}:Net", "--input", "8x10", "--train", "--report", "saved")
    assert code == 0, err  # a torch class given positionally is recognised too
    code, out, err = run(capsys, "dump", "--torch", f"{models}:Net", "--input", "8x10", "-o", tmp_path / "d", "--format", "svg")
    assert code == 0 and (tmp_path / "d" / "index.md").exists(), err


def test_export_onnx_command(models, tmp_path, capsys, cache_dir):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    code, out, err = run(capsys, "export-onnx", f"{models}:Net", "--input", "64x10", "-o", tmp_path / "net.onnx")
    assert code == 0, err
    assert "Gemm, Relu" in out and "dynamic batch" in out
    onnx.checker.check_model(onnx.load(str(tmp_path / "net.onnx")))
    x = np.ones((3, 10), np.float32)
    (y,) = ort.InferenceSession(str(tmp_path / "net.onnx")).run(None, {"x": x})
    assert y.shape == (3, 1)
    code, out, err = run(capsys, "export-onnx", f"{models}:CNN", "--input", "2x1x8x8", "-o", tmp_path / "cnn.onnx")
    assert code == 0 and "Conv" in out and "MaxPool" in out, err
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    (y,) = ort.InferenceSession(str(tmp_path / "cnn.onnx")).run(None, {"x": x})
    assert y.shape == (5, 3)
    code, out, err = run(capsys, "inspect", "--torch", f"{models}:CNN", "--input", "2x1x8x8")
    # (eval mode: fold_conv_affine has folded the BatchNorm into the conv's weights and bias)
    assert code == 0 and "conv2d(%x, %" in out and "max_pool2d(" in out, err
    assert "buffer %bn.running_mean" in out and "# torch_models.py:24" in out
    code, out, err = run(capsys, "export-onnx", SIMPLE, "--input", "4x10", "-o", tmp_path / "s.onnx", "--static-batch",
                         "--opset", "13")
    assert code == 0 and "opset 13" in out, err


def test_cli_errors_are_one_line(models, tmp_path, capsys):
    code, out, err = run(capsys, "inspect", "--torch", f"{models}:UsesFFT", "--input", "8x10")
    assert code == 1 and err.count("\n") == 1
    assert "torch.fft.fft" in err and "torch_models.py:29" in err
    code, out, err = run(capsys, "inspect", "--torch", SIMPLE, "--input", "8x10")
    assert code == 1 and "is not a torch.nn.Module" in err
    code, out, err = run(capsys, "export-onnx", SIMPLE, "--input", "8x10", "-o", tmp_path / "x.onnx", "--opset", "9")
    assert code == 1 and "opset=9" in err
    code, out, err = run(capsys, "inspect", "--input", "8x10")
    assert code == 2 and "FILE.py:ClassName" in err
