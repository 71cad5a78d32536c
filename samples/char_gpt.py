"""A character-level GPT (nanoGPT's shape) trained with graphc on Python's own standard library.

    python samples/char_gpt.py [--steps 600] [--seconds 0] [--out .]

The model code is nanoGPT's, written once in `gpt_classes(lib)`: called with graphc it is a
graphc model, called with torch the same classes are a torch model (the tests and the
benchmark use that to compare them). Token and position embeddings, pre-LN blocks of causal
self-attention and a GELU MLP, a final LayerNorm and a linear head tied to the token embedding.

Training: graphc.compile(model, idx, targets) compiles forward + loss (+ backward), then each
step is cm(idx, targets); cm.backward(); clip_grad_norm_; AdamW.step(), as in PyTorch.
Sampling uses a second compiled forward in eval mode over a fixed context window.
The corpus is the .py files of the running Python's standard library: nothing is downloaded.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class GPTConfig:
    block_size: int = 32
    vocab_size: int = 96
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    bias: bool = True


def gpt_classes(lib):
    """nanoGPT's model classes over `lib` (graphc or torch): only the import differs."""
    nn, F = lib.nn, lib.nn.functional

    class CausalSelfAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            assert config.n_embd % config.n_head == 0
            self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
            self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
            self.resid_dropout = nn.Dropout(config.dropout)
            self.n_head, self.n_embd = config.n_head, config.n_embd

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
            k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
            y = y.transpose(1, 2).contiguous().view(B, T, C)
            return self.resid_dropout(self.c_proj(y))

    class MLP(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
            self.gelu = nn.GELU()
            self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
            self.dropout = nn.Dropout(config.dropout)

        def forward(self, x):
            return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))

    class Block(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
            self.attn = CausalSelfAttention(config)
            self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
            self.mlp = MLP(config)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            x = x + self.mlp(self.ln_2(x))
            return x

    class GPT(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            ))
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            self.transformer.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT

        def forward(self, idx, targets=None):
            b, t = idx.size()
            pos = lib.arange(0, t, dtype=lib.long)
            tok_emb = self.transformer.wte(idx)
            pos_emb = self.transformer.wpe(pos)
            x = self.transformer.drop(tok_emb + pos_emb)
            for block in self.transformer.h:
                x = block(x)
            x = self.transformer.ln_f(x)
            if targets is not None:  # training: the loss only (a scalar, so backward() needs no argument)
                logits = self.lm_head(x)
                return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
            return self.lm_head(x[:, -1, :])  # inference: the next token's logits

    return GPT


def init_weights(model, seed: int = 0) -> None:
    """nanoGPT's init: N(0, 0.02) for Linear and Embedding weights, zero biases, and the residual
    projections scaled by 1/sqrt(2 n_layer). Works on graphc (numpy) and torch parameters."""
    rng = np.random.default_rng(seed)
    n_layer = model.config.n_layer
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if name.endswith("bias"):
            value = np.zeros(shape)
        elif ".ln_" in name or name.startswith("transformer.ln_f"):
            value = np.ones(shape)
        else:
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
            value = rng.normal(0.0, std, size=shape)
        if isinstance(p, np.ndarray):  # graphc
            p.data[...] = value
        else:  # torch
            import torch

            with torch.no_grad():
                p.copy_(torch.tensor(value, dtype=p.dtype))


# ------------------------------------------------------------------ data


def stdlib_text(max_chars: int = 2_000_000) -> str:
    """Source of the running Python's standard library (sorted .py files), printable ASCII only."""
    import sysconfig

    root = sysconfig.get_paths()["stdlib"]
    parts, total = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "test", "tests", "idlelib", "__pycache__"))
        for f in sorted(filenames):
            if f.endswith(".py"):
                try:
                    with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
                        parts.append(fh.read())
                except (UnicodeDecodeError, OSError):
                    continue
                total += len(parts[-1])
                if total >= max_chars:
                    break
        if total >= max_chars:
            break
    text = "".join(parts)[:max_chars]
    return "".join(c if (32 <= ord(c) < 127 or c == "\n") else " " for c in text)


def vocabulary(text: str):
    """96 symbols: newline, the 95 printable ASCII characters."""
    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    stoi = {c: i for i, c in enumerate(chars)}
    return chars, stoi


