"""A loop kernel split over the thread pool: its outermost loop cut into tasks.

passes/parallel.py writes `threads=k` on an elementwise, rows or strided GEMM kernel worth
splitting (a strided GEMM's loop is over its batch of BLAS calls, each writing its own slice of
C; OpenBLAS runs at one thread inside the pool's tasks); lowering
writes the kernel's one-thread function as always (lower_llvm.kernel_ir), then this rewrites it:

    @kernel_body(args..., lo, hi)   the same function, its outermost loop running [lo, hi)
    @kernel_task(ctx, task, thread) one task: the arguments from ctx (a rows kernel's per-row
                                    scratch at this thread's slice), its share of the loop
    @kernel(args...)                packs the arguments and calls graphc_parallel_for
                                    (runtime/threads.py), which returns when every task is done

Each iteration of the outermost loop writes only its own elements (an elementwise kernel's
outputs all have the loop's shape; a rows kernel's rows are its own), so the split changes no
operation of any element: the results are bit-equal to one thread's.
"""
from __future__ import annotations

import re

from .lower_llvm import Unsupported

TASKS_PER_THREAD = 4  # as conv_llvm's: a descheduled worker holds back one task, not a half


def summed_outputs(node) -> list:
    """(value, type) of each output of a reduce kernel that a `sum` member accumulates (more than
    one element): what a split's tasks sum in partials (passes/parallel.py allows no other
    reduction in a split reduce kernel)."""
    outs = set(node.outputs)
    return [(m.outputs[0], m.types[0]) for m in node.body.nodes
            if m.op == "sum" and m.outputs[0] in outs and m.types[0].size > 1]



def _task_args(kinds: list[str], scratch: dict[int, int]) -> tuple[list[str], list[str]]:
    """(lines, arguments) of a task function that loads its body's arguments from the launch's
    context array (%ctx, one i64 each: "ptr" ones as addresses); argument j in `scratch` is offset
    by %thread times its per-thread bytes (each thread its own scratch)."""
    lines, args = [], []
    for j, kind in enumerate(kinds):
        lines += [f"  %c{j}.p = getelementptr inbounds i64, ptr %ctx, i64 {j}", f"  %c{j} = load i64, ptr %c{j}.p"]
        v = f"%c{j}"
        if j in scratch:
            lines += [f"  %c{j}.off = mul i64 %thread, {scratch[j]}", f"  %c{j}.at = add i64 %c{j}, %c{j}.off"]
            v = f"%c{j}.at"
        if kind == "ptr":
            lines.append(f"  %x{j} = inttoptr i64 {v} to ptr")
            v = f"%x{j}"
        args.append(f"{kind} {v}")
    return lines, args

