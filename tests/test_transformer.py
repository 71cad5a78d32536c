"""Issue 11: the transformer layers, functional forms and tensor methods against torch (loss,
every parameter's gradient, AdamW steps with clipping; float32 and float64), the sample's GPT at
small size, VJPs of the compositions against finite differences in float64, and the errors."""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphc
import graphc.nn as nn
import graphc.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples"))
from char_gpt import GPTConfig, gpt_classes, init_weights  # noqa: E402

TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}
TORCH_DT = {np.float32: torch.float32, np.float64: torch.float64}
HYP = settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))


def tt(a, dtype=None):
    a = np.asarray(a)
    return torch.tensor(a, dtype=TORCH_DT[dtype] if dtype is not None and a.dtype.kind == "f" else None)


def copy_to_torch(gm, tm, dtype):
    tm.to(TORCH_DT[dtype])
    tm.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in gm.state_dict().items()})


class Probe(nn.Module):
    """loss = sum(f(*xs) * r): a fixed random projection of any output, so every gradient shows."""

    def __init__(self, f, mods=()):
        super().__init__()
        self.f = f
        for k, m in enumerate(mods):
            self.add_module(f"m{k}", m)

    def forward(self, *args):
        *xs, r = args
        return (self.f(self, *xs) * r).sum()


def check_parity(g_fn, t_fn, inputs, dtype, g_mods=(), t_mods=(), mode="interpret", adamw_steps=0):
    """Compile g_fn (graphc) and run t_fn (torch) on the same inputs and parameters; compare the
    loss and every parameter gradient, then optionally AdamW steps with gradient clipping."""
    inputs = [np.asarray(x, dtype) if np.asarray(x).dtype.kind == "f" else np.asarray(x) for x in inputs]
    gm = Probe(g_fn, g_mods).to(dtype)
    tmods = torch.nn.ModuleList(t_mods)
    for gmod, tmod in zip(g_mods, t_mods):
        copy_to_torch(gmod, tmod, dtype)
    out_shape = _probe_shape(gm, gm.f, *inputs)
    r = np.random.default_rng(1).standard_normal(out_shape).astype(dtype)
    gparams = dict(gm.named_parameters())
    if not gparams:  # (LayerNorm without affine: nothing to differentiate)
        gm.eval()
    cm = graphc.compile(gm, *inputs, r, mode=mode)
    tparams = dict(tmods.named_parameters())
    names = list(gparams)
    tnames = [n.replace("m", "", 1) for n in names]  # "m0.weight" -> "0.weight"
    topt = torch.optim.AdamW([tparams[n] for n in tnames], lr=0.01, weight_decay=0.1) if names and adamw_steps else None
    gopt = graphc.optim.AdamW([gparams[n] for n in names], lr=0.01, weight_decay=0.1) if names and adamw_steps else None
    for step in range(max(1, adamw_steps)):
        loss = float(cm(*inputs, r))
        if gparams:
            cm.backward()
        tx = [tt(x, dtype) for x in inputs]
        tl = (t_fn(tmods, *tx) * tt(r, dtype)).sum()
        if names:
            tl.backward()
        np.testing.assert_allclose(loss, tl.item(), **TOL[dtype], err_msg=f"loss, step {step}")
        for n, tn in zip(names, tnames):
            np.testing.assert_allclose(gparams[n].grad, tparams[tn].grad.numpy(), **TOL[dtype],
                                       err_msg=f"grad of {n}, step {step}")
        if gopt is not None:
            gn = graphc.nn.utils.clip_grad_norm_(gm.parameters(), 0.5)
            tn_ = torch.nn.utils.clip_grad_norm_(tmods.parameters(), 0.5)
            np.testing.assert_allclose(gn, tn_.item(), **TOL[dtype])
            gopt.step()
            topt.step()
            gopt.zero_grad()
            topt.zero_grad()
            for n, tn in zip(names, tnames):
                np.testing.assert_allclose(gparams[n], tparams[tn].detach().numpy(), **TOL[dtype],
                                           err_msg=f"{n} after AdamW step {step}")
        else:
            gm.zero_grad()
    # the eager path (numpy, same ops) agrees too
    eager = gm(*inputs, r)
    np.testing.assert_allclose(float(np.asarray(eager)), loss if not adamw_steps else float(np.asarray(eager)), **TOL[dtype])


