"""Pretraining losses: ITC (with its distributed gather), hard negatives, IPOT / WRA and MIM, each checked against an
independent reference (explicit loops, POT's exact solver, a Conv2d, scipy's chi-square test)."""

import math
import os
import sys

import numpy as np
import ot
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from launch import run as launch_run
from repo_paths import TESTS

from vlp.modeling_vlp.losses_vlp import (
    clamp_logit_scale,
    contrastive_loss,
    cosine_cost,
    ema_update,
    ipot,
    mim_loss,
    mim_pixel_targets,
    optimal_transport_distance,
    patchify,
    sample_hard_negatives,
    similarity_matrix,
    unpatchify,
    wra_loss,
)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------- ITC


def reference_itc(text, image, scale):
    """The symmetric InfoNCE mean, written with explicit loops over rows and columns in Python floats."""
    text, image = text.tolist(), image.tolist()

    def cos(u, v):
        dot = sum(a * b for a, b in zip(u, v))
        return dot / math.sqrt(sum(a * a for a in u)) / math.sqrt(sum(b * b for b in v))

    n = len(text)
    sim = [[scale * cos(text[i], image[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        row = math.log(sum(math.exp(sim[i][j]) for j in range(n))) - sim[i][i]
        column = math.log(sum(math.exp(sim[j][i]) for j in range(n))) - sim[i][i]
        total += (row + column) / 2
    return total / n


def test_itc_matches_explicit_loops():
    text, image = randn(5, 7, seed=1), randn(5, 7, seed=2)
    summed, count = contrastive_loss(text, image, torch.tensor(9.0))
    assert count.item() == 5 and count.dtype == torch.long
    assert (summed / count).item() == pytest.approx(reference_itc(text, image, 9.0), rel=1e-5)
    # aligned pairs score lower than shuffled ones
    aligned, _ = contrastive_loss(text, text + 0.01 * image, torch.tensor(9.0))
    assert aligned < summed


def test_itc_true_pairs_leave_the_denominators_in_the_right_orientation():
    """Text 1 is also true of image 0 (matches[1, 0]): text 1's softmax over images and image 0's softmax over texts
    leave that pair out; nothing else changes, and the pair gets no gradient."""
    text, image = randn(3, 6, seed=3), randn(3, 6, seed=4)
    text.requires_grad_(True)
    scale = 5.0
    matches = torch.eye(3, dtype=torch.bool)
    matches[1, 0] = True
    s = scale * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T  # (texts, images)
    rows = [-s[t, t] + torch.logsumexp(s[t, [i for i in range(3) if i == t or not matches[t, i]]], 0) for t in range(3)]
    columns = [
        -s[i, i] + torch.logsumexp(s[[t for t in range(3) if t == i or not matches[t, i]], i], 0) for i in range(3)
    ]
    expected = (sum(rows) + sum(columns)) / 2
    summed, count = contrastive_loss(text, image, torch.tensor(scale), matches=matches)
    assert summed.item() == pytest.approx(expected.item(), rel=1e-5) and count.item() == 3
    plain, _ = contrastive_loss(text, image, torch.tensor(scale))
    assert summed.item() < plain.item()  # a positive was punished before
    # The other orientation (text 0 true of image 1) is a different loss: the matrix is read as texts x images.
    swapped, _ = contrastive_loss(text, image, torch.tensor(scale), matches=matches.T.contiguous())
    assert swapped.item() != pytest.approx(summed.item(), rel=1e-4)
    with pytest.raises(ValueError, match=r"matches must be \(texts, images\)"):
        contrastive_loss(text, image, torch.tensor(scale), matches=torch.eye(2, dtype=torch.bool))


def test_false_negative_share_counts_the_true_off_diagonal_pairs():
    from vlp.modeling_vlp.losses_vlp import false_negative_share

    matches = torch.eye(4, dtype=torch.bool)
    matches[0, 1] = matches[2, 3] = matches[3, 0] = True
    assert false_negative_share(matches) == pytest.approx(3 / 12)
    assert false_negative_share(torch.eye(1, dtype=torch.bool)) == 0.0


def test_itc_gradcheck_float64():
    text = randn(3, 4, seed=3, dtype=torch.float64).requires_grad_()
    image = randn(3, 4, seed=4, dtype=torch.float64).requires_grad_()
    scale = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)

    def mean_loss(t, i, s):
        summed, count = contrastive_loss(t, i, s)
        return summed / count

    assert torch.autograd.gradcheck(mean_loss, (text, image, scale), eps=1e-6, atol=1e-7)


def test_similarity_matrix_is_scaled_cosine_in_float32():
    text, image = randn(4, 6, seed=5), randn(3, 6, seed=6)
    expected = 2.5 * F.cosine_similarity(text[:, None], image[None], dim=-1)
    sim = similarity_matrix(text, image, 2.5)
    assert sim.shape == (4, 3) and torch.allclose(sim, expected, atol=1e-6)
    assert torch.allclose(similarity_matrix(3 * text, 0.1 * image, 2.5), sim, atol=1e-6)
    assert similarity_matrix(text.bfloat16(), image.bfloat16(), 2.5).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = similarity_matrix(text, image, 2.5)
    assert under_autocast.dtype == torch.float32 and torch.allclose(under_autocast, sim, atol=1e-6)


def test_itc_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="3 text features but 2 image features"):
        contrastive_loss(randn(3, 4), randn(2, 4), 1.0)


def test_clamp_logit_scale():
    inside = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    assert clamp_logit_scale(inside, 0.01, 0.5).item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert clamp_logit_scale(torch.tensor(10.0), 0.01, 0.5).item() == pytest.approx(100.0, rel=1e-5)
    assert clamp_logit_scale(torch.tensor(-10.0), 0.01, 0.5).item() == pytest.approx(2.0, rel=1e-5)
    clamp_logit_scale(inside, 0.01, 0.5).backward()
    assert inside.grad.item() == pytest.approx(1 / 0.07, rel=1e-5)
    outside = torch.tensor(10.0, requires_grad=True)
    clamp_logit_scale(outside, 0.01, 0.5).backward()
    assert outside.grad.item() == 0.0
    with pytest.raises(ValueError, match="0 < min <= max"):
        clamp_logit_scale(inside, 0.5, 0.01)


def test_the_temperature_moves_under_gradient_and_never_leaves_its_bounds():
    """Pushed past its upper logit-scale bound for several steps, the parameter stays at the bound (clamped in place
    after each step); pushed back, it moves at once: the gradient still reaches it at the bound."""
    from vlp.modeling_vlp import VLPConfig
    from vlp.modeling_vlp.modeling_vlp import VLPContrastiveHead

    config = VLPConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        contrastive_temperature=0.07,
        contrastive_temperature_range=(0.05, 0.1),
    )
    head = VLPContrastiveHead(config)
    low, high = math.log(1 / 0.1), math.log(1 / 0.05)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.01)
    seen = []
    for direction in [1.0] * 6 + [-1.0]:  # six steps that want a colder temperature, then one that wants warmer
        optimizer.zero_grad()
        (-direction * head.logit_scale()).backward()
        assert head.log_scale.grad.abs().item() > 0, "the gradient must reach the parameter at the bound"
        optimizer.step()
        head.clamp_()
        seen.append(head.log_scale.item())
    assert all(low - 1e-6 <= value <= high + 1e-6 for value in seen), seen
    assert seen[5] == pytest.approx(high, abs=1e-6)  # held at the bound, not beyond it
    assert seen[6] == pytest.approx(high - 0.01 * 20.0, abs=1e-5)  # back by lr times d(scale)/d(log scale) = 20


