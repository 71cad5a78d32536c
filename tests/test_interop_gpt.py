"""graphc.from_torch on a nanoGPT-style torch model: issue 11's layers (Embedding, LayerNorm, GELU
both ways, SiLU, Softmax, scaled_dot_product_attention), the tensor methods attention uses
(split, chunk, view, transpose, permute, contiguous, masked_fill, slicing), torch.tril/ones/arange
built inside forward, a registered causal-mask buffer and weight tying. Loss, every gradient and
three AdamW steps equal torch's; the state_dict keys are torch's, both ways."""
import inspect
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as tnn  # noqa: E402
import torch.nn.functional as TF  # noqa: E402

import graphc  # noqa: E402

VOCAB, BLOCK, D, HEADS = 11, 6, 8, 2


class Block(tnn.Module):
    """A pre-LN block; `kind` picks how attention is masked:
    "buffer": nanoGPT's slow path (a registered tril buffer, masked_fill, Softmax layer);
    "tril": sdpa with a bool mask built in forward from torch.tril(torch.ones(...));
    "causal": sdpa(is_causal=True), with chunk + permute instead of split + transpose."""

    def __init__(self, kind):
        super().__init__()
        self.kind, self.n_head = kind, HEADS
        self.ln_1 = tnn.LayerNorm(D)
        self.c_attn = tnn.Linear(D, 3 * D, bias=False)  # a key bias has a zero gradient: Adam would amplify noise
        self.c_proj = tnn.Linear(D, D)
        self.ln_2 = tnn.LayerNorm(D, bias=False)
        act = {"buffer": tnn.GELU(), "tril": tnn.GELU(approximate="tanh"), "causal": tnn.SiLU()}[kind]
        self.mlp = tnn.Sequential(tnn.Linear(D, 4 * D), act, tnn.Linear(4 * D, D), tnn.Dropout(0.0))
        if kind == "buffer":
            self.softmax = tnn.Softmax(dim=-1)
            self.register_buffer("bias", torch.tril(torch.ones(BLOCK, BLOCK)).view(1, 1, BLOCK, BLOCK))

    def forward(self, x):
        B, T, C = x.size()
        h = C // self.n_head
        if self.kind == "causal":
            q, k, v = self.c_attn(self.ln_1(x)).chunk(3, dim=-1)
            q, k, v = (t.reshape(B, T, self.n_head, h).permute(0, 2, 1, 3) for t in (q, k, v))
            y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            q, k, v = self.c_attn(self.ln_1(x)).split(self.n_head * h, dim=2)
            q, k, v = (t.view(B, T, self.n_head, h).transpose(1, 2) for t in (q, k, v))
            if self.kind == "buffer":
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # nanoGPT's line
                att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
                y = self.softmax(att) @ v
            else:
                mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
                y = TF.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp(self.ln_2(x))


class NanoGPT(tnn.Module):
    def __init__(self):
        super().__init__()
        self.wte = tnn.Embedding(VOCAB, D)
        self.wpe = tnn.Embedding(BLOCK, D)
        self.h = tnn.ModuleList([Block("buffer"), Block("tril"), Block("causal")])
        self.ln_f = tnn.LayerNorm(D)
        self.lm_head = tnn.Linear(D, VOCAB, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT

    def forward(self, idx, targets):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long)
        x = self.wte(idx) + self.wpe(pos)
        # tensors made from Python numbers only (fx: self._tensor_constantN; graphc: non-persistent buffers)
        x = x.masked_fill(torch.zeros(D, dtype=torch.bool), 0.0) * torch.ones(D).type_as(x)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return TF.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def batch(seed, n=3):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, VOCAB, (n, BLOCK)).astype(np.int64)
    targets = rng.integers(0, VOCAB, (n, BLOCK)).astype(np.int64)
    targets[0, :2] = -1  # ignored positions
    return idx, targets


@pytest.mark.parametrize("dtype, tol", [(torch.float32, dict(rtol=2e-5, atol=2e-6)),
                                        (torch.float64, dict(rtol=1e-11, atol=1e-13))])
