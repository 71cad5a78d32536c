"""The `graphc` command line: inspect a model's compilation, dump its stages, run the demo.

    graphc inspect model.py:SimpleNet --input 64x10 [--train --loss mse --optim sgd] [--all-stages]
    graphc dump model.py:SimpleNet --input 64x10 -o dumps/
    graphc report model.py:SimpleNet --input 64x10 --train -o report.html
    graphc inspect --torch torch_model.py:Net --input 64x10       # a torch.nn.Module, via graphc.from_torch
    graphc export-onnx model.py:SimpleNet --input 64x10 -o model.onnx
    graphc demo

A mistake in the command (no such file, no such class, a bad shape, a model that does not
trace) is one line on stderr and a non-zero exit; GRAPHC_LOG=debug (or -v) adds the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("graphc.cli")

REPORTS = ("passes", "saved", "memory", "fusion")
LOSSES = ("mse", "cross_entropy")
OPTIMIZERS = ("sgd", "adam")
DTYPES = ("f32", "f64", "i64")


class CLIError(Exception):
    """A mistake in what the user asked for: printed as one line, exit status `code`."""

    def __init__(self, msg: str, code: int = 1):
        super().__init__(msg)
        self.code = code


def one_line(msg: str, limit: int = 400) -> str:
    """An error message on one line: its first line, plus where (`at file:line: code`) when it says."""
    lines = [ln.strip() for ln in str(msg).splitlines() if ln.strip()]
    if not lines:
        return ""
    text = lines[0]
    for k, ln in enumerate(lines[1:], 1):
        if ln.startswith("at "):
            code = lines[k + 1] if k + 1 < len(lines) and not lines[k + 1].startswith("at ") else ""
            text += f" ({ln}{': ' + code if code else ''})"
            break
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------ arguments


def parse_shape(text: str, default_dtype: str = "f32") -> tuple[tuple[int, ...], str]:
    """`64x10` -> ((64, 10), "f32"); `64x10:i64` picks the dtype; `64,10` works too."""
    spec, _, dtype = text.strip().partition(":")
    dtype = dtype.strip() or default_dtype
    if dtype not in DTYPES:
        raise CLIError(f"bad dtype {dtype!r} in --input {text!r}: expected one of {', '.join(DTYPES)}", 2)
    parts = [p.strip() for p in re.split(r"[x×,]", spec.strip().lower())]
    if not spec.strip() or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise CLIError(f"bad shape {text!r}: expected positive sizes separated by 'x', e.g. 64x10 (or 64x10:i64)", 2)
    return tuple(int(p) for p in parts), dtype


def load_model_class(target: str, torch_ok: bool = False):
    """`path/to/file.py:ClassName` -> the class, importing the file as a module."""
    path, sep, name = target.rpartition(":")
    if not sep or not path or not name:
        raise CLIError(f"bad model {target!r}: expected FILE.py:ClassName, e.g. models.py:SimpleNet", 2)
    file = Path(path).expanduser()
    if not file.is_file():
        raise CLIError(f"no such file: {path}")
    module_name = f"graphc_user_{re.sub(r'[^0-9a-zA-Z_]', '_', file.stem)}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise CLIError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(file.resolve().parent))  # so the file can import its neighbours
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        log.debug("importing %s failed", path, exc_info=True)
        raise CLIError(f"cannot import {path}: {type(e).__name__}: {one_line(str(e))}") from None
    finally:
        sys.path.remove(str(file.resolve().parent))
    cls = getattr(module, name, None)
    if cls is None:
        import graphc.nn as nn

        found = sorted(k for k, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == module_name)
        if torch_ok:
            found += sorted(k for k, v in vars(module).items() if _is_torch_class(v) and v.__module__ == module_name)
        hint = f"; models defined there: {', '.join(found)}" if found else "; it defines no graphc.nn.Module"
        raise CLIError(f"{path} has no class {name!r}{hint}")
    return cls


def _is_torch_class(cls) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def model_from_args(args, inputs: list):
    """The model the arguments name: a graphc class, or a torch class (`--torch`, or a positional
    FILE.py:Class whose class is a torch.nn.Module) brought in with graphc.from_torch."""
    target = getattr(args, "torch", None) or args.model
    if not target:
        raise CLIError("give the model as FILE.py:ClassName (or --torch FILE.py:ClassName for a torch.nn.Module)", 2)
    if getattr(args, "torch", None) and args.model:
        raise CLIError(f"give the model once: {args.model} or --torch {args.torch}", 2)
    cls = load_model_class(target, torch_ok=True)
    if not (getattr(args, "torch", None) or _is_torch_class(cls)):
        return make_model(target, cls)
    if not _is_torch_class(cls):
        raise CLIError(f"--torch {target}: {target.rpartition(':')[2]} is not a torch.nn.Module")
    name = target.rpartition(":")[2]
    try:
        torch_model = cls()
    except Exception as e:
        log.debug("instantiating %s failed", name, exc_info=True)
        raise CLIError(f"cannot create {name}() with no arguments: {type(e).__name__}: {one_line(str(e))}") from None
    if args.dtype != "f32":
        torch_model = torch_model.double()
    from graphc.interop.torch_fx import from_torch

    return _run_user(f"importing torch model {name}", from_torch, torch_model, *inputs)


def make_model(target: str, cls=None):
    cls = cls if cls is not None else load_model_class(target)
    name = target.rpartition(":")[2]
    if not callable(cls):
        raise CLIError(f"{name} is not a class (got {type(cls).__name__})")
    try:
        model = cls()
    except Exception as e:
        log.debug("instantiating %s failed", name, exc_info=True)
        raise CLIError(f"cannot create {name}() with no arguments: {type(e).__name__}: {one_line(str(e))}") from None
    import graphc.nn as nn

    if not isinstance(model, nn.Module):
        raise CLIError(f"{name} is not a graphc.nn.Module (it is a {type(model).__name__})")
    return model


def example_inputs(args) -> list:
    import numpy as np

    if not args.input:
        raise CLIError("give the example input shape(s) with --input, e.g. --input 64x10", 2)
    arrays = []
    for text in args.input:
        shape, dtype = parse_shape(text, args.dtype)
        arrays.append(np.zeros(shape, dtype={"f32": np.float32, "f64": np.float64, "i64": np.int64}[dtype]))
    return arrays


# ------------------------------------------------------------------ compiling


def _run_user(what: str, fn, *a):
    """Call into tracing/compiling; graphc errors and crashes in the user's model become CLIErrors."""
    from graphc.ir import GraphcError

    try:
        return fn(*a)
    except CLIError:
        raise
    except GraphcError as e:
        log.debug("%s failed", what, exc_info=True)
        raise CLIError(f"{what} failed: {one_line(str(e))}") from None
    except Exception as e:
        log.debug("%s failed", what, exc_info=True)
        raise CLIError(f"{what} failed: {type(e).__name__}: {one_line(str(e))}") from None