@pytest.mark.distributed
@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_itc_distributed_equals_full_batch(tmp_path):
    """Two gloo processes, each with half the batch: the loss and, after DDP's averaging, the parameter gradients
    equal those of one process on the full batch."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --standalone: the launcher binds its own free rendezvous port (no race on a port chosen beforehand).
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        os.path.join(TESTS, "distributed_itc_check.py"),
        str(tmp_path),
    ]
    result = launch_run(command, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-6000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    world = ranks[0]["world"]
    assert world == 2

    # the same computation on the full batch, in this (non-distributed) process
    init, text_inputs, image_inputs = ranks[0]["initial"], ranks[0]["text_inputs"], ranks[0]["image_inputs"]
    params = {name: value.clone().requires_grad_() for name, value in init.items()}
    text = text_inputs @ params["text.weight"].T + params["text.bias"]
    image = image_inputs @ params["image.weight"].T + params["image.bias"]
    text.retain_grad()
    image.retain_grad()
    summed, count = contrastive_loss(text, image, params["log_scale"].exp())
    full = summed / count
    full.backward()
    assert full.item() == pytest.approx(
        reference_itc(text.detach(), image.detach(), math.exp(init["log_scale"])), rel=1e-10
    )

    # loss: the per-process normalized losses average to the full loss, and the summed parts add up to it
    assert sum(r["count"].item() for r in ranks) == count.item()
    assert np.mean([r["loss"].item() for r in ranks]) == pytest.approx(full.item(), rel=1e-5)
    assert sum(r["summed"].item() for r in ranks) / count.item() == pytest.approx(full.item(), rel=1e-5)
    # true pairs across processes leave the denominators as in one process; a local matrix covers its own pairs only
    from distributed_itc_check import global_matches

    matches = global_matches()
    with torch.no_grad():
        matched = contrastive_loss(text, image, params["log_scale"].exp(), matches=matches)[0]
        block = torch.block_diag(matches[:4, :4], matches[4:, 4:])
        local = contrastive_loss(text, image, params["log_scale"].exp(), matches=block)[0]
    assert sum(r["matched"].item() for r in ranks) == pytest.approx(matched.item(), rel=1e-10)
    assert sum(r["local_matched"].item() for r in ranks) == pytest.approx(local.item(), rel=1e-10)
    assert matched.item() != pytest.approx(local.item(), rel=1e-6)  # the pairs across processes count
    # gradients: DDP's average over processes is the full-batch gradient, on every process
    for rank in ranks:
        for name, grad in rank["param_grads"].items():
            torch.testing.assert_close(grad, params[name].grad, rtol=1e-5, atol=1e-12, msg=name)
    # each process holds world * dL/d(own features): its own rows' terms plus those other processes sent back
    torch.testing.assert_close(torch.cat([r["text_grad"] for r in ranks]) / world, text.grad, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(torch.cat([r["image_grad"] for r in ranks]) / world, image.grad, rtol=1e-5, atol=1e-12)


# ------------------------------------------------------------------------------------------------------ hard negatives


def excluded_softmax(similarity, exclude):
    """Draw probabilities written with numpy: exp(s) over the allowed columns, normalized per row."""
    weights = np.where(exclude, 0.0, np.exp(similarity - similarity.max(axis=1, keepdims=True)))
    return weights / weights.sum(axis=1, keepdims=True)


def test_hard_negatives_never_draw_the_positive():
    similarity = randn(8, 8, seed=7) + 20 * torch.eye(8)  # the positives would win almost every draw
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        drawn = sample_hard_negatives(similarity, generator)
        assert drawn.shape == (8,) and drawn.dtype == torch.long
        assert not (drawn == torch.arange(8)).any()
        drawn_back = sample_hard_negatives(similarity.T, generator)
        assert not (drawn_back == torch.arange(8)).any()


def test_hard_negative_frequencies_match_softmax_without_excluded():
    """20000 draws per row against softmax over the allowed columns: chi-square test, p > 0.001."""
    similarity = torch.tensor(
        [
            [2.0, 0.5, -1.0, 1.0, 0.0, 3.0],
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            [5.0, -2.0, 1.0, 1.0, 0.5, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    exclude = torch.tensor(
        [
            [True, False, False, False, False, True],  # the two most similar columns are excluded
            [False, True, False, False, False, False],
            [True, False, True, False, False, False],
            [False, False, False, True, True, True],
        ]
    )
    draws = 20000
    drawn = sample_hard_negatives(
        similarity.repeat(draws, 1), torch.Generator().manual_seed(1), exclude=exclude.repeat(draws, 1)
    ).view(draws, 4)
    probabilities = excluded_softmax(similarity.numpy().astype(np.float64), exclude.numpy())
    for row in range(4):
        observed = np.bincount(drawn[:, row].numpy(), minlength=6)
        assert observed[exclude[row].numpy()].sum() == 0
        allowed = ~exclude[row].numpy()
        p_value = scipy.stats.chisquare(observed[allowed], draws * probabilities[row, allowed]).pvalue
        assert p_value > 1e-3, (row, observed, draws * probabilities[row])


def test_hard_negative_frequencies_with_the_default_diagonal():
    similarity = torch.tensor([[4.0, 1.0, 0.0], [1.0, 4.0, -1.0], [0.5, 0.5, 4.0]])
    generator = torch.Generator().manual_seed(2)
    drawn = torch.stack([sample_hard_negatives(similarity, generator) for _ in range(3000)])
    probabilities = excluded_softmax(similarity.numpy().astype(np.float64), np.eye(3, dtype=bool))
    for row in range(3):
        observed = np.bincount(drawn[:, row].numpy(), minlength=3)
        assert observed[row] == 0
        allowed = np.arange(3) != row
        assert scipy.stats.chisquare(observed[allowed], 3000 * probabilities[row, allowed]).pvalue > 1e-3


def test_hard_negatives_are_deterministic_given_the_generator():
    similarity = randn(64, 64, seed=8)
    first = sample_hard_negatives(similarity, torch.Generator().manual_seed(5))
    assert torch.equal(first, sample_hard_negatives(similarity, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, sample_hard_negatives(similarity, torch.Generator().manual_seed(6)))


def test_hard_negatives_raise_when_a_row_has_no_candidate():
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        sample_hard_negatives(torch.zeros(1, 1))
    exclude = torch.zeros(3, 4, dtype=torch.bool)
    exclude[1] = True
    with pytest.raises(ValueError, match=r"rows \[1\] .* no candidate"):
        sample_hard_negatives(torch.zeros(3, 4), exclude=exclude)
    with pytest.raises(ValueError, match="exclude has shape"):
        sample_hard_negatives(torch.zeros(3, 4), exclude=torch.zeros(4, 3, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------------- IPOT / WRA


def random_problems(count=20, seed=0):
    """Random OT problems: uniform marginals, costs uniform in [0, 1]."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        rows, cols = rng.integers(3, 12, size=2)
        yield np.full(rows, 1 / rows), np.full(cols, 1 / cols), rng.random((rows, cols))


