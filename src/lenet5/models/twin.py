"""The widely copied PyTorch LeNet-5 (github.com/activatedgeek/LeNet-5), reproduced exactly.

C1 6@5x5 + ReLU + 2x2 max-pool; two parallel C3 branches, each 16@5x5 + ReLU + 2x2 max-pool,
whose outputs are added; C5 120@5x5 + ReLU; F6 84 + ReLU; 10 linear outputs. PyTorch's
default initialisation, as the original. Its departures from the 1998 paper (ReLU, max-pooling,
a full C3 doubled into two branches, a linear output) are the original's, kept on purpose.

Deviation from the original: it ends with LogSoftmax inside the model; we return the logits.
Under cross-entropy the two are the same (cross_entropy = nll_loss of log_softmax), and the
model stays free of any one loss.
"""

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from lenet5.models.layers import Staged


class TwinBranches(nn.Module):
    """The original's C3: its c2_1 and c2_2 blocks run side by side on S2 and are summed.

    Each branch pools on its own before the sum, and max(a) + max(b) is not max(a + b), so the
    sum has to come after the pooling to reproduce the original: this stage's output is
    already subsampled (N x 16 x 5 x 5), and the twin's s4 stage is the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size),  # N x 16 x 10 x 10
                nn.ReLU(),
                nn.MaxPool2d(2),  # N x 16 x 5 x 5
            )
            for _ in range(2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return sum(branch(x) for branch in self.branches)  # N x 16 x 5 x 5


class Twin(Staged):
    """activatedgeek/LeNet-5's network, with the paper's layer names (and logits out)."""

    def __init__(self) -> None:
        super().__init__()
        k = 5
        c3_maps, c5_units, f6_units, classes = 16, 120, 84, 10

        self.c1 = nn.Sequential(nn.Conv2d(1, 6, k), nn.ReLU())  # N x 6 x 28 x 28
        self.s2 = nn.MaxPool2d(2)  # N x 6 x 14 x 14
        self.c3 = TwinBranches(6, c3_maps, k)  # N x 16 x 5 x 5 (pooled inside each branch)
        # The pooling already happened per branch inside c3; an identity keeps the seven
        # stage names uniform across the package's networks.
        self.s4 = nn.Identity()  # N x 16 x 5 x 5
        self.c5 = nn.Sequential(nn.Conv2d(c3_maps, c5_units, k), nn.ReLU())  # N x 120 x 1 x 1
        self.f6 = nn.Sequential(
            nn.Flatten(),  # N x 120
            nn.Linear(c5_units, f6_units),  # N x 84
            nn.ReLU(),
        )
        self.output = nn.Linear(f6_units, classes)  # N x 10
        # Channels-last (NHWC) weights and activations: the same arithmetic, and oneDNN's NHWC
        # kernels train this network ~1.2x faster on a CPU (README, Performance).
        self.to(memory_format=torch.channels_last)

    def forward_stages(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        """Staged.forward_stages on a channels-last copy of x (free for one input map)."""
        yield from super().forward_stages(x.contiguous(memory_format=torch.channels_last))