def _target_for(model, inputs: list, loss: str):
    """An example target for `loss`: same as the output (mse) or i64 labels [batch] (cross_entropy)."""
    import numpy as np
    import graphc

    g = graphc.trace(model, *inputs)
    t = g.types[g.outputs[0].value]
    if loss == "mse":
        return np.zeros(t.shape, t.np_dtype)
    if t.rank != 2:
        raise CLIError(f"--loss cross_entropy needs a [batch, classes] output; the model returns {t}")
    return np.zeros((t.shape[0],), np.int64)


def _optimizer(name: str, model):
    optim = importlib.import_module("graphc.optim")
    cls = {"sgd": "SGD", "adam": "Adam"}[name]
    lr = {"sgd": 0.01, "adam": 1e-3}[name]
    return getattr(optim, cls)(model.parameters(), lr=lr)


def _compiler():
    try:
        return importlib.import_module("graphc.compiler")
    except ModuleNotFoundError as e:
        if e.name in ("graphc.compiler", "graphc.optim"):
            return None
        raise


def build(args) -> Any:
    """Trace and compile what the arguments describe; return the compiled object (or plans)."""
    inputs = example_inputs(args)
    model = model_from_args(args, inputs)
    if args.dtype != "f32":
        import numpy as np

        model.to(np.float64)
    name = type(model).__name__
    t0 = time.perf_counter()
    import graphc

    if not args.train:
        model.eval()
        graph = _run_user(f"tracing {name}", graphc.trace, model, *inputs)
        compiler = _compiler()
        if compiler is not None:
            obj = _run_user(f"compiling {name}", compiler.compile, model, *inputs)
        else:  # no compiler yet: the pass pipeline alone still gives every stage and report but memory
            from graphc.passes import compile_pipeline

            obj = _run_user(f"compiling {name}", compile_pipeline, graph, "inference")
    else:
        model.train()
        target = _run_user(f"tracing {name}", _target_for, model, inputs, args.loss)
        compiler = _compiler()
        if compiler is None:
            raise CLIError("--train needs graphc.compiler and graphc.optim, which are not available in this build")
        import graphc.nn as nn

        loss_fn = nn.MSELoss() if args.loss == "mse" else nn.CrossEntropyLoss()
        opt = _run_user("creating the optimizer", _optimizer, args.optim, model)
        obj = _run_user(f"compiling the train step of {name}", compiler.compile_train_step, model, loss_fn, opt,
                        *inputs, target)
        inputs = [*inputs, target]
    log.debug("built %s in %.1f ms", name, (time.perf_counter() - t0) * 1e3)
    args.call_inputs = inputs  # what the compiled object is called with (graphc profile runs it)
    return obj