def ipot_plan(cost, iterations=50, beta=0.5):
    return ipot(torch.tensor(cost, dtype=torch.float32)[None], beta=beta, iterations=iterations)[0].double().numpy()


def test_ipot_approaches_exact_ot():
    """<C, T> of IPOT (float32, beta 0.5) against POT's exact emd2 on 20 problems.

    IPOT converges to the exact plan as iterations grow (Xie et al., 2018). At UNITER's 50 iterations the relative
    error is about 1e-3 typically; square problems, whose exact plan is a permutation, converge slowest (largest seen
    1.7e-2 over 80 such problems), hence a median bound of 3e-3 and a worst-case bound of 2.5e-2; at 500 iterations
    all are within 1e-3. A single entropic solve at the same beta (what IPOT would be without its proximal steps) is
    far off, so the bounds tell the two apart.
    """
    errors = {10: [], 50: [], 500: []}
    for a, b, cost in random_problems():
        exact = ot.emd2(a, b, cost)
        for iterations in errors:
            errors[iterations].append(abs((ipot_plan(cost, iterations) * cost).sum() - exact) / exact)
        plan = ipot_plan(cost)
        np.testing.assert_allclose(plan.sum(axis=1), a, atol=2e-3)
        np.testing.assert_allclose(plan.sum(axis=0), b, atol=1e-5)
        assert abs(ot.sinkhorn2(a, b, cost, reg=0.5) - exact) / exact > 0.05
    assert np.median(errors[50]) < 3e-3 and max(errors[50]) < 2.5e-2
    assert max(errors[500]) < 1e-3
    assert np.mean(errors[10]) > np.mean(errors[50]) > 10 * np.mean(errors[500])


