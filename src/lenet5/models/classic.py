"""LeNet-5 as published: LeCun, Bottou, Bengio and Haffner (1998), section II-B.

Seven layers on a 32x32 input: convolutions C1, C3, C5 and the trainable subsampling layers
S2, S4, each followed by the squashing function f(a) = 1.7159 tanh(2a/3); C3 wired by Table I;
84 fully connected F6 units; 10 Euclidean RBF output units whose fixed +1/-1 parameters draw
the digits as 7x12 bitmaps. 60,000 trainable parameters and 340,908 connections, as the paper
counts them; Appendix A's initialisation.

Deviations from the paper, all in form and none in arithmetic:
- `forward` returns the negated penalties, so that for every network in the package the largest
  score is the prediction; `penalties` returns the paper's y_i themselves.
- The RBF bitmaps below are our own drawing: the paper shows its set (Fig. 3) but does not list
  the digits' pixels.
- C3 runs as one dense convolution with zero kernels where Table I has no connection; the zero
  kernels are not parameters (see MaskedConv2d).
"""

import torch
from torch import Tensor, nn

from lenet5.models.layers import (
    EuclideanRBF,
    MaskedConv2d,
    Squash,
    Staged,
    Subsampling,
    init_paper_,
)

# Table I: the S2 maps (columns) that feed each C3 map (rows). Maps 0-5 read three contiguous
# maps, 6-11 four contiguous, 12-14 four non-contiguous, 15 all six; the paper's reasons are to
# keep the connections in bounds and to break the symmetry between maps.
C3_TABLE = (
    # S2: 0  1  2  3  4  5
    (1, 1, 1, 0, 0, 0),  # C3 map 0
    (0, 1, 1, 1, 0, 0),  # 1
    (0, 0, 1, 1, 1, 0),  # 2
    (0, 0, 0, 1, 1, 1),  # 3
    (1, 0, 0, 0, 1, 1),  # 4
    (1, 1, 0, 0, 0, 1),  # 5
    (1, 1, 1, 1, 0, 0),  # 6
    (0, 1, 1, 1, 1, 0),  # 7
    (0, 0, 1, 1, 1, 1),  # 8
    (1, 0, 0, 1, 1, 1),  # 9
    (1, 1, 0, 0, 1, 1),  # 10
    (1, 1, 1, 0, 0, 1),  # 11
    (1, 1, 0, 1, 1, 0),  # 12
    (0, 1, 1, 0, 1, 1),  # 13
    (1, 0, 1, 1, 0, 1),  # 14
    (1, 1, 1, 1, 1, 1),  # 15
)

# The output prototypes (section II-B, Fig. 3): each digit drawn on a 7-wide, 12-tall grid,
# '#' = +1 (ink: the input's foreground is positive too) and '.' = -1. Read row by row, a
# bitmap is the 84 weights of one RBF unit, one per F6 unit. Deviation: our own drawing, since
# the paper does not list its pixels; what matters is that every pair differs in many pixels.
DIGIT_BITMAPS = """
   0        1        2        3        4        5        6        7        8        9
.......  .......  .......  .......  .......  .......  .......  .......  .......  .......
..###..  ...##..  .#####.  .#####.  ....##.  #######  ..####.  #######  .#####.  .#####.
.##.##.  ..###..  ##...##  ##...##  ...###.  ##.....  .##....  .....##  ##...##  ##...##
##...##  .####..  .....##  .....##  ..####.  ##.....  ##.....  ....##.  ##...##  ##...##
##...##  ...##..  .....##  .....##  .##.##.  ######.  ##.....  ....##.  ##...##  ##...##
##...##  ...##..  ....##.  ..####.  ##..##.  .....##  ######.  ...##..  .#####.  ##...##
##...##  ...##..  ...##..  .....##  #######  .....##  ##...##  ...##..  ##...##  .######
##...##  ...##..  ..##...  .....##  ....##.  .....##  ##...##  ..##...  ##...##  .....##
##...##  ...##..  .##....  .....##  ....##.  .....##  ##...##  ..##...  ##...##  .....##
.##.##.  ...##..  ##.....  ##...##  ....##.  ##...##  ##...##  ..##...  ##...##  ....##.
..###..  .######  #######  .#####.  ....##.  .#####.  .#####.  ..##...  .#####.  .####..
.......  .......  .......  .......  .......  .......  .......  .......  .......  .......
"""
BITMAP_WIDTH, BITMAP_HEIGHT = 7, 12


