"""Pretraining losses of VLP beyond MLM/ITM: image-text contrast (ITC), hard negatives for matching (ALBEF),
word-region alignment by optimal transport (WRA, UNITER) and masked image modeling (MIM).

Convention: every loss returns `(summed, count)`, the loss summed over its units (pairs, masked patches) and the
number of units as a long tensor. The model divides `summed` by the count, or under data parallelism by the global
count divided by the number of processes (see `VLPForPreTraining`), so that the averaged gradients are those of the
global mean. Losses are computed in float32 (float64 inputs stay float64) with autocast turned off.

Data parallelism (ITC). With W processes of n pairs each (N = W n), process r scores its n texts against all N
images and its n images against all N texts, so its `summed` S_r covers its own rows and sum_r S_r / N is the
full-batch loss L. The gather keeps gradients: in backward, the all_gather sums for each process's features the
gradients that every process computed for them. With the loss S_r / n (n = N / W, the model's normalizer), process r
thus holds d(sum_r' S_r' / n)/dx_r = W dL/dx_r for its own features, and DDP's average of the parameter gradients
over the W processes is exactly dL/dθ. (A gather without gradients would drop the terms in which a process's features
are the columns of the other processes' rows.)

Hub-exported: this file is copied into saved checkpoints and imports only torch and the standard library.
"""

import math

import torch
import torch.nn.functional as F


