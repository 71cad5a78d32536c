"""nn.init through model.apply, a few training steps, then save and load the state_dict."""
import os
import tempfile

import numpy as np
import graphc as torch
import graphc.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.act = nn.LeakyReLU(0.1)
        self.fc2 = nn.Linear(16, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def init_weights(m):
    if isinstance(m, nn.Linear):
        rng = np.random.default_rng(m.in_features)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, size=tuple(m.weight.shape)).astype(np.float32)))
        nn.init.constant_(m.bias, 0.01)


def main(steps=30):
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.standard_normal((32, 4)).astype(np.float32))
    y = torch.from_numpy(rng.standard_normal((32, 1)).astype(np.float32))
    model = Net()
    model.apply(init_weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    criterion = nn.SmoothL1Loss()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    path = os.path.join(tempfile.mkdtemp(), "net.pt")
    torch.save(model.state_dict(), path)
    restored = Net()
    restored.load_state_dict(torch.load(path))
    restored.eval()
    with torch.no_grad():
        same = bool(np.array_equal(restored(x).numpy(), model.eval()(x).numpy()))
        out = restored(x).numpy()
    print(f"loss {loss.item():.5f}; restored model gives the same outputs: {same}")
    return {"loss": loss.item(), "same": same, "out": out}


if __name__ == "__main__":
    main()
