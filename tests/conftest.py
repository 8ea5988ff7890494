import pytest
import torch
from torch import nn

pytest_plugins = ["exit_watchdog"]

# Tests run small tensors, where a second intra-op thread only adds contention (the CLI
# subprocesses get OMP_NUM_THREADS=1 through tests/helpers.py for the same reason).
torch.set_num_threads(1)


class LinearClassifier(nn.Module):
    """f(x) = W flatten(x) + b: input gradients are known in closed form."""

    def __init__(self, in_features: int = 12, num_classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(in_features, num_classes, dtype=torch.float64)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(num_classes, in_features, generator=g, dtype=torch.float64))
            self.fc.bias.copy_(torch.randn(num_classes, generator=g, dtype=torch.float64))
        self.num_classes = num_classes

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.fixture
def linear_model():
    return LinearClassifier()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 2, 2, generator=g, dtype=torch.float64)


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory):
    """One tiny default training run per session (stage1.ckpt, last.ckpt) for evaluation tests."""
    from helpers import train_tiny_checkpoints

    return train_tiny_checkpoints(tmp_path_factory.mktemp("tiny_run"))