# ------------------------------------------------------------------ commands


def cmd_inspect(args) -> int:
    from graphc.inspect import access, reports

    obj = build(args)
    all_stages = _run_user("reading the stages", access.stages, obj)
    out: list[str] = []
    asked = args.stage or args.all_stages or args.diff or args.report
    if args.all_stages:
        for k, s in enumerate(all_stages):
            out.append(f"== {k:02d} {s.name} ==\n{s.ir.rstrip()}")
    for name in args.stage or ():
        s = _lookup(obj, name)
        out.append(f"== {s.name} ==\n{s.ir.rstrip()}")
    if args.diff:
        out.append(_lookup_call(reports.diff, obj, *args.diff))
    for kind in _reports(args.report):
        fn = {"passes": reports.passes_report, "saved": reports.saved_report, "memory": reports.memory_plan,
              "fusion": reports.fusion_report}[kind]
        out.append(f"== {kind} report ==\n" + _run_user(f"the {kind} report", fn, obj))
    if not asked:
        last = all_stages[-1]
        out.append(f"{len(all_stages)} stages: {' -> '.join(s.name for s in all_stages)}")
        out.append(f"== {last.name} ==\n{last.ir.rstrip()}")
        out.append("(more: --all-stages, --stage NAME, --diff A B, --report passes|saved|memory|fusion)")
    print("\n\n".join(out))
    return 0


def cmd_profile(args) -> int:
    """Compile, then print graphc.profile's table of the plan's kernel calls."""
    import graphc

    obj = build(args)
    if not hasattr(obj, "executables"):
        raise CLIError("profile needs graphc.compiler (this build has only the pass pipeline)")
    prof = _run_user("profiling", lambda: graphc.profile(obj, *args.call_inputs, steps=args.steps))
    print(prof)
    return 0


def _reports(kinds) -> list[str]:
    out = []
    for k in kinds or ():
        out += REPORTS if k == "all" else [k]
    return list(dict.fromkeys(out))


def _lookup(obj, name):
    from graphc.inspect import access

    return _lookup_call(access.find_stage, obj, name)


def _lookup_call(fn, *a):
    from graphc.ir import GraphcError

    try:
        return fn(*a)
    except GraphcError as e:
        raise CLIError(one_line(str(e))) from None


def cmd_dump(args) -> int:
    from graphc.inspect import dump

    obj = build(args)
    formats = ("txt", "dot", *(args.format or ("svg",)))
    written = _run_user("writing the dumps", dump, obj, args.out, formats)
    stages = sum(1 for p in written if p.endswith(".dot"))
    print(f"wrote {len(written)} files for {stages} stages to {args.out} ({os.path.join(args.out, 'index.md')} lists them)")
    return 0


def cmd_report(args) -> int:
    from graphc.inspect.html import report

    obj = build(args)
    path = _run_user("writing the report", report, obj, args.out)
    print(f"wrote {path} ({os.path.getsize(path) / 1024:,.0f} KiB): open it in a browser")
    return 0