def split(ir: str, threads: int, scratch: dict[int, int], partials: list | None = None,
          per_thread: int = TASKS_PER_THREAD) -> tuple[str, int, int]:
    """(the split kernel's IR, tasks, the outermost loop's trip count) of the one-thread `ir`
    (`define void @kernel(...)`). scratch: argument index -> bytes of one thread's slice.
    partials: (argument index of a summed output, its elements, its dtype) of a reduce kernel:
    task 0 sums into the output, task t > 0 into slice t - 1 of a new last argument of @kernel
    (one per summed output, in order), added into the output in task order
    after the join (another summation order than one thread's)."""
    head = re.search(r"^define void @kernel\((.*)\) #0 \{$", ir, re.M)
    if head is None:
        raise Unsupported("split: not a void @kernel function")
    params = [p.strip() for p in head.group(1).split(",")] if head.group(1).strip() else []
    end = ir.index("\n}\n", head.end()) + 3
    body = ir[head.end():end]
    phi = re.search(r"(%i(\d+)) = phi i64 \[ 0, (%[\w.]+) \]", body)
    if phi is not None:  # a loop nest of lower_llvm: its outermost loop
        var = phi.group(1)
        cmp = re.search(rf"{re.escape(var)}\.end = icmp eq i64 {re.escape(var)}\.next, (\d+)\n", body)
        bound = f"{var}.end"
    else:  # a strided GEMM's loop over its batch (runtime/lower_strided.py), each gemm writing its own C
        phi = re.search(r"(%t) = phi i64 \[ 0, (%entry) \]", body)
        var = phi and phi.group(1)
        cmp = phi and re.search(r"%done = icmp eq i64 %t\.next, (\d+)\n", body)
        bound = "%done"
        if phi is not None and not re.search(r"store (float|double) 0\.0, ptr %beta", body):
            raise Unsupported("split: a strided GEMM that accumulates into C")
    if phi is None or cmp is None:
        raise Unsupported("split: no loop to split")
    n = int(cmp.group(1))
    tasks = min(n, threads * per_thread)
    if tasks < 2:
        raise Unsupported("split: fewer than two iterations")
    body = body.replace(phi.group(0), f"{var} = phi i64 [ %lo, {phi.groups()[-1]} ]", 1)
    body = body.replace(cmp.group(0), f"{bound} = icmp eq i64 {var}.next, %hi\n", 1)

    partials = partials or []
    body_params = list(params)
    params = params + [f"ptr %part{j}" for j in range(len(partials))]
    names = [p.split()[-1] for p in params]
    kinds = [p.split()[0] for p in params]
    k = len(params)
    nbody = len(body_params)
    task = ["define internal void @kernel_task(ptr %ctx, i64 %task, i64 %thread) #0 {", "entry:"]
    unpack, args = _task_args(kinds, scratch)
    task += unpack
    for j, (at, size, dt) in enumerate(partials):  # task t > 0: its slice of the partial sums
        e = {"f32": 4, "f64": 8, "i64": 8}[dt]
        task += [f"  %pt{j}.t = sub i64 %task, 1", f"  %pt{j}.off = mul i64 %pt{j}.t, {size * e}",
                 f"  %pt{j}.at = add i64 %c{nbody + j}, %pt{j}.off", f"  %pt{j}.p = inttoptr i64 %pt{j}.at to ptr",
                 f"  %pt{j}.first = icmp eq i64 %task, 0",
                 f"  %pt{j} = select i1 %pt{j}.first, ptr %x{at}, ptr %pt{j}.p"]
        args[at] = f"ptr %pt{j}"
    args = args[:nbody]
    q, r = divmod(n, tasks)
    task += [f"  %few = icmp ult i64 %task, {r}", "  %extra = select i1 %few, i64 %task, i64 " + str(r),
             f"  %base = mul i64 %task, {q}", "  %lo = add i64 %base, %extra",
             f"  %len = select i1 %few, i64 {q + 1}, i64 {q}", "  %hi = add i64 %lo, %len",
             f"  call void @kernel_body({', '.join(args + ['i64 %lo', 'i64 %hi'])})", "  ret void", "}"]
    launch = [f"define void @kernel({', '.join(params)}) #0 {{", "entry:", f"  %ctx = alloca [{k} x i64]"]
    for j, (kind, name) in enumerate(zip(kinds, names)):
        v = name
        if kind == "ptr":
            launch.append(f"  %i2p{j} = ptrtoint ptr {name} to i64")
            v = f"%i2p{j}"
        launch += [f"  %s{j}.p = getelementptr inbounds [{k} x i64], ptr %ctx, i64 0, i64 {j}", f"  store i64 {v}, ptr %s{j}.p"]
    launch += [f"  call void @graphc_parallel_for(ptr @kernel_task, ptr %ctx, i64 {tasks}, i64 {threads})"]
    prev = "entry"
    for j, (at, size, dt) in enumerate(partials):  # out[q] += part[t - 1][q], t = 1, 2, ... in order
        ty = {"f32": "float", "f64": "double", "i64": "i64"}[dt]
        add = "add" if dt == "i64" else "fadd"
        for t in range(1, tasks):
            b = f"sum{j}.{t}"
            launch += [f"  br label %{b}", f"{b}:", f"  %{b}.q = phi i64 [ 0, %{prev} ], [ %{b}.n, %{b} ]",
                       f"  %{b}.o = getelementptr inbounds {ty}, ptr {names[at]}, i64 %{b}.q",
                       f"  %{b}.pq = add i64 %{b}.q, {(t - 1) * size}",
                       f"  %{b}.s = getelementptr inbounds {ty}, ptr %part{j}, i64 %{b}.pq",
                       f"  %{b}.x = load {ty}, ptr %{b}.o", f"  %{b}.y = load {ty}, ptr %{b}.s",
                       f"  %{b}.z = {add} {ty} %{b}.x, %{b}.y", f"  store {ty} %{b}.z, ptr %{b}.o",
                       f"  %{b}.n = add i64 %{b}.q, 1", f"  %{b}.e = icmp eq i64 %{b}.n, {size}",
                       f"  br i1 %{b}.e, label %{b}.done, label %{b}", f"{b}.done:"]
            prev = f"{b}.done"
    launch += ["  ret void", "}"]
    text = (ir[:head.start()] + f"define internal void @kernel_body({', '.join(body_params + ['i64 %lo', 'i64 %hi'])}) #0 {{"
            + body + "\n" + "\n".join(task) + "\n\n" + "\n".join(launch) + "\n" + ir[end:]
            + "\ndeclare void @graphc_parallel_for(ptr, ptr, i64, i64)\n")
    return text, tasks, n


