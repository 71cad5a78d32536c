"""A custom Dataset (__len__/__getitem__) batched by a DataLoader; BCEWithLogitsLoss on a binary task."""
import numpy as np
import graphc as torch
import graphc.nn as nn
from graphc.data import DataLoader, Dataset


class Blobs(Dataset):
    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((n, 2)).astype(np.float32)
        self.y = (self.x[:, :1] * self.x[:, 1:] > 0).astype(np.float32)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def main(epochs=4):
    rng = np.random.default_rng(5)
    model = nn.Sequential(nn.Linear(2, 16), nn.ELU(), nn.Linear(16, 16), nn.Softplus(), nn.Linear(16, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-0.6, 0.6, size=tuple(p.shape)).astype(np.float32)))
    loader = DataLoader(Blobs(256, 0), batch_size=32)
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(epochs):
        total = 0.0
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(xb)
        losses.append(total / len(loader.dataset))
    with torch.no_grad():
        test = Blobs(128, 1)
        probs = model(torch.from_numpy(test.x)).sigmoid()
        bce = nn.BCELoss()(probs, torch.from_numpy(test.y)).item()
    print(f"epoch losses {np.round(losses, 4)}; test BCE {bce:.4f}")
    return {"losses": np.array(losses), "test_bce": bce}


if __name__ == "__main__":
    main()
