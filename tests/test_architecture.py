"""The floors of ARCHITECTURE.md hold: who may import whom is checked, not hoped for."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# folder -> graphc modules it may import (prefix match); everything else of graphc is forbidden.
FLOORS = {
    "graphc/ir": ("graphc.ir",),
    "graphc/nn": ("graphc.ir", "graphc.nn", "graphc.tracing", "graphc.random", "graphc.eager",
                  "graphc.tensor_methods"),  # tensor_methods: the tracing front end's torch methods (issue 11)
    "passes": ("graphc.ir", "graphc.passes"),
    "runtime": ("graphc.ir", "graphc.runtime"),
    # interop sits on the face's floor, but never on the runtime: it maps graphs, it runs nothing
    "graphc/interop": ("graphc.ir", "graphc.nn", "graphc.tracing", "graphc.tensor_methods", "graphc.random",
                       "graphc.passes", "graphc.interop"),
}
RELATIVE_BASE = {"graphc/ir": "graphc.ir", "graphc/nn": "graphc.nn", "passes": "graphc.passes", "runtime": "graphc.runtime",
                 "graphc/interop": "graphc.interop"}


def graphc_imports(path, package):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in ("graphc", "passes", "runtime"):
                    yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level > 1 else base
                if node.module:
                    yield node.lineno, ".".join(base + [node.module])
                else:  # `from .. import random`: the names are modules
                    for a in node.names:
                        yield node.lineno, ".".join(base + [a.name])
            elif node.module and node.module.split(".")[0] in ("graphc", "passes", "runtime"):
                yield node.lineno, node.module


def files(folder):
    for dirpath, _, names in os.walk(os.path.join(ROOT, folder)):
        for n in sorted(names):
            if n.endswith(".py"):
                yield os.path.join(dirpath, n)


@pytest.mark.parametrize("folder", sorted(FLOORS))
def test_floor_imports_only_what_it_may(folder):
    allowed = FLOORS[folder]
    bad = []
    for path in files(folder):
        rel = os.path.relpath(path, ROOT)
        sub = os.path.dirname(os.path.relpath(path, os.path.join(ROOT, folder))).replace(os.sep, ".")
        package = RELATIVE_BASE[folder] + (f".{sub}" if sub else "")
        for line, mod in graphc_imports(path, package):
            if mod.split(".")[0] in ("passes", "runtime"):
                bad.append(f"{rel}:{line} imports top-level {mod!r}; use graphc.{mod}")
            elif mod == "graphc" or not any(mod == a or mod.startswith(a + ".") for a in allowed):
                bad.append(f"{rel}:{line} imports {mod}")
    assert not bad, f"{folder} may import only {allowed}:\n" + "\n".join(bad)


def test_import_graphc_is_light():
    import subprocess
    import sys

    code = ("import sys, graphc, graphc.nn; print('numba' in sys.modules, 'torch' in sys.modules, "
            "'mpi4py' in sys.modules, 'onnx' in sys.modules, 'onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"] * 5, "import graphc must not pull in numba, torch, mpi4py, onnx or onnxruntime"


def test_interop_imports_its_dependencies_only_when_used():
    import subprocess
    import sys

    heavy = ("torch", "onnx", "onnxruntime", "safetensors", "numba")
    code = ("import sys, graphc, graphc.interop, graphc.interop.safetensors, graphc.interop.onnx_export, "
            "graphc.interop.torch_ops; graphc.load_safetensors; graphc.export_onnx; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing graphc.interop pulled in {out}"