GEMM_TASKS_PER_THREAD = 2  # halves of a GEMM pack and stream well; quarters of T's start to lose


def split_gemm(ir: str, threads: int, cols: bool) -> str:
    """A gemm kernel's BLAS call (lower_llvm._blas: `graphc_blas_sgemm` / `dgemm`, BLAS's
    column-major C = op(A) op(B), m x n) run as tasks on the pool: each task one gemm on a share
    of C's columns (cols: the node's split="gemm_cols") or rows ("gemm_rows"), in the graph's
    row-major terms, with the operand pointers offset by the trans flags and leading dims
    (OpenBLAS at one thread inside the pool). The epilogue loop after it stays as it is. Each
    element of C is the same dot over k: the same values."""
    for kind, ty, size in (("s", "float", 4), ("d", "double", 8)):
        call = f"call void @graphc_blas_{kind}gemm("
        if call in ir:
            break
    else:
        raise Unsupported("split_gemm: no BLAS gemm call")
    tasks = threads * GEMM_TASKS_PER_THREAD
    ir = ir.replace(call, "call void @gemm_split(", 1)
    head, rest = ir.split("call void @gemm_split(", 1)
    args, tail = rest.split(")", 1)
    ir = f"{head}call void @gemm_split({args}, i64 {tasks}, i64 {threads}){tail}"
    names = ["ta", "tb", "m", "n", "k", "alpha", "a", "lda", "b", "ldb", "beta", "c", "ldc"]
    task = ["define internal void @gemm_task(ptr %ctx, i64 %task, i64 %thread) {", "entry:"]
    for j, nm in enumerate(names):
        task += [f"  %{nm}.p = getelementptr inbounds i64, ptr %ctx, i64 {j}", f"  %{nm}.i = load i64, ptr %{nm}.p",
                 f"  %{nm} = inttoptr i64 %{nm}.i to ptr"]
    for nm in ("m", "n", "lda", "ldb", "ldc"):
        task += [f"  %{nm}.v32 = load i32, ptr %{nm}", f"  %{nm}.v = sext i32 %{nm}.v32 to i64"]
    task += ["  %ta.c = load i8, ptr %ta", "  %tb.c = load i8, ptr %tb",
             "  %ta.n = icmp eq i8 %ta.c, 110", "  %tb.n = icmp eq i8 %tb.c, 110",  # 'n': not transposed
             f"  %cols = or i1 {'false' if cols else 'true'}, false",  # BLAS's columns of C^T: the graph's rows
             "  %len = select i1 %cols, i64 %n.v, i64 %m.v",
             f"  %q = sdiv i64 %len, {tasks}", f"  %r = srem i64 %len, {tasks}",
             "  %few = icmp slt i64 %task, %r", "  %extra = select i1 %few, i64 %task, i64 %r",
             "  %base = mul i64 %task, %q", "  %lo = add i64 %base, %extra",
             "  %q1 = add i64 %q, 1", "  %cnt = select i1 %few, i64 %q1, i64 %q",
             "  %empty = icmp eq i64 %cnt, 0", "  br i1 %empty, label %out, label %run", "run:",
             "  %cnt32 = trunc i64 %cnt to i32", "  %mm = alloca i32", "  %nn = alloca i32",
             "  %m.keep = select i1 %cols, i32 %m.v32, i32 %cnt32", "  %n.keep = select i1 %cols, i32 %cnt32, i32 %n.v32",
             "  store i32 %m.keep, ptr %mm", "  store i32 %n.keep, ptr %nn",
             # columns j of C: C + j ldc; of op(B): B + j ldb (n) or B + j (t). rows i of C: C + i;
             # of op(A): A + i (n) or A + i lda (t)
             "  %c.col = mul i64 %lo, %ldc.v", "  %c.off = select i1 %cols, i64 %c.col, i64 %lo",
             "  %b.col = select i1 %tb.n, i64 %ldb.v, i64 1", "  %b.off0 = mul i64 %lo, %b.col",
             "  %b.off = select i1 %cols, i64 %b.off0, i64 0",
             "  %a.row = select i1 %ta.n, i64 1, i64 %lda.v", "  %a.off0 = mul i64 %lo, %a.row",
             "  %a.off = select i1 %cols, i64 0, i64 %a.off0",
             f"  %a2 = getelementptr inbounds {ty}, ptr %a, i64 %a.off",
             f"  %b2 = getelementptr inbounds {ty}, ptr %b, i64 %b.off",
             f"  %c2 = getelementptr inbounds {ty}, ptr %c, i64 %c.off",
             f"  call void @graphc_blas_{kind}gemm(ptr %ta, ptr %tb, ptr %mm, ptr %nn, ptr %k, ptr %alpha, ptr %a2, "
             "ptr %lda, ptr %b2, ptr %ldb, ptr %beta, ptr %c2, ptr %ldc)",
             "  br label %out", "out:", "  ret void", "}"]
    launch = ["define internal void @gemm_split(" + ", ".join(f"ptr %{nm}" for nm in names)
              + ", i64 %tasks, i64 %threads) {", "entry:", f"  %ctx = alloca [{len(names)} x i64]"]
    for j, nm in enumerate(names):
        launch += [f"  %{nm}.i = ptrtoint ptr %{nm} to i64",
                   f"  %{nm}.p = getelementptr inbounds [{len(names)} x i64], ptr %ctx, i64 0, i64 {j}",
                   f"  store i64 %{nm}.i, ptr %{nm}.p"]
    launch += ["  call void @graphc_parallel_for(ptr @gemm_task, ptr %ctx, i64 %tasks, i64 %threads)", "  ret void", "}"]
    decl = "declare void @graphc_parallel_for(ptr, ptr, i64, i64)"
    return ir + "\n" + "\n".join(task) + "\n\n" + "\n".join(launch) + "\n" + ("" if decl in ir else decl + "\n")


