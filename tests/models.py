"""Models shared by the tests: each graphc model with its torch twin (same names, same layout)."""
from __future__ import annotations

import numpy as np

import graphc.nn as nn


class SimpleNet(nn.Module):
    """The seed document's running example, verbatim but for `import graphc.nn as nn`."""

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


class WithLoss(nn.Module):
    """forward(x, y) = loss(model(x), y), the shape of a training graph; loss is "mse" or "ce"."""

    def __init__(self, model, loss: str):
        super().__init__()
        if loss not in ("mse", "ce"):
            raise ValueError(f"loss must be 'mse' or 'ce', got {loss!r}")
        self.model, self.loss = model, loss

    def forward(self, x, y):
        out = self.model(x)
        return nn.functional.cross_entropy(out, y) if self.loss == "ce" else nn.functional.mse_loss(out, y)


def mlp(sizes=(784, 512, 512, 10), dropout: float = 0.0) -> nn.Sequential:
    """Linear -> ReLU (-> Dropout) ... -> Linear."""
    layers = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if k < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def torch_simple_net():
    import torch

    class TorchSimpleNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear1 = torch.nn.Linear(10, 20)
            self.relu = torch.nn.ReLU()
            self.dropout = torch.nn.Dropout(0.5)
            self.linear2 = torch.nn.Linear(20, 1)

        def forward(self, x):
            return self.linear2(self.dropout(self.relu(self.linear1(x))))

    return TorchSimpleNet()


def torch_mlp(sizes=(784, 512, 512, 10), dropout: float = 0.0):
    import torch

    layers = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if k < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
            if dropout:
                layers.append(torch.nn.Dropout(dropout))
    return torch.nn.Sequential(*layers)


def copy_to_torch(model, torch_model):
    """Load graphc weights into a torch twin (dtype follows the graphc model)."""
    import torch

    sd = {k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}
    torch_model.load_state_dict(sd)
    return torch_model.to(next(iter(sd.values())).dtype)


def train_like_torch(step, tmodel, topt, tloss, x, y, steps: int = 3, rel: float = 1e-5, tforward=None):
    """`steps` train steps side by side: graphc's `step(x, y)`, then torch's zero_grad, loss
    `tloss(output, target)`, backward and step on `tmodel` (its output is `tforward(k)` at step k
    when given, e.g. a forward with step k's dropout masks). Each step's two losses must agree to
    `rel`; returns graphc's losses."""
    import pytest
    import torch

    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    losses = []
    for k in range(steps):
        loss = step(x, y)
        topt.zero_grad()
        tl = tloss(tforward(k) if tforward is not None else tmodel(tx), ty)
        tl.backward()
        topt.step()
        assert loss == pytest.approx(tl.item(), rel=rel), f"step {k}"
        losses.append(loss)
    return losses


def assert_same_weights(model, tmodel, rtol: float = 1e-4, atol: float = 1e-6):
    """A graphc model's parameters equal its torch twin's, in order, each named in a failure."""
    for (name, p), tp in zip(model.named_parameters(), tmodel.parameters()):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=rtol, atol=atol, err_msg=name)
