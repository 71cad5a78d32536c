"""The IR text form: what people read and what lit-style tests are written in.

    graph SimpleNet {
      input %x: f32[64,10]
      param %linear1.weight: f32[20,10]
      param %linear1.bias: f32[20]
      %0: f32[64,20] = linear(%x, %linear1.weight, %linear1.bias)  # simple_net.py:14
      %1: f32[64,20] = relu(%0)  # simple_net.py:15
      return %1 as out
    }

Attributes equal to their default are not printed; `parse` fills them back in, so
`parse(str(g)) == g`. Backward nodes carry `# grad of %0, simple_net.py:14`.
"""
from __future__ import annotations

import json
import math
import re

from .errors import ParseError, ShapeError
from .graph import INPUT_KINDS, KERNEL, KERNEL_KINDS, PHASES, Graph, Input, Node, Output, kernel_phase
from .opdef import OPS, REQUIRED, get_op
from .types import TensorType

NAME = r"[\w.]+"
_TYPE = re.compile(r"^(\w+)\[([0-9,\s]*)\]$")
_INPUT = re.compile(rf"^({'|'.join(INPUT_KINDS)})\s+%({NAME})\s*:\s*(\S+)$")
_NODE = re.compile(rf"^(?P<outs>%{NAME}\s*:\s*\S+(?:\s*,\s*%{NAME}\s*:\s*\S+)*)\s*=\s*(?P<op>\w+)\((?P<args>[^)]*)\)"
                   rf"(?:\s*\{{(?P<attrs>.*)\}})?$")
_ATTR = re.compile(r'(\w+)\s*=\s*(\[[^\]]*\]|"(?:[^"\\]|\\.)*"|[^,\s]+)')
_OUTPUT = re.compile(rf"^%({NAME})(?:\s+as\s+([\w.:]+))?$")


# ------------------------------------------------------------------ printing


def format_attr(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def format_attrs(node: Node) -> str:
    """The `{k=v, ...}` block without attributes equal to their defaults ('' if none)."""
    # An unknown op prints every attribute, so the verifier can still show it in context.
    spec = OPS[node.op].attrs if node.op in OPS else {}
    if node.op == KERNEL:
        return " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in node.attrs) + "}"
    shown = [f"{k}={format_attr(v)}" for k, v in node.attrs if k not in spec or spec[k].default != v]
    return " {" + ", ".join(shown) + "}" if shown else ""


def _implied_phase(grad_of: str | None) -> str:
    return "backward" if grad_of else "forward"


def format_comment(node: Node) -> str:
    """`  # [phase, ][grad of %v, ][file.py:3]`: the phase only where grad_of does not imply it
    (a gradient is backward, anything else forward), so forward code reads as before."""
    parts = []
    if node.phase != _implied_phase(node.grad_of):
        parts.append(node.phase)
    if node.grad_of:
        parts.append(f"grad of %{node.grad_of}")
    if node.loc:
        parts.append(node.loc)
    return "  # " + ", ".join(parts) if parts else ""


def format_node(node: Node, comment: bool = True) -> str:
    outs = ", ".join(f"%{o}: {t}" for o, t in zip(node.outputs, node.types))
    args = ", ".join(f"%{i}" for i in node.inputs)
    line = f"{outs} = {node.op}({args}){format_attrs(node)}"
    return line + (format_comment(node) if comment else "")


def format_return(g: Graph) -> str:
    return "return " + ", ".join(f"%{o.value}" + (f" as {o.label}" if o.label else "") for o in g.outputs)


def print_graph(g: Graph) -> str:
    lines = [f"graph {g.name} {{"]
    lines += [f"  {i.kind} %{i.name}: {i.type}" for i in g.inputs]
    for n in g.nodes:
        if n.body is None:
            lines.append(f"  {format_node(n)}")
            continue
        lines.append(f"  {format_node(n, comment=False)} {{")  # a kernel: its body's nodes, indented
        lines += [f"    {format_node(m)}" for m in n.body.nodes]
        lines.append("  }")
    lines.append(f"  {format_return(g)}")
    lines.append("}")
    return "\n".join(lines)


# ------------------------------------------------------------------ parsing


def parse_type(text: str) -> TensorType:
    m = _TYPE.match(text.strip())
    if not m:
        raise ValueError(f"bad type {text!r}; expected e.g. f32[64,10]")
    dims = [d for d in m.group(2).replace(" ", "").split(",") if d]
    return TensorType(tuple(int(d) for d in dims), m.group(1))


def _parse_attr(op: str, key: str, text: str, kind: str | None):
    if text.startswith("["):
        return tuple(int(x) for x in text[1:-1].replace(" ", "").split(",") if x)
    if text.startswith('"'):
        return json.loads(text)
    if text in ("true", "false"):
        return text == "true"
    if kind == "float" or any(c in text for c in ".en") or text in ("inf", "-inf", "nan"):
        return float(text)
    return int(text)