def split_gemm_rows(ir: str, threads: int) -> str:
    """A gemm kernel whose epilogue is elementwise over C's rows (a linear's bias add: no
    reduction in it) split by rows of C: each task runs the gemm for its rows (BLAS's columns
    of C^T) and then the epilogue on them, while they are in its cache. Raises Unsupported when
    the epilogue's outer loop is not over C's rows."""
    if "fill:" in ir or "%acc" in ir:
        raise Unsupported("split_gemm_rows: the epilogue reduces")
    for kind, ty in (("s", "float"), ("d", "double")):
        call = f"call void @graphc_blas_{kind}gemm("
        if call in ir:
            break
    else:
        raise Unsupported("split_gemm_rows: no BLAS gemm call")
    start = ir.index(call)
    args = ir[start + len(call):ir.index(")", start)].split(", ")
    rows = re.search(rf"store i32 (\d+), ptr {re.escape(args[3].split()[-1])}\n", ir)
    loop = re.search(r"%i(\d+)\.end = icmp eq i64 %i\1\.next, (\d+)\n", ir)
    first = re.search(r"(%i\d+) = phi i64 \[ 0, ", ir)
    if rows is None or first is None or loop is None:
        raise Unsupported("split_gemm_rows: no rows loop")
    outer = re.search(rf"{re.escape(first.group(1))}\.end = icmp eq i64 {re.escape(first.group(1))}\.next, (\d+)\n", ir)
    if outer is None or outer.group(1) != rows.group(1):
        raise Unsupported("split_gemm_rows: the epilogue's outer loop is not over C's rows")
    ir = ir[:start] + f"call void @gemm_rows({', '.join(args)}, i64 %lo, i64 %hi)" + ir[ir.index(")", start) + 1:]
    text = split(ir, threads, {}, None, GEMM_TASKS_PER_THREAD)[0]
    names = ["ta", "tb", "m", "n", "k", "alpha", "a", "lda", "b", "ldb", "beta", "c", "ldc"]
    body = ["define internal void @gemm_rows(" + ", ".join(f"ptr %{nm}" for nm in names) + ", i64 %lo, i64 %hi) {",
            "entry:", "  %nn = alloca i32", "  %cnt = sub i64 %hi, %lo", "  %cnt32 = trunc i64 %cnt to i32",
            "  store i32 %cnt32, ptr %nn", "  %ldb.v32 = load i32, ptr %ldb", "  %ldb.v = sext i32 %ldb.v32 to i64",
            "  %ldc.v32 = load i32, ptr %ldc", "  %ldc.v = sext i32 %ldc.v32 to i64", "  %tb.c = load i8, ptr %tb",
            "  %tb.n = icmp eq i8 %tb.c, 110", "  %b.col = select i1 %tb.n, i64 %ldb.v, i64 1",
            "  %b.off = mul i64 %lo, %b.col", "  %c.off = mul i64 %lo, %ldc.v",
            f"  %b2 = getelementptr inbounds {ty}, ptr %b, i64 %b.off", f"  %c2 = getelementptr inbounds {ty}, ptr %c, i64 %c.off",
            f"  call void @graphc_blas_{kind}gemm(ptr %ta, ptr %tb, ptr %m, ptr %nn, ptr %k, ptr %alpha, ptr %a, ptr %lda, "
            "ptr %b2, ptr %ldb, ptr %beta, ptr %c2, ptr %ldc)", "  ret void", "}"]
    return text + "\n" + "\n".join(body) + "\n"