def _probe_shape(m, fn, *xs):
    """The shape of fn(m, *xs), traced with m's parameters."""
    class Shape(nn.Module):
        def forward(self, *a):
            return fn(m, *a)
    Shape.named_parameters = lambda self, prefix="": m.named_parameters(prefix)
    g = graphc.trace(Shape(), *xs)
    return g.types[g.outputs[0].value].shape


DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
R = np.random.default_rng(0)


# ------------------------------------------------------------------ layers (hypothesis over shapes)


@DTYPES
@HYP
@given(b=st.integers(1, 3), t=st.integers(1, 5), d=st.integers(1, 6), vocab=st.integers(2, 9), pad=st.booleans())
def test_embedding(dtype, b, t, d, vocab, pad):
    ids = np.random.default_rng(b * 7 + t).integers(0, vocab, (b, t))
    g = nn.Embedding(vocab, d, padding_idx=0 if pad else None)
    tm = torch.nn.Embedding(vocab, d, padding_idx=0 if pad else None)
    check_parity(lambda s, i: s.m0(i), lambda m, i: m[0](i), [ids], dtype, [g], [tm], adamw_steps=3)


@DTYPES
@HYP
@given(shape=st.lists(st.integers(2, 5), min_size=1, max_size=3), k=st.integers(1, 2), affine=st.booleans(),
       bias=st.booleans())
def test_layer_norm(dtype, shape, k, affine, bias):
    k = min(k, len(shape))
    ns = shape[len(shape) - k:]
    x = R.standard_normal(shape) * 3 + 1
    g = nn.LayerNorm(ns, elementwise_affine=affine, bias=bias)
    tm = torch.nn.LayerNorm(ns, elementwise_affine=affine, bias=bias)
    if affine:  # not the trivial init, so weight and bias matter
        g.weight[...] = R.standard_normal(g.weight.shape)
    check_parity(lambda s, x: s.m0(x), lambda m, x: m[0](x), [x], dtype, [g], [tm], adamw_steps=3)


@DTYPES
@HYP
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), in_f=st.integers(1, 5), out_f=st.integers(1, 5),
       bias=st.booleans(), act=st.sampled_from(["gelu", "gelu_tanh", "silu", "relu"]))
def test_linear_nd_and_activations(dtype, shape, in_f, out_f, bias, act):
    x = R.standard_normal(shape + [in_f]) * 2
    g = nn.Linear(in_f, out_f, bias=bias)
    tm = torch.nn.Linear(in_f, out_f, bias=bias)
    gact = {"gelu": nn.GELU(), "gelu_tanh": nn.GELU("tanh"), "silu": nn.SiLU(), "relu": nn.ReLU()}[act]
    tact = {"gelu": torch.nn.GELU(), "gelu_tanh": torch.nn.GELU("tanh"), "silu": torch.nn.SiLU(), "relu": torch.nn.ReLU()}[act]
    check_parity(lambda s, x: gact(s.m0(x)), lambda m, x: tact(m[0](x)), [x], dtype, [g], [tm], adamw_steps=3)