def cmd_export_onnx(args) -> int:
    inputs = example_inputs(args)
    model = model_from_args(args, inputs)
    if args.dtype != "f32":
        import numpy as np

        model.to(np.float64)
    from graphc.interop import onnx_export

    export = lambda: onnx_export.export_onnx(model, args.out, *inputs, opset=args.opset,  # noqa: E731
                                             dynamic_batch=not args.static_batch)
    _run_user(f"exporting {type(model).__name__} to ONNX", export)
    import onnx

    m = onnx.load(args.out)
    ops = sorted({n.op_type for n in m.graph.node})
    print(f"wrote {args.out}: {len(m.graph.node)} nodes ({', '.join(ops)}), {len(m.graph.initializer)} initializers, "
          f"opset {args.opset}, inputs {', '.join(i.name for i in m.graph.input)}"
          f"{'' if args.static_batch else ' (dim 0 is the dynamic batch)'}")
    return 0


def samples_dir() -> Path:
    """samples/ of the source checkout (the package is installed editable, so it sits beside graphc/)."""
    import graphc

    return Path(graphc.__file__).resolve().parent.parent / "samples"


DEMO = "graphc.samples.simple_net"  # samples/simple_net.py, installed inside the package


def demo_module():
    """The demo sample: samples/simple_net.py, which pyproject installs as graphc.samples.simple_net
    (and a source checkout reaches the same way), so `graphc demo` works from any install."""
    return importlib.import_module(DEMO)