def test_ipot_padding_gives_zero_mass_and_matches_the_unpadded_problem():
    problems = list(random_problems(count=3, seed=1))
    rows, cols = max(len(a) for a, _, _ in problems) + 2, max(len(b) for _, b, _ in problems) + 1
    padded = torch.full((3, rows, cols), float("nan"))
    x_mask, y_mask = torch.zeros(3, rows, dtype=torch.long), torch.zeros(3, cols, dtype=torch.long)
    for index, (a, b, cost) in enumerate(problems):
        padded[index, : len(a), : len(b)] = torch.tensor(cost)
        x_mask[index, : len(a)], y_mask[index, : len(b)] = 1, 1
    plans = ipot(padded, x_mask, y_mask)
    assert torch.isfinite(plans).all()
    for index, (a, b, cost) in enumerate(problems):
        valid = plans[index, : len(a), : len(b)]
        assert plans[index].sum().item() == pytest.approx(valid.sum().item(), abs=1e-7)  # padding holds no mass
        np.testing.assert_allclose(valid.numpy(), ipot_plan(cost), rtol=1e-5, atol=1e-7)


def test_ipot_edge_cases_and_precision():
    _, _, cost = next(random_problems(count=1, seed=2))
    exact_cost = torch.tensor(cost, dtype=torch.float64)[None]
    # a constant shift of the costs changes nothing (and exp(-1000 / beta) would underflow without the row shift)
    torch.testing.assert_close(ipot(exact_cost + 1000.0), ipot(exact_cost), rtol=1e-6, atol=1e-12)
    cost = exact_cost.float()
    plan = ipot(cost)
    # half-precision input and autocast: computed in float32
    assert ipot(cost.bfloat16()).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(ipot(cost), plan)
    # an item whose text is all padding gets a zero plan, not NaN
    empty = ipot(cost, x_mask=torch.zeros(1, cost.shape[1]))
    assert torch.equal(empty, torch.zeros_like(empty))
    with pytest.raises(ValueError, match="beta > 0"):
        ipot(cost, beta=0.0)


