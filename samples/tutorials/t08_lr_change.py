"""A learning-rate change in the middle of training, through optimizer.param_groups."""
import numpy as np
import graphc as torch
import graphc.nn as nn


def main(steps=40):
    rng = np.random.default_rng(6)
    model = nn.Sequential(nn.Linear(3, 8), nn.Sigmoid(), nn.Linear(8, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, size=tuple(p.shape)).astype(np.float32)))
    x = torch.from_numpy(rng.standard_normal((50, 3)).astype(np.float32))
    y = torch.from_numpy(rng.standard_normal((50, 1)).astype(np.float32))
    criterion = nn.HuberLoss(delta=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    losses, lrs = [], []
    for step in range(steps):
        if step == steps // 2:
            for group in optimizer.param_groups:
                group["lr"] = 0.05
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        lrs.append(optimizer.param_groups[0]["lr"])
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} (lr {lrs[0]} -> {lrs[-1]})")
    return {"losses": np.array(losses), "lrs": np.array(lrs)}


if __name__ == "__main__":
    main()
