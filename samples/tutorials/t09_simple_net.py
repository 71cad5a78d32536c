"""The seed document's SimpleNet trained with zero_grad / backward / step, then evaluated."""
import numpy as np
import graphc as torch
import graphc.nn as nn


class SimpleNet(nn.Module):
    def __init__(self):
        super(SimpleNet, self).__init__()
        self.linear1 = nn.Linear(10, 20)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        self.linear2 = nn.Linear(20, 1)

    def forward(self, x):
        x = self.linear1(x)
        x = self.relu(x)
        x = self.dropout(x)
        x = self.linear2(x)
        return x


def main(steps=200):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((64, 10)).astype(np.float32)
    Y = np.tanh(X[:, :1] + X[:, 1:2]).astype(np.float32)
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    torch.manual_seed(0)
    model = SimpleNet()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-0.3, 0.3, size=tuple(p.shape)).astype(np.float32)))
    criterion = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.eval()
    with torch.no_grad():
        before = criterion(model(x), y).item()
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = criterion(model(x), y).item()
    print(f"eval MSE {before:.4f} -> {after:.4f}")
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