def batches(data: np.ndarray, block: int, batch: int, rng):
    while True:
        ix = rng.integers(0, len(data) - block - 1, size=batch)
        x = np.stack([data[i:i + block] for i in ix])
        y = np.stack([data[i + 1:i + 1 + block] for i in ix])
        yield x.astype(np.int64), y.astype(np.int64)


def progress(it, total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(it, total=total, desc=desc, ncols=80, file=sys.stdout, mininterval=1.0)
    except ImportError:
        return it


def sample_text(graphc, model, prompt: np.ndarray, n: int, chars, rng, temperature: float = 0.8) -> str:
    """Generate n characters with a compiled eval-mode forward over the last block_size ids."""
    model.eval()
    window = prompt[None, :].astype(np.int64)
    forward = graphc.compile(model, window)
    out = []
    for _ in range(n):
        logits = forward(window)[0].astype(np.float64) / temperature
        p = np.exp(logits - logits.max())
        nxt = int(rng.choice(len(p), p=p / p.sum()))
        out.append(chars[nxt])
        window = np.concatenate([window[:, 1:], [[nxt]]], axis=1)
    model.train()
    return "".join(out)


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description="Train a character-level GPT with graphc on the Python standard library.")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this many seconds of training (0: no limit)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--sample-chars", type=int, default=300)
    ap.add_argument("--out", default=".", help="folder for char_gpt_loss.png")
    args = ap.parse_args(argv)

    import graphc

    graphc.manual_seed(0)
    config = GPTConfig()
    chars, stoi = vocabulary("")
    text = stdlib_text()
    data = np.array([stoi[c] for c in text], dtype=np.int64)
    split = int(0.95 * len(data))
    train, val = data[:split], data[split:]
    print(f"corpus: {len(text):,} characters of the Python {sys.version.split()[0]} standard library, "
          f"vocabulary {len(chars)}")

    model = gpt_classes(graphc)(config)
    init_weights(model)
    n_params = sum(int(np.prod(p.shape)) for p in model.parameters())
    print(f"model: {config}, {n_params:,} parameters")
    rng = np.random.default_rng(0)
    stream = batches(train, config.block_size, args.batch_size, rng)
    x, y = next(stream)
    t0 = time.perf_counter()
    cm = graphc.compile(model, x, y)
    print(f"compiled forward + backward in {time.perf_counter() - t0:.1f} s")
    opt = graphc.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.1)

    losses, start = [], time.perf_counter()
    bar = progress(range(args.steps), args.steps, "training")
    for step in bar:
        lr = args.lr * min(1.0, (step + 1) / 50)  # short warm-up
        opt.param_groups[0]["lr"] = lr
        loss = float(cm(x, y))
        cm.backward()
        graphc.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss)
        if hasattr(bar, "set_postfix") and step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")
        x, y = next(stream)
        if args.seconds and time.perf_counter() - start > args.seconds:
            break
    if hasattr(bar, "close"):
        bar.close()
    elapsed = time.perf_counter() - start

    vx, vy = next(batches(val, config.block_size, args.batch_size, np.random.default_rng(1)))
    model.eval()
    val_loss = float(graphc.compile(model, vx, vy)(vx, vy))
    model.train()
    k = max(1, min(20, len(losses) // 5))
    print(f"trained {len(losses)} steps in {elapsed:.1f} s ({1e3 * elapsed / len(losses):.1f} ms/step)")
    print(f"train loss: first {np.mean(losses[:k]):.3f} -> last {np.mean(losses[-k:]):.3f} "
          f"(uniform guess log({len(chars)}) = {math.log(len(chars)):.3f}); validation loss {val_loss:.3f}")

    prompt = val[:config.block_size]
    print("---- sample (prompt: " + repr("".join(chars[i] for i in prompt)) + ") ----")
    print(sample_text(graphc, model, prompt, args.sample_chars, chars, np.random.default_rng(2)))
    print("----")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(losses, lw=0.8, label="train loss (per step)")
        ax.axhline(math.log(len(chars)), color="gray", ls="--", lw=0.8, label="uniform log(96)")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats)")
        ax.set_title("char-level GPT on the Python standard library (graphc)")
        ax.legend()
        fig.tight_layout()
        path = os.path.join(args.out, "char_gpt_loss.png")
        fig.savefig(path, dpi=100)
        print(f"loss curve: {path}")
    except ImportError:
        print("matplotlib not installed: no figure written")
    return float(np.mean(losses[-k:]))


if __name__ == "__main__":
    main()