@DTYPES
@HYP
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_softmax_and_log_softmax_any_dim(dtype, shape, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = R.standard_normal(shape) * 3
    w = nn.Linear(shape[-1], shape[-1])
    tw = torch.nn.Linear(shape[-1], shape[-1])
    check_parity(lambda s, x: nn.Softmax(dim)(s.m0(x)) + F.log_softmax(s.m0(x), dim),
                 lambda m, x: torch.nn.Softmax(dim)(m[0](x)) + torch.nn.functional.log_softmax(m[0](x), dim),
                 [x], dtype, [w], [tw])


@DTYPES
@HYP
@given(b=st.integers(1, 2), h=st.integers(1, 3), lq=st.integers(1, 5), s=st.integers(1, 5), e=st.integers(1, 4),
       mask=st.sampled_from(["none", "causal", "bool", "float"]), scale=st.sampled_from([None, 0.3]))
def test_scaled_dot_product_attention(dtype, b, h, lq, s, e, mask, scale):
    if mask == "causal":
        s = lq
    q, k, v = (R.standard_normal((b, h, n, e)) for n in (lq, s, s))
    w = nn.Linear(e, e)
    tw = torch.nn.Linear(e, e)
    mb = R.random((lq, s)) < 0.7
    mb[:, 0] = True  # every query sees a key (torch gives NaN rows otherwise)
    extra = {"none": {}, "causal": {"is_causal": True}}.get(mask)
    inputs = [q, k, v]
    if mask == "bool":
        inputs.append(mb)
    elif mask == "float":
        inputs.append(R.standard_normal((1, lq, s)))

    def g(s_, q, k, v, *m):
        kw = dict(extra) if extra is not None else {"attn_mask": m[0]}
        return F.scaled_dot_product_attention(s_.m0(q), k, v, scale=scale, **kw)

    def t(m_, q, k, v, *m):
        kw = dict(extra) if extra is not None else {"attn_mask": m[0]}
        return torch.nn.functional.scaled_dot_product_attention(m_[0](q), k, v, scale=scale, **kw)

    check_parity(g, t, inputs, dtype, [w], [tw])


@DTYPES
@HYP
@given(n=st.integers(1, 6), c=st.integers(2, 6), ignore=st.sampled_from([None, -1, 0]),
       smooth=st.sampled_from([0.0, 0.1]), reduction=st.sampled_from(["mean", "sum"]))
def test_cross_entropy_ignore_index_and_label_smoothing(dtype, n, c, ignore, smooth, reduction):
    x = R.standard_normal((n, c)) * 2
    y = np.random.default_rng(n + c).integers(0, c, n)
    if ignore == -1:
        y[0] = -1
    kw = {"label_smoothing": smooth, "reduction": reduction}
    if ignore is not None:
        kw["ignore_index"] = ignore
    if ignore == 0 and (y == 0).all():
        y[0] = 1 % c
    w, tw = nn.Linear(c, c), torch.nn.Linear(c, c)

    check_parity(lambda s, x, y: F.cross_entropy(s.m0(x), y, **kw),
                 lambda m, x, y: torch.nn.functional.cross_entropy(m[0](x), y, **kw), [x, y], dtype, [w], [tw])


def test_module_list_and_dict_names_match_torch():
    g = nn.ModuleDict({"h": nn.ModuleList([nn.Linear(2, 3), nn.LayerNorm(3)]), "e": nn.Embedding(4, 2)})
    t = torch.nn.ModuleDict({"h": torch.nn.ModuleList([torch.nn.Linear(2, 3), torch.nn.LayerNorm(3)]),
                             "e": torch.nn.Embedding(4, 2)})
    assert list(g.state_dict()) == list(t.state_dict())
    assert len(g["h"]) == 2 and isinstance(g["h"][-1], nn.LayerNorm) and "e" in g and list(g.keys()) == ["h", "e"]
    assert [type(m).__name__ for m in g["h"]] == ["Linear", "LayerNorm"]


# ------------------------------------------------------------------ tensor methods


METHOD_CASES = {
    "view_transpose": (lambda x: x.view(x.shape[0], -1, 2).transpose(1, 2).contiguous().reshape(-1, 4), (3, 4, 2)),
    "permute_split": (lambda x: sum(p.sum(dim=1) for p in x.permute(2, 0, 1).split(2, dim=2)), (3, 5, 2)),
    "chunk_cat_stack": (lambda x: lib.stack([c.mean(dim=-1) for c in x.chunk(3, dim=-1)], dim=0), (2, 7)),
    "slicing": (lambda x: x[:, 1:3] * 2 + x[..., -1, None, :].expand(2, 2, 3)[:, :, :], (2, 4, 3)),
    "index_neg_ellipsis": (lambda x: x[-1] + x[..., 0, :][1:3] + x[None, 0, :, -2:][0, :, 0:1], (3, 2, 2)),
    "unsqueeze_squeeze": (lambda x: x.unsqueeze(1).squeeze(1).unsqueeze(-1).expand(-1, -1, 3).squeeze(), (2, 3)),
    "masked_fill_tril": (lambda x: x.masked_fill(lib.tril(lib.ones(4, 4)) == 0, -1.5).softmax(dim=-1), (2, 4, 4)),
    "where_compare": (lambda x: lib.where(x > 0.1, x, x * 0.5) + (x <= 0).type_as(x) + lib.where(x < 0, 1.0, x), (3, 4)),
    "batched_matmul": (lambda x: x @ x.transpose(-2, -1) @ x[0], (2, 3, 3)),
    "reductions": (lambda x: x.amax(dim=1) + x.amax(dim=1) + x.max() + x.sum(dim=(0, 1)) + x.mean(dim=-1, keepdim=True).sum(1),
                   (2, 3, 4)),
    "math": (lambda x: (x * x + 1).sqrt() + (x * x + 2).rsqrt() + x.tanh() + x.exp().log() + x.pow(3) + (x * x + 1) ** 1.5,
             (3, 4)),
    "max_dim_argmax": (lambda x: x.max(dim=1).values + x.max(1)[1].to(x.dtype) + x.min(-1).values
                       + x.argmax(dim=-1, keepdim=True).to(x.dtype) + x.argmin().to(x.dtype), (3, 4)),
    "arange_zeros": (lambda x: x + lib.arange(4).to(x.dtype) + lib.zeros(3, 4, dtype=x.dtype)
                     + lib.arange(0.5, 2.5, 0.5).type_as(x), (3, 4)),
}
lib = None


@pytest.mark.parametrize("case", sorted(METHOD_CASES))
@DTYPES
def test_tensor_methods_match_torch(case, dtype):
    global lib
    fn, shape = METHOD_CASES[case]
    x = np.random.default_rng(len(case)).standard_normal(shape)
    if case == "math":
        x = np.abs(x) + 0.5
    w, tw = nn.Linear(shape[-1], shape[-1]), torch.nn.Linear(shape[-1], shape[-1])

    def g(s, x):
        global lib
        lib = graphc
        return fn(s.m0(x))

    def t(m, x):
        global lib
        lib = torch
        return fn(m[0](x))

    check_parity(g, t, [x], dtype, [w], [tw])


def test_shape_and_size_are_python_ints():
    seen = []

    class M(nn.Module):
        def forward(self, x):
            B, T, C = x.size()
            seen.append((B, T, C, x.shape, x.size(-1), x.size(0)))
            return x.view(B * T, C)

    graphc.trace(M(), np.zeros((2, 3, 4), np.float32))
    assert seen == [(2, 3, 4, (2, 3, 4), 4, 2)] and all(type(v) is int for v in seen[0][:3])
    assert M()(np.zeros((2, 3, 4), np.float32)).shape == (6, 4)  # eagerly too


# ------------------------------------------------------------------ the sample's GPT, a pre-LN block


SMALL = GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8)


