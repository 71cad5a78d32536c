"""The standard loop: zero_grad / forward / loss / backward / step over a DataLoader, then an
eval phase under no_grad with accuracy."""
import numpy as np
import graphc as torch
import graphc.nn as nn
from graphc.data import DataLoader, TensorDataset


def init_from_numpy(model, seed=0):
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-0.4, 0.4, size=tuple(p.shape)).astype(np.float32)))


def main(epochs=5):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((512, 8)).astype(np.float32)
    Y = ((X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5).astype(np.int64))
    Xt = rng.standard_normal((256, 8)).astype(np.float32)
    Yt = ((Xt[:, 0] > 0).astype(np.int64) + (Xt[:, 1] > 0.5).astype(np.int64))
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    init_from_numpy(model)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)), batch_size=64, shuffle=False)
    losses = []
    for epoch in range(epochs):
        model.train()
        running = 0.0
        for xb, yb in loader:
            optimizer.zero_grad()
            outputs = model(xb)
            loss = criterion(outputs, yb)
            loss.backward()
            optimizer.step()
            running += loss.item()
        losses.append(running / len(loader))
        model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(Xt))
            predicted = logits.argmax(dim=1)
            accuracy = (predicted == torch.from_numpy(Yt)).float().mean().item()
        print(f"epoch {epoch}: loss {losses[-1]:.4f}, test accuracy {accuracy:.3f}")
    return {"losses": np.array(losses), "accuracy": accuracy, "weight": model[0].weight.detach().numpy()}


if __name__ == "__main__":
    main()
