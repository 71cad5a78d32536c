"""IR text as HTML for the report: syntax colouring, value names one can click, anchors, diffs.

Works on the text each stage recorded (what the reader would see with `print(step.ir(...))`),
line by line, so it shows any IR the passes print. Every `%name` becomes a span carrying
`data-v="name"` (the page's script highlights a value's definition and uses from it); a
definition also carries the anchor `s<stage>-v-<name>` that links elsewhere in the report
point to. The diff against the previous stage is drawn into the same listing: added lines
marked `+`, removed lines kept in place and marked `-`, so the listing is the IR and its diff.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from html import escape
from typing import Callable

from graphc.ir.graph import INPUT_KINDS

NAME = r"[\w.]+"
_TOKEN = re.compile(
    rf"(?P<v>%{NAME})"
    rf"|(?P<t>\b[a-z]\w*\[[0-9,\s]*\])"
    r"|(?P<a>\{[^{}]*\})"
    r"|(?P<op>\b\w+(?=\())"
    r'|(?P<s>"(?:[^"\\]|\\.)*")'
    r"|(?P<lab>(?<=\bas )[\w.:]+)"
    r"|(?P<kw>\bas\b)")
_HEAD = re.compile(rf"^(\s*)(graph|return|{'|'.join(INPUT_KINDS)})(?=\s)")
_DEFS = re.compile(rf"^\s*((?:%{NAME}\s*:\s*\w+\[[^\]]*\]\s*,?\s*)+)=\s")
_INPUT = re.compile(rf"^\s*(?:{'|'.join(INPUT_KINDS)})\s+%({NAME})\s*:")
_GRAD_OF = re.compile(rf"^(\s*grad of )%({NAME})")
_LOC = re.compile(r"[\w./-]+\.py:\d+")
CONTEXT = 2  # unchanged lines shown around a change in "changes only" view

Resolver = Callable[[str], "str | None"]  # value name -> anchor id of its definition (or None)


def value_id(stage: int | str, value: str) -> str:
    """The anchor of `value`'s definition in stage `stage` (values are `[\\w.]+`: safe in ids)."""
    return f"s{stage}-v-{value}"


def split_comment(line: str) -> tuple[str, str | None]:
    """`code  # comment` -> (code, comment); a `#` inside a quoted attribute is not a comment."""
    quoted = False
    for k, c in enumerate(line):
        if c == '"' and (k == 0 or line[k - 1] != "\\"):
            quoted = not quoted
        elif c == "#" and not quoted:
            return line[:k], line[k + 1:]
    return line, None


def defined_values(line: str) -> list[str]:
    """The values an IR line defines: a node's outputs, or an input's name."""
    code = split_comment(line)[0]
    m = _DEFS.match(code)
    if m:
        return re.findall(rf"%({NAME})\s*:", m.group(1))
    m = _INPUT.match(code)
    return [m.group(1)] if m else []


def value_span(value: str, *, anchor: str | None = None, href: str | None = None, cls: str = "v") -> str:
    """A clickable value name: a link (`href`) or a `<var>` (the page's script reads the name
    from its text; a short tag keeps pages of thousands of nodes small)."""
    ident = f' id="{escape(anchor)}"' if anchor else ""
    if href:
        return f'<a class="{cls}"{ident} href="#{escape(href)}" data-v="{escape(value)}">%{escape(value)}</a>'
    extra = " ".join(c for c in cls.split() if c != "v")
    return f'<var{f" class={extra}" if extra else ""}{ident}>%{escape(value)}</var>'