@DTYPES
def test_gpt_matches_torch_loss_grads_and_adamw_steps(dtype):
    gm, tm = gpt_classes(graphc)(SMALL).to(dtype), gpt_classes(torch)(SMALL).to(TORCH_DT[dtype])
    init_weights(gm, seed=3)
    tm.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in gm.state_dict().items()}, strict=False)
    assert [n for n, _ in gm.named_parameters()] == [n for n, _ in tm.named_parameters()]  # tied head counted once
    rng = np.random.default_rng(0)
    idx = rng.integers(0, SMALL.vocab_size, (3, SMALL.block_size))
    tgt = rng.integers(0, SMALL.vocab_size, (3, SMALL.block_size))
    tgt[0, :2] = -1  # ignored positions (nanoGPT's ignore_index=-1)
    mode = "jit" if dtype == np.float32 else "interpret"  # (one native build of the GPT keeps the suite short)
    cm = graphc.compile(gm, idx, tgt, mode=mode)
    gopt = graphc.optim.AdamW(gm.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    topt = torch.optim.AdamW(tm.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    tparams = dict(tm.named_parameters())
    for step in range(3):
        loss = float(cm(idx, tgt))
        cm.backward()
        tl = tm(torch.tensor(idx), torch.tensor(tgt))
        tl.backward()
        np.testing.assert_allclose(loss, tl.item(), **TOL[dtype])
        for n, p in gm.named_parameters():
            np.testing.assert_allclose(p.grad, tparams[n].grad.numpy(), **TOL[dtype], err_msg=f"grad {n} step {step}")
        np.testing.assert_allclose(graphc.nn.utils.clip_grad_norm_(gm.parameters(), 1.0),
                                   torch.nn.utils.clip_grad_norm_(tm.parameters(), 1.0).item(), **TOL[dtype])
        gopt.step()
        topt.step()
        gopt.zero_grad()
        topt.zero_grad()
        for n, p in gm.named_parameters():
            np.testing.assert_allclose(p, tparams[n].detach().numpy(), **TOL[dtype], err_msg=f"{n} after step {step}")
    # inference: next-token logits from a compiled eval forward (interpreted: the sample's test
    # runs the native one, sampling text), and eagerly
    gm.eval()
    tm.eval()
    want = tm(torch.tensor(idx)).detach().numpy()
    np.testing.assert_allclose(graphc.compile(gm, idx, mode="interpret")(idx), want, **TOL[dtype])
    np.testing.assert_allclose(np.asarray(gm(idx)), want, **TOL[dtype])


def test_pre_ln_block_with_manual_attention_matches_torch():
    """A pre-LN block written the long way (tril buffer, masked_fill, softmax, @), float64."""

    def block_classes(lib):
        class Block(lib.nn.Module):
            def __init__(self, d, h):
                super().__init__()
                self.ln1, self.ln2 = lib.nn.LayerNorm(d), lib.nn.LayerNorm(d)
                self.qkv, self.proj = lib.nn.Linear(d, 3 * d), lib.nn.Linear(d, d, bias=False)
                self.mlp = lib.nn.Sequential(lib.nn.Linear(d, 4 * d), lib.nn.GELU(approximate="tanh"), lib.nn.Linear(4 * d, d))
                self.h = h

            def forward(self, x):
                B, T, C = x.shape
                q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
                q, k, v = (t.reshape(B, T, self.h, -1).permute(0, 2, 1, 3) for t in (q, k, v))
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
                mask = lib.tril(lib.ones(T, T)).view(1, 1, T, T)
                att = att.masked_fill(mask[:, :, :T, :T] == 0, float("-inf"))
                y = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
                x = x + self.proj(y)
                return x + self.mlp(self.ln2(x))
        return Block

    g, t = block_classes(graphc)(8, 2), block_classes(torch)(8, 2)
    check_parity(lambda s, x: s.m0(x), lambda m, x: m[0](x), [R.standard_normal((2, 5, 8))], np.float64,
                 [g], [t], adamw_steps=3)


# ------------------------------------------------------------------ VJPs of the compositions vs finite differences


@pytest.mark.parametrize("name", ["layer_norm", "gelu", "gelu_tanh", "silu", "attention", "cross_entropy", "embedding"])
def test_composition_vjp_matches_finite_differences(name):
    rng = np.random.default_rng(5)
    fns = {
        "layer_norm": (lambda s, x: F.layer_norm(x, (4,), s.w, s.b), (3, 4), ()),
        "gelu": (lambda s, x: F.gelu(x * s.w), (3, 4), ()),
        "gelu_tanh": (lambda s, x: F.gelu(x * s.w, approximate="tanh"), (3, 4), ()),
        "silu": (lambda s, x: F.silu(x * s.w + s.b), (3, 4), ()),
        "attention": (lambda s, x: F.scaled_dot_product_attention(x * s.w, x, x + s.b, is_causal=True), (2, 3, 4), ()),
        "cross_entropy": (lambda s, x, y: F.cross_entropy(x * s.w + s.b, y, ignore_index=-1, label_smoothing=0.2),
                          (3, 4), (np.array([1, -1, 3]),)),
        "embedding": (lambda s, x, i: F.embedding(i, s.e, padding_idx=1) * x.sum(), (2, 2, 4), (np.array([[0, 2], [2, 1]]),)),
    }
    fn, shape, ints = fns[name]

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(rng.standard_normal(4) + 1, dtype=np.float64)
            self.b = nn.Parameter(rng.standard_normal(4), dtype=np.float64)
            self.e = nn.Parameter(rng.standard_normal((3, 4)), dtype=np.float64)

        def forward(self, x, r, *k):
            return (fn(self, x, *k) * r).sum()

    m = M()
    x = rng.standard_normal(shape)
    r = rng.standard_normal(_probe_shape(m, fn, x, *ints))
    cm = graphc.compile(m, x, r, *ints, mode="interpret")
    cm(x, r, *ints)
    cm.backward()
    used = [(n, p) for n, p in m.named_parameters() if p.grad is not None]
    assert used
    eps = 1e-6
    for n, p in used:
        num = np.zeros(p.shape)
        for i in np.ndindex(p.shape):
            old = float(p.data[i])
            p.data[i] = old + eps
            hi = float(np.asarray(m(x, r, *ints)))
            p.data[i] = old - eps
            lo = float(np.asarray(m(x, r, *ints)))
            p.data[i] = old
            num[i] = (hi - lo) / (2 * eps)
        np.testing.assert_allclose(p.grad, num, rtol=1e-6, atol=1e-8, err_msg=f"{name}: d/d{n}")


# ------------------------------------------------------------------ AdamW and clipping, eagerly


@DTYPES
def test_adamw_and_clip_grad_norm_match_torch(dtype):
    rng = np.random.default_rng(2)
    ps = [nn.Parameter(rng.standard_normal(s), dtype=dtype) for s in ((3, 4), (5,))]
    ts = [torch.tensor(np.asarray(p), requires_grad=True) for p in ps]
    gopt = graphc.optim.AdamW(ps, lr=0.05, weight_decay=0.3)
    topt = torch.optim.AdamW(ts, lr=0.05, weight_decay=0.3)
    for _ in range(4):
        for p, t in zip(ps, ts):
            g = rng.standard_normal(p.shape) * 3
            p.grad = np.asarray(g, dtype)
            t.grad = torch.tensor(np.asarray(g, dtype))
        np.testing.assert_allclose(graphc.nn.utils.clip_grad_norm_(ps, 1.0),
                                   torch.nn.utils.clip_grad_norm_(ts, 1.0).item(), **TOL[dtype])
        gopt.step()
        topt.step()
        for p, t in zip(ps, ts):
            np.testing.assert_allclose(p, t.detach().numpy(), **TOL[dtype])


@DTYPES
@pytest.mark.parametrize("max_norm", [0.3, 1e3])  # clipping on every step / never
def test_compiled_train_step_with_clipping_matches_torch(dtype, max_norm):
    """compile_train_step(model, None, AdamW, idx, tgt, clip_grad_norm=max_norm): the GPT's own
    loss, clipping and AdamW in one plan, as torch's backward, clip_grad_norm_ and step."""
    gm, tm = gpt_classes(graphc)(SMALL).to(dtype), gpt_classes(torch)(SMALL).to(TORCH_DT[dtype])
    init_weights(gm, seed=5)
    tm.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in gm.state_dict().items()}, strict=False)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, SMALL.vocab_size, (3, SMALL.block_size))
    tgt = rng.integers(0, SMALL.vocab_size, (3, SMALL.block_size))
    gopt = graphc.optim.AdamW(gm.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    topt = torch.optim.AdamW(tm.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    mode = "jit" if dtype == np.float32 else "interpret"
    step = graphc.compile_train_step(gm, None, gopt, idx, tgt, mode=mode, clip_grad_norm=max_norm)
    assert any(n.op == "minimum" for n in step.graph("clip_grad_norm").nodes)
    tparams = dict(tm.named_parameters())
    for k in range(3):
        loss = step(idx, tgt)
        tl = tm(torch.tensor(idx), torch.tensor(tgt))
        tl.backward()
        norm = torch.nn.utils.clip_grad_norm_(tm.parameters(), max_norm).item()
        assert (norm > max_norm) == (max_norm < 1)
        topt.step()
        topt.zero_grad()
        np.testing.assert_allclose(loss, tl.item(), **TOL[dtype])
        for n, p in gm.named_parameters():
            np.testing.assert_allclose(p, tparams[n].detach().numpy(), **TOL[dtype], err_msg=f"{n} after step {k}")


def test_clip_grad_norm_must_be_positive():
    gm = gpt_classes(graphc)(SMALL)
    idx = np.zeros((2, SMALL.block_size), np.int64)
    with pytest.raises(graphc.GraphcError, match="clip_grad_norm must be a positive"):
        graphc.compile_train_step(gm, None, graphc.optim.AdamW(gm.parameters()), idx, idx, clip_grad_norm=0)


# ------------------------------------------------------------------ errors


def _trace(fn, *xs):
    class M(nn.Module):
        def forward(self, *a):
            return fn(*a)
    return graphc.trace(M(), *xs)


def test_errors_name_the_problem():
    emb = nn.Embedding(5, 3)
    with pytest.raises(graphc.GraphcError, match=r"Embedding\(5, 3\): token id 7 at position \[1, 0\] is out of range"):
        emb(np.array([[0, 1], [7, 2]]))
    with pytest.raises(graphc.TraceError, match="ids must be int64"):
        graphc.trace(emb, np.zeros((2, 2), np.float32))
    x = np.zeros((2, 2, 3, 4), np.float32)
    with pytest.raises(graphc.TraceError, match=r"attn_mask of shape \[2, 3\] does not broadcast") as e:
        _trace(lambda q: F.scaled_dot_product_attention(q, q, q, attn_mask=graphc.ones(2, 3) > 0), x)
    assert "test_transformer.py" in str(e.value)  # the user's line
    with pytest.raises(graphc.TraceError, match="dropout_p=0.1 is not supported"):
        _trace(lambda q: F.scaled_dot_product_attention(q, q, q, dropout_p=0.1), x)
    with pytest.raises(graphc.TraceError, match="use as an index"):
        _trace(lambda q: q[:, :q.sum()], x)
    with pytest.raises(graphc.TraceError, match=r"cannot reshape \[2, 2, 3, 4\] \(48 elements\) to \[5, -1\]"):
        _trace(lambda q: q.view(5, -1), x)
    with pytest.raises(graphc.TraceError, match=r"masked_fill: the mask's shape \[3\] does not broadcast"):
        _trace(lambda q: q.masked_fill(graphc.ones(3) > 0, 0.0), x)
    with pytest.raises(graphc.TraceError, match="index 5 is out of bounds for dim(ension)? 1 with size 2"):
        _trace(lambda q: q[:, 5], x)
    with pytest.raises(graphc.TraceError, match="comparison >"):
        _trace(lambda q: q if q.sum() > 0 else -q, x)


def test_compiled_embedding_names_the_layer_the_bad_id_and_its_position():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)

        def forward(self, idx):
            return self.emb(idx).sum()

    cm = graphc.compile(M(), np.zeros((2, 2), np.int64), mode="interpret")
    with pytest.raises(graphc.GraphcError, match=r"Embedding\(5, 3\): token id 7 at position \[1, 0\] is out of "
                                                 r"range.*\(at .*test_transformer.py:\d+\)"):
        cm(np.array([[0, 1], [7, 2]]))
    assert float(cm(np.array([[0, 1], [4, 2]]))) == pytest.approx(float(cm.module(np.array([[0, 1], [4, 2]])).sum()))


def attention_classes(lib):
    class CausalAttention(lib.nn.Module):
        """nanoGPT's non-flash attention: the causal mask is a registered buffer, sliced to T."""

        def __init__(self, d=8, h=2, block=6):
            super().__init__()
            self.qkv, self.h = lib.nn.Linear(d, 3 * d), h
            self.register_buffer("bias", lib.tril(lib.ones(block, block)).view(1, 1, block, block))

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // self.h))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf")).softmax(dim=-1)
            return (att @ v).transpose(1, 2).contiguous().view(B, T, C)

    return CausalAttention


def test_registered_causal_mask_buffer_is_a_graph_input_and_matches_torch():
    gm, tm = attention_classes(graphc)(), attention_classes(torch)().double()
    tm.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in gm.state_dict().items()})
    g = graphc.trace(gm, np.zeros((2, 5, 8), np.float32))
    assert [(i.name, i.kind) for i in g.inputs if i.name == "bias"] == [("bias", "buffer")]
    x = np.random.default_rng(0).standard_normal((2, 5, 8))
    want = tm(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(graphc.compile(gm.to(np.float64), x, mode="interpret")(x), want, rtol=1e-10, atol=1e-12)


def test_ledger_reports_what_attention_keeps():
    """sdpa's backward needs q, k, v and the softmax output; the scores before the softmax, the
    mask and the transposes are not kept (recomputed or not needed)."""

    class M(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True).sum()

    q = np.zeros((2, 3, 5, 4), np.float32)
    cm = graphc.compile(M(), q, q, q, mode="interpret", input_grads=True)
    ledger = cm.plans.ledger
    kept = sorted((s.op, s.type.shape) for s in ledger)
    assert ("softmax", (2, 3, 5, 5)) in kept
    assert all(op not in ("mul", "where", "matmul") for op, _ in kept), cm.plans.partition.format_ledger()
    assert sum(s.nbytes for s in ledger) <= 4 * (2 * 3 * 5 * 5) + 3 * 4 * q.size, cm.plans.partition.format_ledger()
