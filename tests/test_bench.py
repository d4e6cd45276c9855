"""The benchmarks' own pieces that a figure depends on (bench/ is on pytest's pythonpath)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench_throughput import ReferenceLeNet5
from lenet5.models import build


def test_reference_network_is_the_twin_function():
    """The reference side's network, given the twin's weights, computes log_softmax(twin)."""
    torch.manual_seed(0)
    twin, reference = build("twin"), ReferenceLeNet5()
    pairs = [
        (reference.c1[0], twin.c1[0]),
        (reference.c2_1[0], twin.c3.branches[0][0]),
        (reference.c2_2[0], twin.c3.branches[1][0]),
        (reference.c3[0], twin.c5[0]),
        (reference.f4[0], twin.f6[1]),
        (reference.f5[0], twin.output),
    ]
    for mine, theirs in pairs:
        mine.load_state_dict(theirs.state_dict())
    x = torch.rand(8, 1, 32, 32)
    torch.testing.assert_close(reference(x), F.log_softmax(twin(x), dim=1))
    count = sum(p.numel() for p in reference.parameters())
    assert count == sum(p.numel() for p in twin.parameters())
