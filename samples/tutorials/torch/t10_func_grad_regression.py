"""A regression fitted with a function transform: grad(loss)(params, x, y), no Module."""
import numpy as np
import torch
from torch.func import grad


def loss_fn(w, b, x, y):
    return ((x @ w + b - y) ** 2).mean()


def main(steps=60, lr=0.2):
    rng = np.random.default_rng(8)
    x = torch.from_numpy(rng.standard_normal((100, 4)).astype(np.float32))
    true_w = torch.tensor([[1.0], [-2.0], [0.5], [0.0]])
    y = x @ true_w + 0.7
    w, b = torch.zeros(4, 1), torch.zeros(1)
    grad_fn = grad(loss_fn, argnums=(0, 1))
    for _ in range(steps):
        gw, gb = grad_fn(w, b, x, y)
        w, b = w - lr * gw, b - lr * gb
    final = loss_fn(w, b, x, y).item()
    print(f"w = {w.numpy().ravel()}, b = {b.item():.4f}, loss {final:.2e}")
    return {"w": w.numpy(), "b": b.numpy(), "loss": final}


if __name__ == "__main__":
    main()
