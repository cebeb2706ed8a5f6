"""Grouped image-text matching losses: pooling, the loss against explicitly built logits, and metrics on hand-made
cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from vlp.modeling_vlp.losses_vlp import (
    GITM_NONE,
    grouped_matching_cross_entropy,
    grouped_matching_logits,
    grouped_matching_loss,
    grouped_matching_metrics,
    pool_cells,
    pool_segments,
    summarize_grouped_matching,
)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_pool_segments_and_cells_are_means_over_their_ids():
    hidden = randn(2, 7, 4)
    segment_ids = torch.tensor([[0, 1, 1, 2, 2, 2, 0], [0, 2, 2, 0, 0, 0, 0]])
    pooled = pool_segments(hidden, segment_ids, 3)
    assert pooled.shape == (2, 3, 4)
    torch.testing.assert_close(pooled[0, 0], hidden[0, 1:3].mean(0))
    torch.testing.assert_close(pooled[0, 1], hidden[0, 3:6].mean(0))
    torch.testing.assert_close(pooled[1, 1], hidden[1, 1:3].mean(0))
    assert pooled[1, 0].abs().sum() == 0 and pooled[:, 2].abs().sum() == 0  # absent segments pool to zeros
    cell_ids = torch.tensor([[0, 1, 0, 1, -1, -1, 2], [1, 1, 1, 1, 0, 0, -1]])
    cells = pool_cells(hidden, cell_ids, 3)
    torch.testing.assert_close(cells[0, 0], hidden[0, [0, 2]].mean(0))
    torch.testing.assert_close(cells[0, 2], hidden[0, 6])
    torch.testing.assert_close(cells[1, 1], hidden[1, :4].mean(0))
    assert cells[1, 2].abs().sum() == 0
    with pytest.raises(ValueError, match="must match"):
        pool_cells(hidden, cell_ids[:, :3], 3)


def reference_loss(segments, cells, none, targets, cell_mask, scale):
    """Logits built one entry at a time, then torch's cross_entropy on the valid segments only (none = column K)."""
    batch, m, _ = segments.shape
    k = cells.shape[1]
    rows, labels = [], []
    for b in range(batch):
        for j in range(m):
            if targets[b, j] == -100:
                continue
            row = [float(scale * segments[b, j] @ cells[b, c]) if cell_mask[b, c] else -math.inf for c in range(k)]
            row.append(float(none[b, j]))
            rows.append(row)
            labels.append(k if targets[b, j] == GITM_NONE else int(targets[b, j]))
    logits = torch.tensor(rows, dtype=torch.float64)
    return F.cross_entropy(logits, torch.tensor(labels), reduction="sum").item(), len(labels)


def test_loss_matches_explicit_logits_and_cross_entropy():
    segments, cells, none = randn(3, 4, 8, seed=1), randn(3, 5, 8, seed=2), randn(3, 4, seed=3)
    targets = torch.tensor([[2, GITM_NONE, 0, -100], [GITM_NONE, 1, -100, -100], [4, 3, 2, GITM_NONE]])
    cell_mask = torch.tensor([[True] * 5, [True, True, True, False, False], [True] * 5])
    summed, count = grouped_matching_loss(segments, cells, none, targets, cell_mask, scale=0.5)
    expected, expected_count = reference_loss(segments, cells, none, targets, cell_mask, 0.5)
    assert count.item() == expected_count == 9 and count.dtype == torch.long
    assert summed.item() == pytest.approx(expected, rel=1e-5)


def test_scalar_none_logit_is_learned_and_padded_segments_get_no_gradient():
    segments = randn(2, 3, 4, seed=4).requires_grad_()
    cells = randn(2, 2, 4, seed=5).requires_grad_()
    none = torch.nn.Parameter(torch.tensor(0.3))
    targets = torch.tensor([[GITM_NONE, 0, -100], [1, GITM_NONE, GITM_NONE]])
    summed, count = grouped_matching_loss(segments, cells, none, targets)
    expected, _ = reference_loss(
        segments.detach(), cells.detach(), torch.full((2, 3), 0.3), targets, torch.ones(2, 2, dtype=torch.bool), 1.0
    )
    assert count.item() == 5 and summed.item() == pytest.approx(expected, rel=1e-5)
    summed.backward()
    assert none.grad is not None and none.grad.item() != 0
    assert segments.grad[0, 2].abs().sum() == 0 and segments.grad[0, 0].abs().sum() > 0


def test_logits_layout_and_bad_targets():
    segments, cells = torch.eye(2)[None], torch.eye(2)[None] * 2
    logits = grouped_matching_logits(segments, cells, torch.tensor([[5.0, -1.0]]), scale=3.0)
    torch.testing.assert_close(logits, torch.tensor([[[6.0, 0.0, 5.0], [0.0, 6.0, -1.0]]]))
    with pytest.raises(ValueError, match=r"targets must be a cell in \[0, 2\)"):
        grouped_matching_cross_entropy(logits, torch.tensor([[2, 0]]))
    with pytest.raises(ValueError, match="targets must be"):
        grouped_matching_cross_entropy(logits, torch.tensor([[-2, 0]]))


def test_metrics_on_a_hand_made_batch():
    # 2 cells + none (column 2). Predictions (argmax): row 0 -> [0, none, 1]; row 1 -> [none, 0]; row 2 -> [1].
    logits = torch.tensor(
        [
            [[5.0, 0.0, 1.0], [0.0, 0.0, 3.0], [0.0, 2.0, 1.0]],
            [[0.0, 0.0, 4.0], [2.0, 1.0, 0.0], [9.0, 0.0, 0.0]],
            [[0.0, 7.0, 0.0], [0.0, 0.0, 9.0], [0.0, 0.0, 9.0]],
        ]
    )
    targets = torch.tensor(
        [
            [0, GITM_NONE, 1],  # all right: exact
            [GITM_NONE, 1, -100],  # none right, second wrong (predicted 0)
            [1, -100, -100],  # right: exact
        ]
    )
    counts = grouped_matching_metrics(logits, targets)
    assert {key: int(value) for key, value in counts.items()} == {
        "segments": 6,
        "correct": 5,
        "none_predicted": 2,
        "none_actual": 2,
        "none_correct": 2,
        "groups": 3,
        "groups_exact": 2,
    }
    summary = summarize_grouped_matching(counts)
    assert summary == {"accuracy": 5 / 6, "none_precision": 1.0, "none_recall": 1.0, "exact_match": 2 / 3}
    # a wrong 'none' prediction lowers precision; a missed 'none' lowers recall
    targets2 = torch.tensor([[0, 0, 1], [GITM_NONE, 1, GITM_NONE], [-100, -100, -100]])
    counts2 = grouped_matching_metrics(logits, targets2)
    summary2 = summarize_grouped_matching(counts2)
    assert int(counts2["groups"]) == 2 and int(counts2["groups_exact"]) == 0
    assert summary2["none_precision"] == 0.5 and summary2["none_recall"] == 0.5
    total = {key: counts[key] + counts2[key] for key in counts}  # counts add up over batches
    assert summarize_grouped_matching(total)["accuracy"] == (5 + 3) / (6 + 6)
    assert math.isnan(summarize_grouped_matching({key: torch.tensor(0) for key in counts})["accuracy"])