def test_nanogpt_loss_gradients_and_three_adamw_steps_match_torch(dtype, tol):
    torch.manual_seed(0)
    tm = NanoGPT().to(dtype)
    idx, targets = batch(0)
    gm = graphc.from_torch(tm, idx, targets)
    assert gm.captured_with == "torch.fx"
    assert list(gm.state_dict()) == list(tm.state_dict())  # h.0.bias (the buffer), wte.weight and lm_head.weight
    assert gm.wte.weight is gm.lm_head.weight  # tying survives
    assert type(gm.h[0].ln_1) is graphc.nn.LayerNorm and type(gm.wte) is graphc.nn.Embedding
    assert type(gm.h[1].mlp[1]) is graphc.nn.GELU and gm.h[1].mlp[1].approximate == "tanh"
    tm.load_state_dict(gm.state_dict())  # torch takes graphc's state_dict back as is

    cm = graphc.compile(gm, idx, targets, mode="interpret")
    opt = graphc.optim.AdamW(gm.parameters(), lr=1e-2, weight_decay=0.1)
    topt = torch.optim.AdamW(tm.parameters(), lr=1e-2, weight_decay=0.1)
    tparams = dict(tm.named_parameters())
    for step in range(3):
        idx, targets = batch(step)
        loss = cm(idx, targets)
        cm.backward()
        tloss = tm(torch.from_numpy(idx), torch.from_numpy(targets))
        topt.zero_grad()
        tloss.backward()
        np.testing.assert_allclose(float(loss), tloss.item(), **tol)
        for name, p in gm.named_parameters():
            np.testing.assert_allclose(p.grad, tparams[name].grad.numpy(), **tol, err_msg=f"step {step} grad {name}")
        opt.step()
        opt.zero_grad()
        topt.step()
    for k, v in gm.state_dict().items():
        np.testing.assert_allclose(v.numpy(), tm.state_dict()[k].numpy(), **tol, err_msg=k)
    back = NanoGPT().to(dtype)
    back.load_state_dict(gm.state_dict())  # graphc -> torch with the same keys
    gm.load_state_dict(tm.state_dict())  # and torch -> graphc


def test_nanogpt_maps_onto_graphc_layers_and_ops():
    torch.manual_seed(1)
    tm = NanoGPT()
    idx, targets = batch(1)
    gm = graphc.from_torch(tm, idx, targets)
    g = graphc.trace(gm, idx, targets)
    ops = {n.op for n in g.nodes}
    assert {"gather", "rsqrt", "erf", "tanh", "sigmoid", "softmax", "matmul", "where", "arange", "slice",
            "transpose"} <= ops
    assert {i.name for i in g.inputs if i.kind == "buffer"} == {"h.0.bias", "_tensor_constant0", "_tensor_constant1"}
    assert not hasattr(tm, "_tensor_constant0")  # fx put it on the torch model; from_torch took it off
    src, start = inspect.getsourcelines(Block.forward)  # IR locations are the torch model's own lines
    line = start + next(k for k, text in enumerate(src) if "self.softmax(att) @ v" in text)
    assert {n.loc for n in g.nodes if n.op == "softmax"} >= {f"test_interop_gpt.py:{line}"}
    np.testing.assert_allclose(np.asarray(gm(idx, targets)), tm(torch.from_numpy(idx), torch.from_numpy(targets)).item(),
                               rtol=1e-5)


def test_char_gpt_written_in_torch_imports_for_training_and_for_inference(tmp_path):
    """samples/char_gpt.py's model built with torch: forward(idx, targets=None) is captured once
    with targets (the loss branch) and once without (fx traces the default: the logits branch)."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples"))
    try:
        from char_gpt import GPTConfig, gpt_classes
    finally:
        sys.path.pop(0)
    torch.manual_seed(2)
    tm = gpt_classes(torch)(GPTConfig(block_size=BLOCK, vocab_size=VOCAB, n_layer=1, n_head=HEADS, n_embd=D))
    idx, targets = batch(2)
    train = graphc.from_torch(tm, idx, targets)
    np.testing.assert_allclose(np.asarray(train(idx, targets)),
                               tm(torch.from_numpy(idx), torch.from_numpy(targets)).item(), rtol=1e-5)
    tm.eval()
    infer = graphc.from_torch(tm, idx)
    np.testing.assert_allclose(np.asarray(infer(idx)), tm(torch.from_numpy(idx)).detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(graphc.GraphcError, match="captured for calls without that argument"):
        infer(idx, targets)
