"""An MLP whose hidden layers live in an nn.ModuleList, trained with Adam."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


def main(steps=40):
    rng = np.random.default_rng(3)
    model = MLP([6, 24, 24, 2])
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-0.3, 0.3, size=tuple(p.shape)).astype(np.float32)))
    x = torch.from_numpy(rng.standard_normal((128, 6)).astype(np.float32))
    y = torch.from_numpy((rng.standard_normal((128, 6))[:, :2] > 0).astype(np.int64)[:, 0])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"{len(model.layers)} layers, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return {"losses": np.array(losses), "n_params": sum(p.numel() for p in model.parameters())}


if __name__ == "__main__":
    main()