def _promote(tensor):
    """The tensor in float32, or float64 if it is already: losses are not computed in half precision."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _full_precision(device):
    """A context that turns autocast off on `device`, so float32 operands stay float32."""
    return torch.autocast(device_type=device.type, enabled=False)


def _count(number, device):
    return torch.as_tensor(number, dtype=torch.long, device=device)


# ---------------------------------------------------------------------------------------------------------------------
# ITC: image-text contrastive learning
# ---------------------------------------------------------------------------------------------------------------------


def log_scale_bounds(min_temperature, max_temperature):
    """(low, high) of log(1 / temperature), for temperatures in [min_temperature, max_temperature]."""
    if not 0 < min_temperature <= max_temperature:
        raise ValueError(f"temperatures must satisfy 0 < min <= max; got ({min_temperature}, {max_temperature})")
    return math.log(1.0 / max_temperature), math.log(1.0 / min_temperature)


def clamp_logit_scale(log_scale, min_temperature, max_temperature):
    """The logit scale exp(log_scale) with the temperature 1 / scale held in [min_temperature, max_temperature].

    A guard: training keeps the parameter itself in range, clamped in place after every optimizer step (CLIP), so
    this clamp only ever sees values within the bounds, where its gradient passes (at the bounds too).
    """
    return log_scale.clamp(*log_scale_bounds(min_temperature, max_temperature)).exp()


def similarity_matrix(text_features, image_features, logit_scale):
    """scale * cos(text_i, image_j) for every pair: (T, D) and (I, D) -> (T, I), computed in float32."""
    with _full_precision(text_features.device):
        text = F.normalize(_promote(text_features), dim=-1)
        image = F.normalize(_promote(image_features), dim=-1)
        return logit_scale * text @ image.T


def _distributed():
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and (torch.distributed.get_world_size() > 1)
    )


class _AllGather(torch.autograd.Function):
    """all_gather along the batch; backward sums each slice's gradient over processes and returns this one's."""

    @staticmethod
    def forward(ctx, features):
        ctx.rank, ctx.size = torch.distributed.get_rank(), features.shape[0]
        gathered = [torch.empty_like(features) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(gathered, features)
        return torch.cat(gathered)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_with_grad(features):
    """The features of all processes concatenated in rank order, gradients flowing back to each process's own slice.

    The own slice is the local tensor itself (as open_clip), so the local rows' gradient stays local; the gradients
    other processes compute for it come back through the gather's backward (a sum over processes).
    """
    features = features.contiguous()
    gathered = _AllGather.apply(features)
    start = torch.distributed.get_rank() * features.shape[0]
    return torch.cat([gathered[:start], features, gathered[start + features.shape[0] :]])


def contrastive_loss(text_features, image_features, logit_scale, gather=True, matches=None):
    """Symmetric InfoNCE: text i must pick image i among all images of the global batch, and image i text i.

    `matches` bool, optional: matches[t, i] says that text t is also true of image i (the diagonal always is).
    Such pairs are no negatives: they leave both softmax denominators (false-negative elimination), so a caption
    that holds for another image of the batch is not pushed away from it. It is (T, I) over this process's pairs, or,
    under torch.distributed, (world * T, world * I) over the gathered batch in rank order (the features' order);
    where the truth is unknown (no `matches`, or a local one for the pairs across processes) every off-diagonal pair
    is a negative, as in CLIP.

    Returns (summed, count): the mean of the text->image and image->text cross-entropies summed over this process's
    pairs, and their number. Under torch.distributed with `gather` (equal local batches), each process scores its
    rows against the gathered columns; the module notes say how to scale the result.
    """
    if text_features.shape[0] != image_features.shape[0]:
        raise ValueError(f"{text_features.shape[0]} text features but {image_features.shape[0]} image features")
    count = text_features.shape[0]
    all_text, all_image, offset = text_features, image_features, 0
    if gather and _distributed():
        all_text, all_image = gather_with_grad(text_features), gather_with_grad(image_features)
        offset = torch.distributed.get_rank() * count
    total = all_image.shape[0]
    labels = torch.arange(offset, offset + count, device=text_features.device)
    text_to_image = similarity_matrix(text_features, all_image, logit_scale)
    image_to_text = similarity_matrix(image_features, all_text, logit_scale)
    if matches is not None:
        matches = matches.to(device=text_to_image.device, dtype=torch.bool)
        if tuple(matches.shape) == (count, count) and total != count:  # this process's pairs only
            known = matches.new_zeros((total, total))
            known[offset : offset + count, offset : offset + count] = matches
            matches = known
        if tuple(matches.shape) != (total, total):
            raise ValueError(
                f"matches must be (texts, images) = ({count}, {count}) or, over the gathered batch, "
                f"({total}, {total}); got shape {tuple(matches.shape)}"
            )
        rows = slice(offset, offset + count)
        own = F.one_hot(labels, total).bool()
        text_to_image = text_to_image.masked_fill(matches[rows] & ~own, float("-inf"))
        image_to_text = image_to_text.masked_fill(matches[:, rows].T & ~own, float("-inf"))
    text_loss = F.cross_entropy(text_to_image, labels, reduction="sum")
    image_loss = F.cross_entropy(image_to_text, labels, reduction="sum")
    summed = (text_loss + image_loss) / 2
    return summed, _count(count, summed.device)


def false_negative_share(matches):
    """Share of the off-diagonal pairs of a (T, T) `matches` matrix that hold: negatives a one-hot ITC would punish."""
    size = matches.shape[0]
    if size < 2:
        return 0.0
    return float((matches.bool().sum() - matches.bool().diagonal().sum()) / (size * (size - 1)))


# ---------------------------------------------------------------------------------------------------------------------
# Hard negatives for image-text matching
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_hard_negatives(similarity, generator=None, exclude=None):
    """For each row, a column drawn with probability softmax(row) over the columns not excluded (ALBEF hard negatives).

    `exclude` (bool, shaped like `similarity`) marks the positives and anything else that must not be drawn; default
    the diagonal. Call on `similarity.T` for the other direction. Gumbel-max sampling: excluded columns are never drawn.
    """
    if similarity.dim() != 2:
        raise ValueError(f"similarity must be a (rows, columns) matrix; got shape {tuple(similarity.shape)}")
    if exclude is None:
        exclude = torch.eye(*similarity.shape, dtype=torch.bool, device=similarity.device)
    elif exclude.shape != similarity.shape:
        raise ValueError(f"exclude has shape {tuple(exclude.shape)}, similarity {tuple(similarity.shape)}")
    logits = _promote(similarity).masked_fill(exclude.bool(), float("-inf"))
    empty = torch.isneginf(logits).all(dim=1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"rows {rows} of the similarity matrix have no candidate negative: every column is excluded")
    uniform = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(logits.dtype).tiny)))
    return (logits + gumbel).argmax(dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# WRA: word-region alignment by optimal transport
# ---------------------------------------------------------------------------------------------------------------------


def cosine_cost(x, y, eps=1e-5):
    """1 - cos(x_i, y_j) for every pair of each batch item: (B, M, D) and (B, N, D) -> (B, M, N), in [0, 2]."""
    x = F.normalize(x, dim=-1, eps=eps)
    y = F.normalize(y, dim=-1, eps=eps)
    return 1 - x @ y.transpose(1, 2)


def _valid(mask, batch, length, device):
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    return mask.bool()


@torch.no_grad()
def ipot(cost, x_mask=None, y_mask=None, beta=0.5, iterations=50):
    """Transport plan (B, M, N) between uniform distributions over the valid rows and columns of `cost`, by IPOT.

    IPOT (Xie et al., 2018) is a proximal point method: each step is one Sinkhorn scaling of the previous plan times
    exp(-cost / beta), so the plan approaches the exact one as iterations grow instead of staying entropy-blurred.
    Computed in float32 without gradients; padded rows and columns (mask 0) get no mass. Each row of the kernel is
    shifted by its smallest cost, which the scalings absorb, so large costs do not underflow to an empty row.
    """
    if cost.dim() != 3:
        raise ValueError(f"cost must be (batch, rows, columns); got shape {tuple(cost.shape)}")
    if beta <= 0 or iterations < 1:
        raise ValueError(f"ipot needs beta > 0 and iterations >= 1; got beta={beta}, iterations={iterations}")
    with _full_precision(cost.device):
        cost = _promote(cost)
        batch, rows, cols = cost.shape
        x_valid = _valid(x_mask, batch, rows, cost.device)
        y_valid = _valid(y_mask, batch, cols, cost.device)
        joint = x_valid[:, :, None] & y_valid[:, None, :]
        mu = (x_valid / x_valid.sum(dim=1, keepdim=True).clamp(min=1)).to(cost.dtype)
        nu = (y_valid / y_valid.sum(dim=1, keepdim=True).clamp(min=1)).to(cost.dtype)
        row_min = cost.masked_fill(~joint, float("inf")).amin(dim=2, keepdim=True)
        kernel = torch.where(joint, torch.exp(-(cost - row_min) / beta), 0.0)
        tiny = torch.finfo(cost.dtype).tiny
        plan, b = joint.to(cost.dtype), nu
        for _ in range(iterations):
            q = kernel * plan
            a = mu / (q @ b[:, :, None])[:, :, 0].clamp_min(tiny)
            b = nu / (a[:, None, :] @ q)[:, 0].clamp_min(tiny)
            plan = a[:, :, None] * q * b[:, None, :]
        return plan


def optimal_transport_distance(text_states, image_states, text_mask=None, image_mask=None, beta=0.5, iterations=50):
    """Per pair, the cost <C, T> of transporting the words onto the image patches with C = 1 - cos: (B,), float32.

    The IPOT plan T is a constant (as UNITER), so gradients flow through the cost matrix only.
    """
    with _full_precision(text_states.device):
        cost = cosine_cost(_promote(text_states), _promote(image_states))
        plan = ipot(cost.detach(), text_mask, image_mask, beta, iterations)
        return (cost * plan).sum(dim=(1, 2))


def wra_loss(distance, itm_labels):
    """UNITER's WRA: transport distances of matched pairs (label 1) count positive and of mismatched ones (label 0)
    negative, pulling the words and regions of true pairs together and pushing those of false pairs apart.

    Returns (summed, count), count = matched + mismatched pairs; other labels (-100) take no part. UNITER divides the
    same difference by the same count. Cosine distances lie in [0, 2], so the negative term is bounded.
    """
    positive, negative = itm_labels == 1, itm_labels == 0
    summed = torch.where(positive, distance, 0.0).sum() - torch.where(negative, distance, 0.0).sum()
    return summed, (positive | negative).sum()


# ---------------------------------------------------------------------------------------------------------------------
# MIM: masked image modeling
# ---------------------------------------------------------------------------------------------------------------------

MIM_LOSSES = ("l2", "smooth_l1", "cosine")


def patchify(pixel_values, patch_size):
    """(B, C, H, W) -> (B, N, p * p * C): patches in the row-major grid order of the patch embedding's Conv2d output,
    each flattened as (row, column, channel) like MAE."""
    batch, channels, height, width = pixel_values.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"pixel_values of size {height}x{width} do not divide into {patch_size}-pixel patches")
    rows, cols = height // patch_size, width // patch_size
    patches = pixel_values.reshape(batch, channels, rows, patch_size, cols, patch_size).permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(batch, rows * cols, patch_size * patch_size * channels)


def unpatchify(patches, patch_size, num_rows, num_cols):
    """The inverse of `patchify`: (B, rows * cols, p * p * C) -> (B, C, rows * p, cols * p), to show reconstructions."""
    batch, length, dim = patches.shape
    channels = dim // (patch_size * patch_size)
    if length != num_rows * num_cols or dim != patch_size * patch_size * channels:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not make a {num_rows}x{num_cols} grid of "
            f"{patch_size}-pixel patches"
        )
    image = patches.reshape(batch, num_rows, num_cols, patch_size, patch_size, channels).permute(0, 5, 1, 3, 2, 4)
    return image.reshape(batch, channels, num_rows * patch_size, num_cols * patch_size)


def mim_pixel_targets(pixel_values, patch_size, norm_pix=True, eps=1e-6):
    """Per-patch pixel targets (B, N, p * p * C). With `norm_pix` each patch is standardized, (x - mean) / sqrt(var +
    eps) with the unbiased variance, as MAE, which found these targets to give better representations."""
    targets = patchify(_promote(pixel_values.detach()), patch_size)
    if norm_pix:
        mean = targets.mean(dim=-1, keepdim=True)
        var = targets.var(dim=-1, keepdim=True)
        targets = (targets - mean) / (var + eps).sqrt()
    return targets


def mim_loss(predictions, targets, bool_masked_pos, kind="l2"):
    """Regression over the masked patches only, per patch the mean squared error ("l2", MAE), the mean smooth L1
    ("smooth_l1", beta 1) or 1 - cosine similarity ("cosine", for feature targets). Targets are constants.

    `predictions` is (B, N, D), or (masked patches, D) in row-major order of `bool_masked_pos` (B, N) when the head
    ran at the masked patches only; `targets` is (B, N, D). Returns (summed over masked patches, their number).
    """
    if kind not in MIM_LOSSES:
        raise ValueError(f"mim_loss kind={kind!r}: expected one of {MIM_LOSSES}")
    masked = bool_masked_pos.bool()
    if predictions.shape[:-1] == masked.shape:
        predictions = predictions[masked]
    elif predictions.dim() != 2 or predictions.shape[0] != int(masked.sum()):
        raise ValueError(
            f"predictions of shape {tuple(predictions.shape)} match neither bool_masked_pos "
            f"{tuple(masked.shape)} nor its {int(masked.sum())} masked patches"
        )
    with _full_precision(predictions.device):
        predictions = _promote(predictions)
        targets = targets.detach()[masked].to(predictions.dtype)
        if kind == "l2":
            per_patch = (predictions - targets).pow(2).mean(dim=-1)
        elif kind == "smooth_l1":
            per_patch = F.smooth_l1_loss(predictions, targets, reduction="none", beta=1.0).mean(dim=-1)
        else:
            per_patch = 1 - F.cosine_similarity(predictions, targets, dim=-1)
        return per_patch.sum(), _count(per_patch.shape[0], per_patch.device)


@torch.no_grad()
def ema_update(teacher_params, student_params, momentum):
    """teacher <- momentum * teacher + (1 - momentum) * student, in place: the momentum teacher whose features serve
    as MIM targets (and ALBEF's momentum model). Raises ValueError when the two lists differ in length."""
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum={momentum} must lie in [0, 1]")
    for teacher, student in zip(teacher_params, student_params, strict=True):
        teacher.lerp_(student.to(teacher.dtype), 1 - momentum)


# ---------------------------------------------------------------------------------------------------------------------
# GITM: grouped image-text matching
# ---------------------------------------------------------------------------------------------------------------------

#: Target of a caption segment that describes no cell of the canvas (padding segments are -100).
GITM_NONE = -1


def _pool_by_id(hidden, ids, first_id, count):
    """Mean of `hidden` (B, N, D) over the positions whose id is first_id + j, for j < count: (B, count, D).
    Groups without positions get zeros."""
    if hidden.dim() != 3 or ids.shape != hidden.shape[:2]:
        raise ValueError(
            f"ids of shape {tuple(ids.shape)} must match the first two dims of hidden {tuple(hidden.shape)}"
        )
    wanted = torch.arange(first_id, first_id + count, device=ids.device)
    weights = (ids[:, None, :] == wanted[None, :, None]).to(hidden.dtype)  # (B, count, N)
    return (weights @ hidden) / weights.sum(dim=-1, keepdim=True).clamp(min=1)


def pool_segments(hidden_text, segment_ids, num_segments):
    """Mean text state of each caption segment: (B, T, D) with `segment_ids` (B, T) -> (B, num_segments, D).

    Slot j pools the tokens with segment id j + 1 (ids are 1-based; 0 marks [CLS] and padding), i.e. the segment
    whose target is `gitm_segment_targets[:, j]`. Segments absent from a row pool to zeros."""
    return _pool_by_id(hidden_text, segment_ids, 1, num_segments)


def pool_cells(hidden_patches, cell_ids, num_cells):
    """Mean patch state of each canvas cell: (B, P, D) with `cell_ids` (B, P) in 0..num_cells-1 (-1: no cell)
    -> (B, num_cells, D). Cells without patches pool to zeros."""
    return _pool_by_id(hidden_patches, cell_ids, 0, num_cells)


def grouped_matching_logits(segment_repr, cell_repr, none_logit, cell_mask=None, scale=1.0):
    """Scores (B, M, K + 1) of each segment against each cell, scale * <segment, cell>, and in the last column the
    learned 'none' logit (a scalar, or one per segment (B, M) / (B, M, 1)). Cells where `cell_mask` (B, K) is False
    get -inf. Computed in float32 with autocast off."""
    if segment_repr.dim() != 3 or cell_repr.dim() != 3 or segment_repr.shape[::2] != cell_repr.shape[::2]:
        raise ValueError(
            f"segment_repr {tuple(segment_repr.shape)} and cell_repr {tuple(cell_repr.shape)} must be "
            "(B, M, D) and (B, K, D)"
        )
    with _full_precision(segment_repr.device):
        segments, cells = _promote(segment_repr), _promote(cell_repr)
        scores = scale * segments @ cells.transpose(1, 2)
        if cell_mask is not None:
            scores = scores.masked_fill(~cell_mask.bool()[:, None, :], float("-inf"))
        none = _promote(torch.as_tensor(none_logit, device=scores.device))
        if none.dim() == 2:
            none = none[..., None]
        none = none.to(scores.dtype).expand(*scores.shape[:2], 1)
        return torch.cat([scores, none], dim=-1)


def gitm_classes(targets, num_cells):
    """Segment targets (cell, GITM_NONE or -100) -> class indices of the logits (cell, num_cells for none, -100)."""
    bad = (targets < GITM_NONE) & (targets != -100) | (targets >= num_cells)
    if bool(bad.any()):
        raise ValueError(
            f"targets must be a cell in [0, {num_cells}), {GITM_NONE} (none) or -100 (padding); got "
            f"{sorted(set(targets[bad].tolist()))}"
        )
    return torch.where(targets == GITM_NONE, torch.full_like(targets, num_cells), targets)


def grouped_matching_cross_entropy(logits, targets):
    """Cross-entropy of logits (B, M, K + 1) against segment targets (B, M) over cells plus 'none'.

    Returns (summed over the segments, their number); padded segments (-100) take no part."""
    classes = gitm_classes(targets, logits.shape[-1] - 1)
    with _full_precision(logits.device):
        summed = F.cross_entropy(_promote(logits).flatten(0, 1), classes.flatten(), reduction="sum", ignore_index=-100)
    return summed, (classes != -100).sum()


def grouped_matching_loss(segment_repr, cell_repr, none_logit, targets, cell_mask=None, scale=1.0):
    """GITM loss: each segment (B, M, D) picks its cell among the cells (B, K, D) or 'none' (cross-entropy over
    K + 1 classes, see `grouped_matching_logits`). Targets (B, M): a cell, GITM_NONE, or -100 for padding.

    Returns (summed over the segments, their number)."""
    logits = grouped_matching_logits(segment_repr, cell_repr, none_logit, cell_mask, scale)
    return grouped_matching_cross_entropy(logits, targets)


@torch.no_grad()
def grouped_matching_metrics(logits, targets):
    """Counts (long tensors, so they add up over batches and processes) for GITM from logits (B, M, K + 1).

    `segments` / `correct`: segments with a target and those whose argmax is it (assignment accuracy);
    `none_predicted` / `none_actual` / `none_correct`: segments predicted 'none', with target 'none', and both
    ('none' precision = none_correct / none_predicted, recall = none_correct / none_actual);
    `groups` / `groups_exact`: rows with at least one segment and those with every segment right (exact match).
    Segments whose target is -100 are ignored (mask targets to -100 to score a subset, e.g. one distractor kind).
    """
    classes = gitm_classes(targets, logits.shape[-1] - 1)
    valid = classes != -100
    predicted = logits.argmax(dim=-1)
    none = logits.shape[-1] - 1
    right = (predicted == classes) & valid
    has_segments = valid.any(dim=1)
    return {
        "segments": valid.sum(),
        "correct": right.sum(),
        "none_predicted": ((predicted == none) & valid).sum(),
        "none_actual": ((classes == none) & valid).sum(),
        "none_correct": ((classes == none) & right).sum(),
        "groups": has_segments.sum(),
        "groups_exact": (has_segments & (right | ~valid).all(dim=1)).sum(),
    }


def summarize_grouped_matching(counts):
    """Accuracy, 'none' precision and recall and exact match from (summed) `grouped_matching_metrics` counts;
    NaN where the denominator is 0."""

    def ratio(num, den):
        den = int(den)
        return int(num) / den if den else float("nan")

    return {
        "accuracy": ratio(counts["correct"], counts["segments"]),
        "none_precision": ratio(counts["none_correct"], counts["none_predicted"]),
        "none_recall": ratio(counts["none_correct"], counts["none_actual"]),
        "exact_match": ratio(counts["groups_exact"], counts["groups"]),
    }