def test_optimal_transport_distance_uses_a_constant_plan_and_respects_masks():
    text, image = randn(2, 5, 8, seed=9, dtype=torch.float64), randn(2, 6, 8, seed=10, dtype=torch.float64)
    text_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    image_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    text.requires_grad_()
    distance = optimal_transport_distance(text, image, text_mask, image_mask)
    assert distance.shape == (2,)
    # reference: cosine costs written with cosine_similarity, the plan from ipot held fixed
    leaf = text.detach().clone().requires_grad_()
    cost = 1 - F.cosine_similarity(leaf[:, :, None], image[:, None], dim=-1)
    plan = ipot(cost.detach(), text_mask, image_mask)
    expected = (cost * plan).sum(dim=(1, 2))
    torch.testing.assert_close(distance, expected)
    distance.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(text.grad, leaf.grad)
    assert text.grad[1, 3:].abs().max() == 0  # padded words get no gradient
    # padding equals trimming
    trimmed = optimal_transport_distance(text[1:, :3].detach(), image[1:], None, None)
    torch.testing.assert_close(distance[1:].detach(), trimmed)


def test_optimal_transport_distance_is_small_for_aligned_sets():
    """When the patches are the words in another order, every word has a patch at cosine distance 0."""
    words = randn(1, 6, 16, seed=11)
    aligned = optimal_transport_distance(words, words[:, torch.randperm(6, generator=torch.Generator().manual_seed(0))])
    other = optimal_transport_distance(words, randn(1, 6, 16, seed=12))
    assert aligned.item() < 1e-3 < other.item()
    assert aligned.dtype == torch.float32 and cosine_cost(words, words).diagonal(dim1=1, dim2=2).abs().max() < 1e-6


def test_wra_loss_follows_uniter():
    distance = torch.tensor([0.3, 0.7, 0.2, 0.9, 5.0])
    labels = torch.tensor([1, 0, 1, 0, -100])
    summed, count = wra_loss(distance, labels)
    assert summed.item() == pytest.approx((0.3 + 0.2) - (0.7 + 0.9))
    assert count.item() == 4


# --------------------------------------------------------------------------------------------------------------- MIM