def cmd_warmup(args) -> int:
    from graphc.kernel_warmup import FAMILIES, warmup

    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        print(f"graphc warmup: unknown families {unknown}; expected some of {list(FAMILIES)}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    warmup(args.families or FAMILIES)
    print(f"graphc warmup: done in {time.perf_counter() - t0:.1f} s (library kernels in numba's cache)")
    return 0


def cmd_demo(args) -> int:
    try:
        module = demo_module()
    except ModuleNotFoundError as e:
        raise CLIError(f"the demo sample is missing: cannot import {DEMO} ({e}); reinstall graphc") from None
    except Exception as e:
        log.debug("importing %s failed", DEMO, exc_info=True)
        raise CLIError(f"cannot import the demo {DEMO}: {type(e).__name__}: {one_line(str(e))}") from None
    main_fn = getattr(module, "main", None)
    if not callable(main_fn):
        raise CLIError(f"the demo {DEMO} has no main(argv) function")
    argv = list(args.demo_args or ())
    if argv[:1] == ["--"]:
        argv = argv[1:]
    main_fn(argv)
    return 0


# ------------------------------------------------------------------ the parser


def _model_arguments(p: argparse.ArgumentParser, train: bool = True) -> None:
    p.add_argument("model", metavar="FILE.py:ModelName", nargs="?",
                   help="the model class to compile; it is created with no arguments (a torch.nn.Module class "
                        "goes through graphc.from_torch)")
    p.add_argument("--torch", metavar="FILE.py:ModelName",
                   help="a torch.nn.Module class instead, brought in with graphc.from_torch")
    p.add_argument("--input", action="append", metavar="SHAPE",
                   help="an example input's shape, e.g. 64x10 (64x10:i64 for another dtype); repeat for several inputs")
    p.add_argument("--dtype", default="f32", choices=("f32", "f64"),
                   help="float dtype of the model's parameters and the example inputs (default f32)")
    if not train:
        return
    t = p.add_argument_group("training (compile a whole train step)")
    t.add_argument("--train", action="store_true", help="compile forward + loss + backward + optimizer update")
    t.add_argument("--loss", default="mse", choices=LOSSES,
                   help="loss for --train: mse (target shaped like the output) or cross_entropy (i64 labels [batch])")
    t.add_argument("--optim", default="sgd", choices=OPTIMIZERS, help="optimizer for --train (default sgd)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="graphc", description="graphc: a static-graph compiler for PyTorch-style models.",
                                 epilog="GRAPHC_LOG=debug shows each pass and compile (or use -v).")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging (same as GRAPHC_LOG=debug)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="print a model's IR after each stage, diffs and reports",
                       description="Trace and compile a model, then print its IR, stage diffs and reports. "
                                   "Without options: the stage list and the final plan.")
    _model_arguments(p)
    show = p.add_argument_group("what to print")
    show.add_argument("--stage", action="append", metavar="NAME",
                      help="print the IR after stage NAME (a name, unique prefix or index); repeatable")
    show.add_argument("--all-stages", action="store_true", help="print the IR after every stage")
    show.add_argument("--diff", nargs=2, metavar=("A", "B"), help="unified diff of the IR of stages A and B")
    show.add_argument("--report", action="append", choices=(*REPORTS, "all"),
                      help="a report: passes, saved (values kept for backward), memory (buffer plan), fusion; repeatable")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("profile", help="run a compiled model and print where its time goes, kernel by kernel",
                       description="Compile a model (or its train step, --train) and run it on zeros of the example "
                                   "shapes; print graphc.profile's table: each kernel call of the plan with its IR "
                                   "members, phase and median time, then totals by phase and kind.")
    _model_arguments(p)
    p.add_argument("--steps", type=int, default=20, help="profiled calls (after 3 warm-up calls; default 20)")
    p.set_defaults(run=cmd_profile)

    p = sub.add_parser("dump", help="write every stage as text, DOT and SVG, with an index.md",
                       description="Trace and compile a model and write NN_stage.{txt,dot,svg} per stage plus index.md.")
    _model_arguments(p)
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="folder to write into (created if needed)")
    p.add_argument("--format", action="append", choices=("svg", "png", "pdf"),
                   help="picture format rendered by Graphviz (default svg); .txt and .dot are always written")
    p.set_defaults(run=cmd_dump)

    p = sub.add_parser("report", help="write one self-contained HTML page: every stage, diff, picture and kernel",
                       description="Trace and compile a model and write an HTML report to click through: stages with "
                                   "diffs and pictures, fusion, kernels, saved values, memory plans, generated code.")
    _model_arguments(p)
    p.add_argument("-o", "--out", default="report.html", metavar="FILE.html", help="the page to write (default report.html)")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("export-onnx", help="write a model's eval-mode forward as an ONNX file",
                       description="Trace a model in eval mode, optimize it and write it as ONNX (weights as "
                                   "initializers, checked with onnx.checker). Needs the onnx package.")
    _model_arguments(p, train=False)
    p.add_argument("-o", "--out", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--static-batch", action="store_true", help="keep the example's batch size (default: dim 0 is dynamic)")
    p.set_defaults(run=cmd_export_onnx)

    p = sub.add_parser("demo", help="train the SimpleNet sample end to end (samples/simple_net.py)",
                       description="Run samples/simple_net.py: trace, compile, train, evaluate and dump SimpleNet. "
                                   "Other arguments go to the sample (e.g. graphc demo --epochs 5).")
    p.add_argument("demo_args", nargs=argparse.REMAINDER, help="arguments for the sample's main()")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("warmup", help="compile the runtime's library kernels once (an install step, ~1-2 min)",
                       description="Compile and run a few small models (MLPs, a CNN, a GPT block, the eager loop) "
                                   "so that numba's cache holds every library kernel: the first model a user "
                                   "compiles then pays only for its own kernels. See graphc/kernel_warmup.py.")
    p.add_argument("families", nargs="*", metavar="FAMILY",
                   help="only these model families (default: all of mlp mlp64 cnn gpt eager)")
    p.set_defaults(run=cmd_warmup)
    return ap


def main(argv: list[str] | None = None) -> int:
    from graphc.log import configure, configure_from_env

    configure_from_env()
    ap = parser()
    args, extra = ap.parse_known_args(argv)
    if extra and getattr(args, "run", None) is not cmd_demo:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # `graphc demo --epochs 3`: options the sample understands, not ours
        args.demo_args = [*extra, *(args.demo_args or ())]
    if args.verbose:
        configure("debug")
    if not getattr(args, "run", None):
        ap.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except CLIError as e:
        print(f"graphc: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("graphc: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in graphc itself: still one line, the traceback under debug logging
        log.debug("unexpected error", exc_info=True)
        print(f"graphc: internal error: {type(e).__name__}: {one_line(str(e))} "
              "(GRAPHC_LOG=debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