def digit_bitmaps() -> list[tuple[str, ...]]:
    """The drawing above split per digit: ten tuples of twelve 7-character rows."""
    lines = DIGIT_BITMAPS.strip("\n").splitlines()[1:]  # drop the header of digit labels
    rows = [line.split() for line in lines]  # 12 rows x 10 digits
    return [tuple(row[digit] for row in rows) for digit in range(10)]


def digit_prototypes() -> Tensor:
    """The ten bitmaps as +1/-1 prototypes, 10 x 84, row-major, digit i in row i."""
    flat = ["".join(bitmap) for bitmap in digit_bitmaps()]
    return torch.tensor([[1.0 if pixel == "#" else -1.0 for pixel in row] for row in flat])


class Classic(Staged):
    """LeNet-5 exactly as in the 1998 paper (section II-B; Appendix A for f and the init)."""

    def __init__(self, init: str = "paper") -> None:
        """`init`: "paper" for Appendix A as printed (+-2.4/F), "sqrt" for +-2.4/sqrt(F)
        (a labelled deviation; see layers.INIT_RULES for why it exists)."""
        super().__init__()
        k = 5  # every convolution in LeNet-5 is 5x5
        c3_maps, c1_maps = len(C3_TABLE), len(C3_TABLE[0])
        c5_units, f6_units = 120, BITMAP_WIDTH * BITMAP_HEIGHT

        self.c1 = nn.Sequential()
        self.c1.conv = nn.Conv2d(1, c1_maps, k)  # N x 6 x 28 x 28
        self.c1.squash = Squash()

        self.s2 = nn.Sequential()
        self.s2.subsample = Subsampling(c1_maps)  # N x 6 x 14 x 14
        self.s2.squash = Squash()

        self.c3 = nn.Sequential()
        self.c3.conv = MaskedConv2d(C3_TABLE, k)  # N x 16 x 10 x 10
        self.c3.squash = Squash()

        self.s4 = nn.Sequential()
        self.s4.subsample = Subsampling(c3_maps)  # N x 16 x 5 x 5
        self.s4.squash = Squash()

        # A convolution, not a flatten + linear: on a 32x32 input its output is 1x1, on a
        # larger one it slides (the paper's point about replicating the network over a field).
        self.c5 = nn.Sequential()
        self.c5.conv = nn.Conv2d(c3_maps, c5_units, k)  # N x 120 x 1 x 1
        self.c5.squash = Squash()

        self.f6 = nn.Sequential()
        self.f6.flatten = nn.Flatten()  # N x 120
        self.f6.linear = nn.Linear(c5_units, f6_units)  # N x 84
        self.f6.squash = Squash()

        self.output = EuclideanRBF(digit_prototypes())  # N x 10

        for conv_or_linear in (self.c1.conv, self.c5.conv, self.f6.linear):
            init_paper_(conv_or_linear, init)
        for layer in (self.s2.subsample, self.c3.conv, self.s4.subsample):
            layer.reset_parameters(init)

    def penalties(self, x: Tensor) -> Tensor:
        """The ten RBF penalties y_i (eq. 7), N x 10, all >= 0; the smallest one predicts."""
        return super().forward(x)

    def forward(self, x: Tensor) -> Tensor:
        # Deviation in form: the paper's output is the penalties; we return their negatives as
        # scores so argmax predicts, as for every other network here.
        return -self.penalties(x)  # N x 10
