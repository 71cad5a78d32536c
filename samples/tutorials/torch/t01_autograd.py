"""Tensors and autograd on a function (the seed's Autograd concept): y = f(x); y.backward(); x.grad."""
import numpy as np
import torch


def main():
    x = torch.tensor([0.5, -1.0, 2.0, 3.0], requires_grad=True)
    w = torch.tensor([[1.0, -2.0], [0.5, 1.5], [2.0, 0.0], [-1.0, 1.0]], requires_grad=True)
    y = (x ** 3 - 2 * x).sum() + (x.exp() * x).mean() + (x @ w).tanh().pow(2).sum() + x.abs().sqrt().sum()
    y.backward()
    print("y =", y.item())
    print("dy/dx =", x.grad)
    return {"y": y.item(), "x.grad": x.grad.numpy(), "w.grad": w.grad.numpy(),
            "shape": list(x.size()), "numel": x.numel(), "requires_grad": y.requires_grad}


if __name__ == "__main__":
    main()
