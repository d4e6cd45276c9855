"""Training criteria as functions of (scores, labels) returning per-sample losses.

Every network here returns scores whose argmax predicts; the classic network's scores are the
negated RBF penalties, y_i = -score_i. The paper's two criteria (section II-C) are written on
those penalties:

- plain (eq. 8): E = y_D, the penalty of the correct class D. It can collapse (all F6 outputs
  equal to every prototype's mean makes every penalty small), which the fixed, distinct +1/-1
  prototypes prevent.
- MAP (eq. 9): E = y_D + log(exp(-j) + sum_i exp(-y_i)). The second term pulls the wrong
  classes' penalties up, but stops pulling once they are well above j, the penalty of a
  "none of these" class.

Cross-entropy on the scores is the MAP criterion with j -> infinity (exp(-j) -> 0): log-softmax
of -y. For twin and modern, whose scores are logits, cross-entropy is the usual choice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Loss = Callable[[Tensor, Tensor], Tensor]

# The paper leaves j unspecified. With j = 0.1 the "none of these" class weighs about as much as
# a correct class with a penalty of 0.1, so wrong penalties stop being pushed once they are a few
# units above the correct one; the F6 outputs, bounded by 1.7159, could not push them much
# further anyway. `map_loss(j=...)` and `--map-j` change it.
MAP_J = 0.1


def plain(scores: Tensor, labels: Tensor) -> Tensor:
    """Eq. 8: the correct class's penalty y_D = -score_D."""
    return -scores.gather(1, labels.unsqueeze(1)).squeeze(1)  # B


def map_loss(j: float = MAP_J) -> Loss:
    """Eq. 9 with constant j: y_D + log(exp(-j) + sum_i exp(-y_i)), y = -scores."""

    def criterion(scores: Tensor, labels: Tensor) -> Tensor:
        none_of_these = scores.new_full((scores.shape[0], 1), -j)  # B x 1, the "-y" of j
        log_partition = torch.logsumexp(torch.cat([scores, none_of_these], dim=1), dim=1)  # B
        return plain(scores, labels) + log_partition

    criterion.__name__ = f"map_j{j:g}"
    return criterion


def map_probabilities(scores: Tensor, j: float = MAP_J) -> Tensor:
    """Class probabilities implied by eq. 9: exp(-y_i) / (exp(-j) + sum_k exp(-y_k)).

    They sum to less than one; the rest is the probability of "none of these"."""
    none_of_these = scores.new_full((scores.shape[0], 1), -j)
    return torch.softmax(torch.cat([scores, none_of_these], dim=1), dim=1)[:, :-1]