LOOP_GEMM_TASKS_PER_THREAD = 2  # as BLAS's halves: a descheduled worker holds back a quarter


def tasks_ir(prefix: str, launcher: str, params: list[str], units: int, threads: int,
             per_thread: int = LOOP_GEMM_TASKS_PER_THREAD, partial: tuple[str, str] | None = None) -> tuple[str, int]:
    """(IR, tasks) of a function `@{launcher}(params)` that runs `@{prefix}_body(params, i64 lo,
    i64 hi)` over units 0 <= u < units cut into tasks on the pool: `@{prefix}_task` takes its
    arguments from the launcher's stack (as split()'s) and its share [lo, hi), each task at least
    one unit. params: "ptr %name" / "i64 %name" as the body declares them. partial: (output
    pointer, dtype) of a sum each task leaves in a double slot of the launcher's (a last body
    argument); after the join the slots are added in task order and stored there."""
    tasks = max(1, min(units, threads * per_thread))
    if partial is not None:
        params = params + ["ptr %slots"]
    kinds = [p.split()[0] for p in params]
    names = [p.split()[-1] for p in params]
    k = len(params)
    task = [f"define internal void @{prefix}_task(ptr %ctx, i64 %task, i64 %thread) #0 {{", "entry:"]
    unpack, args = _task_args(kinds, {})
    task += unpack
    q, r = divmod(units, tasks)
    slot = []
    if partial is not None:  # this task's slot
        task.append(f"  %slot = getelementptr inbounds double, ptr {args[-1].split()[-1]}, i64 %task")
        args, slot = args[:-1], ["ptr %slot"]
    task += [f"  %few = icmp ult i64 %task, {r}", f"  %extra = select i1 %few, i64 %task, i64 {r}",
             f"  %base = mul i64 %task, {q}", "  %lo = add i64 %base, %extra",
             f"  %len = select i1 %few, i64 {q + 1}, i64 {q}", "  %hi = add i64 %lo, %len",
             f"  call void @{prefix}_body({', '.join(args + ['i64 %lo', 'i64 %hi'] + slot)})", "  ret void", "}"]
    outer = params[:-1] if partial is not None else params
    launch = [f"define {'internal ' if launcher != 'kernel' else ''}void @{launcher}({', '.join(outer)}) #0 {{",
              "entry:", f"  %ctx = alloca [{k} x i64]"]
    if partial is not None:
        launch.append(f"  %slots = alloca [{tasks} x double], align 64")
    for j, (kind, name) in enumerate(zip(kinds, names)):
        v = name
        if kind == "ptr":
            launch.append(f"  %i2p{j} = ptrtoint ptr {name} to i64")
            v = f"%i2p{j}"
        launch += [f"  %s{j}.p = getelementptr inbounds [{k} x i64], ptr %ctx, i64 0, i64 {j}", f"  store i64 {v}, ptr %s{j}.p"]
    launch.append(f"  call void @graphc_parallel_for(ptr @{prefix}_task, ptr %ctx, i64 {tasks}, i64 {threads})")
    if partial is not None:  # the tasks' sums in task order, then to the output's dtype
        acc = "-0.0"
        for t in range(tasks):
            launch += [f"  %sp{t} = getelementptr inbounds double, ptr %slots, i64 {t}", f"  %sv{t} = load double, ptr %sp{t}",
                       f"  %sa{t} = fadd double {acc}, %sv{t}"]
            acc = f"%sa{t}"
        out, dt = partial
        if dt == "f32":
            launch.append(f"  %stot = fptrunc double {acc} to float")
            acc = "%stot"
        launch.append(f"  store {'float' if dt == 'f32' else 'double'} {acc}, ptr {out}")
    launch += ["  ret void", "}"]
    return "\n".join(task) + "\n\n" + "\n".join(launch) + "\n", tasks