def test_patchify_order_matches_a_pixel_picking_conv2d():
    """Output k of the conv picks pixel (i, j) of channel c, k = (i * p + j) * C + c, so its flattened output is the
    patch sequence the model's patch embedding sees."""
    patch, channels = 4, 3
    pixels = randn(2, channels, 8, 12, seed=13)
    conv = torch.nn.Conv2d(channels, patch * patch * channels, patch, patch, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for i in range(patch):
            for j in range(patch):
                for c in range(channels):
                    conv.weight[(i * patch + j) * channels + c, c, i, j] = 1.0
    expected = conv(pixels).flatten(2).transpose(1, 2)
    patches = patchify(pixels, patch)
    assert patches.shape == (2, 2 * 3, patch * patch * channels)
    torch.testing.assert_close(patches, expected)
    torch.testing.assert_close(unpatchify(patches, patch, 2, 3), pixels)
    with pytest.raises(ValueError, match="8x10"):
        patchify(pixels[..., :10], patch)


def test_norm_pix_targets_are_standardized_per_patch():
    pixels = 3 * randn(2, 3, 16, 16, seed=14) + 1
    targets = mim_pixel_targets(pixels, 8)
    torch.testing.assert_close(targets.mean(dim=-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.var(dim=-1), torch.ones(2, 4), atol=1e-4, rtol=0)
    torch.testing.assert_close(mim_pixel_targets(pixels, 8, norm_pix=False), patchify(pixels, 8))
    flat = torch.zeros(1, 3, 8, 8)  # a constant (e.g. padded) patch gives zeros, not NaN
    assert torch.equal(mim_pixel_targets(flat, 8), torch.zeros(1, 1, 192))


@pytest.mark.parametrize("kind", ["l2", "smooth_l1", "cosine"])
def test_mim_loss_counts_masked_patches_only(kind):
    predictions, targets = randn(2, 5, 6, seed=15), randn(2, 5, 6, seed=16)
    masked = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)

    def per_patch(p, t):
        if kind == "l2":
            return sum((a - b) ** 2 for a, b in zip(p, t)) / len(p)
        if kind == "smooth_l1":
            return sum(0.5 * (a - b) ** 2 if abs(a - b) < 1 else abs(a - b) - 0.5 for a, b in zip(p, t)) / len(p)
        dot = sum(a * b for a, b in zip(p, t))
        return 1 - dot / math.sqrt(sum(a * a for a in p)) / math.sqrt(sum(b * b for b in t))

    expected = sum(
        per_patch(predictions[b, n].tolist(), targets[b, n].tolist()) for b, n in zip(*masked.nonzero(as_tuple=True))
    )
    summed, count = mim_loss(predictions, targets, masked, kind)
    assert count.item() == 4 and summed.item() == pytest.approx(expected, rel=1e-5)
    changed = predictions.clone()
    changed[~masked] = 100.0
    assert mim_loss(changed, targets, masked, kind)[0].item() == pytest.approx(summed.item(), rel=1e-6)
    # predictions computed at the masked patches only give the same loss
    assert mim_loss(predictions[masked], targets, masked, kind)[0].item() == pytest.approx(summed.item(), rel=1e-6)
    # gradients reach the masked predictions only; targets are constants
    leaf, target_leaf = predictions.clone().requires_grad_(), targets.clone().requires_grad_()
    mim_loss(leaf, target_leaf, masked, kind)[0].backward()
    assert leaf.grad[~masked].abs().max() == 0 and leaf.grad[masked].abs().min() > 0
    assert target_leaf.grad is None


def test_mim_loss_rejects_bad_arguments():
    predictions, masked = randn(2, 5, 6), torch.zeros(2, 5, dtype=torch.bool)
    masked[0, 0] = True
    with pytest.raises(ValueError, match="'l1'"):
        mim_loss(predictions, predictions, masked, "l1")
    with pytest.raises(ValueError, match="1 masked patches"):
        mim_loss(predictions[0], predictions, masked)


def test_ema_update():
    teacher = [randn(3, 4, seed=17), randn(5, seed=18, dtype=torch.float64)]
    student = [randn(3, 4, seed=19), randn(5, seed=20)]
    expected = [0.9 * t + 0.1 * s.to(t.dtype) for t, s in zip(teacher, student)]
    before = [t.data_ptr() for t in teacher]
    ema_update(teacher, student, 0.9)
    for t, e in zip(teacher, expected):
        torch.testing.assert_close(t, e)
    assert [t.data_ptr() for t in teacher] == before  # in place
    copy = [torch.zeros(3)]
    ema_update(copy, [torch.ones(3)], 0.0)
    assert torch.equal(copy[0], torch.ones(3))
    module = torch.nn.Linear(2, 2)
    frozen = [p.detach().clone() for p in module.parameters()]
    ema_update(module.parameters(), [torch.zeros(2, 2), torch.zeros(2)], 1.0)
    assert all(torch.equal(p, f) for p, f in zip(module.parameters(), frozen))
    with pytest.raises(ValueError, match="momentum=1.5"):
        ema_update(teacher, student, 1.5)
    with pytest.raises(ValueError):
        ema_update(teacher, student[:1], 0.5)
