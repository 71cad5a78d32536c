"""The generated plan source in the report: each kernel call linked to the IR nodes it covers.

Code generation writes, before every kernel call, the IR lines of the nodes that call computes
(`# %3: f32[64,1] = linear(...)`, with `(fused: ...)` when one call covers several nodes). Those
comments are the record read here: they give the calls of a plan (its kernels, as run today),
the values each call defines, and the links both ways between a call and its IR lines.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from html import escape
from typing import Callable

from .html_ir import colour_line, defined_values, value_span

STORAGE = "# storage:"  # codegen's comment above the buffer views
# a runtime kernel, or a kernel generated for the plan (`if kernelN(...) != 0: raise ...`: one that
# returns a status, an index or label out of range)
_CALL = re.compile(r"^\s+(?:if\s+)?(?:k_(\w+)|(kernel\d+))\(")
_IR_COMMENT = re.compile(r"^(\s+#\s+)(%[\w.]+\s*:.*)$")
_DEF = re.compile(r"^(?:def (\w+)\(|(kernel\d+) = llvm_kernel\()")  # a generated numba function or LLVM kernel
_FUSED_NOTE = re.compile(r"\s+\((fused:[^)]*)\)\s*$")
_PY = re.compile(
    r"(?P<c>#.*$)"
    r"|(?P<s>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
    r"|(?P<k>\b(?:def|return|if|or|and|not|raise|import|from|as|try|except|for|in|while|else|elif|None|True|False|"
    r"pass)\b)"
    r"|(?P<fn>\bk_\w+|\bkernel\d+\b)"
    r"|(?P<d>@\w+)")


def _name(m: re.Match) -> str:
    return m.group(1) or m.group(2)


@dataclass
class Call:
    """One kernel of a generated plan: the calls under one set of IR lines, and those IR nodes."""

    index: int
    kernels: list[str]  # the kernel functions called (runtime kernels, without the k_ prefix), in order
    ir: list[str] = field(default_factory=list)  # the IR lines of the nodes it computes
    note: str = ""  # codegen's "(fused: ...)" remark, when one call covers several nodes
    first: int = 0  # source line of the first IR comment (or of the call)
    line: int = 0  # source line of the last call

    @property
    def kernel(self) -> str:
        return " + ".join(self.kernels)

    @property
    def values(self) -> list[str]:
        return [v for ln in self.ir for v in defined_values(ln)]


def plan_calls(source: str) -> list[Call]:
    """The kernels of a generated plan function, in order: each is the IR comment lines codegen
    wrote and the call(s) right below them (a node may lower to several calls)."""
    calls: list[Call] = []
    pending: list[tuple[int, str]] = []
    inside = after_call = False
    for k, line in enumerate(source.splitlines()):
        if line.startswith(("def plan(", "def plan_full(")):  # (plan_full: the glue, when LLVM IR runs it)
            inside = True
            continue
        if inside and line and not line.startswith(" "):
            break
        if not inside:
            continue
        m = _IR_COMMENT.match(line)
        if m:
            pending.append((k, m.group(2)))
            after_call = False
            continue
        m = _CALL.match(line)
        if m and after_call and not pending and calls[-1].ir:
            calls[-1].kernels.append(m.group(1) or m.group(2))  # one more call for the same IR node(s)
            calls[-1].line = k
        elif m:
            ir, note = [], ""
            for _, text in pending:
                n = _FUSED_NOTE.search(text)
                if n:
                    note, text = n.group(1), text[:n.start()]
                ir.append(text)
            calls.append(Call(len(calls), [m.group(1) or m.group(2)], ir, note, pending[0][0] if pending else k, k))
            pending = []
        elif not line.strip().startswith("#"):
            pending = []  # IR comments belong to the call right below them
        after_call = bool(m)
    return calls


def call_id(stage: int, j: int) -> str:
    return f"code-{stage}-{j}"


def fn_id(stage: int, name: str) -> str:
    return f"code-{stage}-fn-{name}"


def colour_python(line: str) -> str:
    out, pos = [], 0
    for t in _PY.finditer(line):
        out.append(escape(line[pos:t.start()]) + f"<span class={t.lastgroup}>{escape(t.group())}</span>")
        pos = t.end()
    return "".join(out) + escape(line[pos:])


def source_html(source: str, calls: list[Call], stage: int, resolve: Callable[[str], str | None]) -> str:
    """The plan module's source: its docstring (the plan and memory plan) folded away, each kernel
    call boxed with its IR lines, whose value names link to their definitions in the plan stage."""
    lines = source.splitlines()
    doc_end = 0
    if lines and lines[0].startswith('"""'):
        doc_end = next((k for k in range(1, len(lines)) if lines[k].rstrip().endswith('"""')), 0) + 1
    by_first = {c.first: c for c in calls}
    called: dict[str, list[int]] = {}
    for c in calls:
        for f in c.kernels:
            called.setdefault(f, []).append(c.index)
    defs = {_name(m): called[_name(m)] for m in map(_DEF.match, lines) if m and _name(m) in called}
    out = []
    if doc_end:
        doc = escape("\n".join(lines[:doc_end]))
        out.append('<details><summary>module docstring: the plan graph and its memory plan (as shown above)</summary>'
                   f'<div class="src"><div class="ln">{doc}</div></div></details>')
    out.append('<div class="src">')
    k = doc_end
    while k < len(lines):
        c = by_first.get(k)
        if c is None and lines[k].strip().startswith(STORAGE):
            # the views of buffers the calls use: boilerplate, folded (and plain: thousands of lines in big plans)
            end = next((j for j in range(k + 1, len(lines)) if j in by_first or not lines[j].startswith("    ")
                        or lines[j].strip().startswith("#")), len(lines))
            out.append(_row(colour_python(lines[k])) + f'<details class="views"><summary>{end - k - 1} views</summary>'
                       f'<div class="ln">{escape(chr(10).join(lines[k + 1:end]))}</div></details>')
            k = end
            continue
        d = _DEF.match(lines[k]) if c is None else None
        if d and _name(d) in defs:  # a kernel function generated for this plan: where its calls link to
            back = " · ".join(f'<a href="#{call_id(stage, j)}">called as kernel {j}</a>' for j in defs[_name(d)])
            out.append(f'<div class="ln" id="{fn_id(stage, _name(d))}">{colour_python(lines[k])}'
                       f'<span class="x">{back}</span></div>')
            k += 1
            continue
        if c is None:
            out.append(_row(colour_python(lines[k])))
            k += 1
            continue
        covers = ", ".join(value_span(v, href=resolve(v)) if resolve(v) else value_span(v) for v in c.values)
        code = "".join(f' <a href="#{fn_id(stage, f)}">code of {escape(f)}</a>' for f in c.kernels if f in defs)
        out.append(f'<div class="call" id="{call_id(stage, c.index)}"><div class="covers">kernel {c.index}: '
                   f'<b>{escape(c.kernel)}</b>' + (f" covers {covers}" if covers else "") +
                   (f' <span class="note">({escape(c.note)})</span>' if c.note else "") + code + "</div>")
        for j in range(c.first, c.line + 1):
            m = _IR_COMMENT.match(lines[j])
            if m:
                out.append(_row(f'<span class="c">{escape(m.group(1))}</span>' +
                                colour_line(m.group(2), resolve=resolve, link=resolve), "irc"))
            else:
                out.append(_row(colour_python(lines[j])))
        out.append("</div>")
        k = c.line + 1
    out.append("</div>")
    return "".join(out)


def _row(html: str, cls: str = "") -> str:
    return f'<div class="ln{" " + cls if cls else ""}">{html}</div>'
