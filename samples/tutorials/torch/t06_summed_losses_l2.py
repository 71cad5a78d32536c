"""Two losses summed, plus an L2 term over model.parameters() written by hand."""
import numpy as np
import torch
import torch.nn as nn


def main(steps=40, l2=1e-2):
    rng = np.random.default_rng(4)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, size=tuple(p.shape)).astype(np.float32)))
    x = torch.from_numpy(rng.standard_normal((64, 5)).astype(np.float32))
    y = torch.from_numpy(rng.standard_normal((64, 2)).astype(np.float32))
    mse, l1 = nn.MSELoss(), nn.L1Loss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses, penalties = [], []
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(x)
        penalty = sum(p.pow(2).sum() for p in model.parameters())
        loss = mse(out, y) + 0.5 * l1(out, y) + l2 * penalty
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        penalties.append(penalty.item())
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; L2 {penalties[-1]:.4f}")
    return {"losses": np.array(losses), "penalties": np.array(penalties)}


if __name__ == "__main__":
    main()
