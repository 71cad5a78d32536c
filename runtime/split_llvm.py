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


def split(ir: str, threads: int, scratch: dict[int, int], partials: list | None = None) -> tuple[str, int, int]:
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
    tasks = min(n, threads * TASKS_PER_THREAD)
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
    args = []
    for j, (kind, name) in enumerate(zip(kinds, names)):
        task += [f"  %c{j}.p = getelementptr inbounds i64, ptr %ctx, i64 {j}", f"  %c{j} = load i64, ptr %c{j}.p"]
        v = f"%c{j}"
        if j in scratch:
            task += [f"  %c{j}.off = mul i64 %thread, {scratch[j]}", f"  %c{j}.at = add i64 %c{j}, %c{j}.off"]
            v = f"%c{j}.at"
        if kind == "ptr":
            task.append(f"  %x{j} = inttoptr i64 {v} to ptr")
            v = f"%x{j}"
        args.append(f"{kind} {v}")
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