def _split_comment(line: str) -> tuple[str, str | None, str | None, str]:
    """Split `code  # optimizer, grad of %4, file.py:3` into (code, grad_of, loc, phase)."""
    cut, quoted = None, False
    for k, c in enumerate(line):  # a `#` inside a quoted attribute is not a comment
        if c == '"' and (k == 0 or line[k - 1] != "\\"):
            quoted = not quoted
        elif c == "#" and not quoted:
            cut = k
            break
    if cut is None:
        return line.strip(), None, None, "forward"
    code, comment = line[:cut], line[cut + 1:]
    comment = comment.strip()
    phase = None
    m = re.match(rf"({'|'.join(PHASES)})\s*(?:,\s*|$)(.*)$", comment)
    if m:
        phase, comment = m.group(1), m.group(2)
    grad_of = None
    m = re.match(rf"grad of %({NAME})\s*(?:,\s*)?(.*)$", comment)
    if m:
        grad_of, comment = m.group(1), m.group(2)
    return code.strip(), grad_of, (comment or None), phase or _implied_phase(grad_of)


def parse(text: str, verify: bool = True) -> Graph:
    """Read the IR text form back into a Graph (and verify it unless told not to).

    Syntax errors raise ParseError naming the line. Well-formed text that breaks IR rules (bad
    attributes, wrong types, uses before definitions) is read as written and left to `verify()`
    (run here unless verify=False), whose VerifyError shows the IR around the culprit."""
    if not isinstance(text, str):
        raise ParseError(f"parse expects the IR text (a str), got {type(text).__name__}")
    name = None
    inputs: list[Input] = []
    nodes: list[Node] = []
    outputs: list[Output] | None = None
    types: dict[str, TensorType] = {}
    kernel: Node | None = None  # the kernel node whose body is being read
    body: list[Node] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if kernel is not None:
                if line == "}":
                    nodes.append(_with_body(kernel, body, types))
                    types.update(zip(kernel.outputs, kernel.types))
                    kernel, body = None, []
                else:
                    body.append(_parse_node(line))
                    types.update(zip(body[-1].outputs, body[-1].types))
                continue
            if name is None:
                m = re.match(r"^graph\s+([\w.<>-]+)\s*\{$", line)
                if not m:
                    raise ValueError("expected `graph NAME {`")
                name = m.group(1)
            elif line == "}":
                break
            elif line.startswith("return"):
                outputs = []
                for part in filter(None, (p.strip() for p in line[len("return"):].split(","))):
                    m = _OUTPUT.match(part)
                    if not m:
                        raise ValueError(f"bad output {part!r}; expected `%name` or `%name as label`")
                    outputs.append(Output(m.group(1), m.group(2)))
            elif (m := _INPUT.match(_split_comment(line)[0])):
                inputs.append(Input(m.group(2), parse_type(m.group(3)), m.group(1)))
                types[inputs[-1].name] = inputs[-1].type
            elif line.endswith("{"):
                kernel = _parse_node(line[:-1].rstrip())
                if kernel.op != KERNEL:
                    raise ValueError(f"only a kernel node has a body, not {kernel.op}")
            else:
                nodes.append(_parse_node(line))
                types.update(zip(nodes[-1].outputs, nodes[-1].types))
        except (ValueError, ShapeError) as e:
            raise ParseError(f"line {lineno}: {e}\n  {raw.strip()}") from None
    if kernel is not None:
        raise ParseError(f"kernel %{kernel.outputs[0]}: its body has no closing `}}`")
    if name is None or outputs is None:
        raise ParseError("incomplete graph: expected `graph NAME {`, nodes, `return ...` and `}`")
    g = Graph(name, tuple(inputs), tuple(nodes), tuple(outputs))
    return g.verify() if verify else g


def _parse_node(line: str) -> Node:
    code, grad_of, loc, phase = _split_comment(line)
    m = _NODE.match(code)
    if not m:
        raise ValueError("expected `%out: type = op(%a, %b) {attr=value}`")
    outs, types = [], []
    for v, t in re.findall(rf"%({NAME})\s*:\s*(\w+\[[^\]]*\])", m.group("outs")):
        outs.append(v)
        types.append(parse_type(t))
    op = m.group("op")
    args = [a.strip() for a in m.group("args").split(",") if a.strip()]
    for a in args:
        if not re.fullmatch(rf"%{NAME}", a):
            raise ValueError(f"bad operand {a!r}; operands are values like %0 or %x")
    if op == KERNEL:
        given = {k: _parse_attr(op, k, v, "str") for k, v in _ATTR.findall(m.group("attrs") or "")}
        return Node(op, tuple(a[1:] for a in args), tuple(outs), tuple(types), tuple(sorted(given.items())), loc, grad_of,
                    None, phase)
    opdef = get_op(op)
    given = {}
    for k, v in _ATTR.findall(m.group("attrs") or ""):
        spec = opdef.attrs.get(k)
        given[k] = _parse_attr(op, k, v, spec.kind if spec else None)
    try:
        attrs = opdef.normalize_attrs(given)
    except ShapeError:
        # Keep what the text says (defaults filled in): verify() reports it with the IR around it.
        attrs = {k: given.get(k, spec.default) for k, spec in opdef.attrs.items() if k in given or spec.default is not REQUIRED}
        attrs = dict(sorted({**attrs, **given}.items()))
    return Node(op, tuple(a[1:] for a in args), tuple(outs), tuple(types), tuple(attrs.items()), loc, grad_of, None, phase)


def _with_body(kernel: Node, body: list[Node], types: dict) -> Node:
    missing = [i for i in kernel.inputs if i not in types]
    if missing:
        raise ValueError(f"kernel operand %{missing[0]} is used before it is defined")
    g = Graph(KERNEL, tuple(Input(i, types[i]) for i in kernel.inputs), tuple(body), tuple(Output(o) for o in kernel.outputs))
    return kernel.replace(body=g, phase=kernel_phase(body))