def colour_code(code: str, defs: dict[str, str] | None = None, link: Resolver | None = None) -> str:
    """The code part of an IR line as HTML; `defs` maps defined values to their anchors; with
    `link`, other value names link to their definitions."""
    out, pos = [], 0
    m = _HEAD.match(code)
    if m:
        out.append(escape(m.group(1)) + f'<span class="kw">{m.group(2)}</span>')
        pos = m.end()
    for t in _TOKEN.finditer(code, pos):
        out.append(escape(code[pos:t.start()]))
        kind, text = t.lastgroup, t.group()
        if kind == "v":
            v = text[1:]
            anchor = (defs or {}).pop(v, None)
            href = link(v) if link and anchor is None else None
            out.append(value_span(v, anchor=anchor, href=href, cls="v d" if anchor is not None else "v"))
        else:
            out.append(f"<span class={kind}>{escape(text)}</span>")
        pos = t.end()
    out.append(escape(code[pos:]))
    return "".join(out)


def colour_comment(comment: str, resolve: Resolver | None = None) -> str:
    """`# grad of %3, file.py:12`: the grad-of value links to the forward definition when known."""
    out = []
    m = _GRAD_OF.match(comment)
    if m:
        v = m.group(2)
        href = resolve(v) if resolve else None
        out.append(escape(m.group(1)) + value_span(v, href=href, cls="v g" if href else "v"))
        comment = comment[m.end():]
    pos = 0
    for loc in _LOC.finditer(comment):
        out.append(escape(comment[pos:loc.start()]) + f'<span class=loc>{escape(loc.group())}</span>')
        pos = loc.end()
    out.append(escape(comment[pos:]))
    return "<span class=c>#" + "".join(out) + "</span>"


def colour_line(line: str, defs: dict[str, str] | None = None, resolve: Resolver | None = None,
                link: Resolver | None = None) -> str:
    code, comment = split_comment(line)
    return colour_code(code, defs, link) + (colour_comment(comment, resolve) if comment is not None else "")


@dataclass
class Listing:
    html: str
    added: int
    removed: int


def ir_listing(stage: int, text: str, base: str | None = None, *, resolve: Resolver | None = None,
               extras: Callable[[list[str]], str] | None = None, taken: set[str] | None = None) -> Listing:
    """Stage `stage`'s IR as one listing, with the diff against `base` (the previous stage's IR) drawn in.

    resolve(value) gives the anchor for `# grad of %v` links; extras(defined values) adds links
    after a line (to the gradient nodes, to the generated code); `taken` collects anchors already
    used on the page so each is defined once.
    """
    taken = set() if taken is None else taken
    new = text.splitlines()
    old = base.splitlines() if base is not None else new
    ops = difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes() if base is not None else \
        [("equal", 0, len(new), 0, len(new))]
    rows: list[tuple[str, str]] = []  # (kind: "" | add | del, line)
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal":
            rows += [("", ln) for ln in new[j1:j2]]
            continue
        rows += [("del", ln) for ln in old[i1:i2]]
        rows += [("add", ln) for ln in new[j1:j2]]
    changed = [k for k, (kind, _) in enumerate(rows) if kind]
    near = set()
    for k in changed:
        near.update(range(k - CONTEXT, k + CONTEXT + 1))
    out, hunk, hidden = [], 0, False
    for k, (kind, line) in enumerate(rows):
        cls = ["ln"] + ([kind] if kind else []) + (["c"] if not kind and k in near else [])
        if kind and (k == 0 or not rows[k - 1][0]):
            hunk += 1
            ident = f' id="stage-{stage}-ch{hunk}"'
        else:
            ident = ""
        shown = bool(kind) or k in near
        if not shown and not hidden:
            out.append('<div class="gap">⋯</div>')
        hidden = not shown
        if kind == "del":
            body = colour_line(line)
            more = ""
        else:
            vals = defined_values(line)
            defs = {}
            for v in vals:
                a = value_id(stage, v)
                if a not in taken:
                    taken.add(a)
                    defs[v] = a
            body = colour_line(line, defs, resolve)
            more = extras(vals) if extras and vals else ""
        out.append(f'<div class="{" ".join(cls)}"{ident}>{body}{more}</div>')
    added = sum(1 for kind, _ in rows if kind == "add")
    removed = sum(1 for kind, _ in rows if kind == "del")
    return Listing('<div class="ir">' + "".join(out) + "</div>", added, removed)
