"""Gradient descent by hand: the seed's w <- w - alpha * grad, with updates under no_grad."""
import numpy as np
import graphc as torch


def main(steps=100, lr=0.1):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 3)).astype(np.float32)
    Y = (X @ np.array([[2.0], [-1.0], [0.5]], np.float32) + 0.3).astype(np.float32)
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    w = torch.zeros(3, 1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    losses = []
    for step in range(steps):
        loss = ((x @ w + b - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            w -= lr * w.grad
            b -= lr * b.grad
            w.grad.zero_()
            b.grad.zero_()
        losses.append(loss.item())
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.6f}; w = {w.detach().numpy().ravel()}, b = {b.item():.4f}")
    return {"losses": np.array(losses), "w": w.detach().numpy(), "b": b.detach().numpy()}


if __name__ == "__main__":
    main()
