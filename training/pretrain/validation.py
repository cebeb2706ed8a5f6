"""Validation during pretraining: MLM and ITM losses and accuracies, and masked colour-word accuracy.

Accuracies come with a 95 % Wilson score interval (items are independent validation pairs).
"""

import json

import datasets
import torch

from ...modeling_vlp.losses_vlp import gitm_classes, grouped_matching_metrics
from ...processing.pretraining_data import decode_image
from ...processing.worlds import shapes as shapes_world
from ..objectives import objective_counts, objective_inputs
from ..statistics import newcombe_difference, wilson_interval

EXTRA_OBJECTIVES = ("mim", "itc", "wra", "gitm")  # validated by their loss (and grouped matching's own figures)
GITM_KINDS = {"own": 0, "easy": 1, "hard": 2}  # processing.grouping's segment kinds


def _accuracy(prefix, correct, total):
    low, high = wilson_interval(correct, total)
    return {
        prefix: correct / total if total else float("nan"),
        f"{prefix}_ci_low": low,
        f"{prefix}_ci_high": high,
        f"{prefix}_n": total,
    }


def _validation_batches(data, batch_size, num_batches, rank, world_size):
    """This process's share of the first validation batches (fixed: epoch 0, in index order)."""
    limit = min(len(data.val), batch_size * num_batches)
    data.val.set_epoch(0)
    for start in range(rank * batch_size, limit, batch_size * world_size):
        yield data.val_collator([data.val[i] for i in range(start, min(start + batch_size, limit))])


@torch.no_grad()
def objective_loss_sums(model, data, objectives, batch_size, num_batches, rank=0, world_size=1, teacher=None):
    """Summed validation loss and unit count of each objective in `objectives` (MIM, ITC, WRA)."""
    device = next(model.parameters()).device
    sums = torch.zeros(2 * len(objectives), dtype=torch.float64)
    context = {"model": model, "teacher": teacher}
    for batch in _validation_batches(data, batch_size, num_batches, rank, world_size):
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for position, name in enumerate(objectives):
            count = float(objective_counts([batch], {name: 1.0}, "cpu")[0])
            loss = getattr(model(**objective_inputs(name, batch, context)), f"{name}_loss")
            sums[2 * position] += float(loss) * count
            sums[2 * position + 1] += count
    return sums


@torch.no_grad()
def validation_sums(model, data, batch_size, num_batches, rank=0, world_size=1):
    """Summed MLM/ITM losses and correct counts over this process's share of the first validation batches."""
    device = next(model.parameters()).device
    sums = torch.zeros(8, dtype=torch.float64)
    for batch in _validation_batches(data, batch_size, num_batches, rank, world_size):
        images = {k: batch[k].to(device) for k in ("pixel_values", "pixel_mask")}
        labels = batch["mlm_labels"].to(device)
        itm = batch["itm_labels"].to(device)
        # MLM on the masked own captions; ITM on the ITM captions as written (half of them negatives).
        out = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            token_type_ids=batch["token_type_ids"].to(device),
            mlm_labels=labels,
            **images,
        )
        matching = model(
            input_ids=batch["itm_input_ids"].to(device),
            attention_mask=batch["itm_attention_mask"].to(device),
            token_type_ids=batch["itm_token_type_ids"].to(device),
            itm_labels=itm,
            **images,
        )
        masked = labels != -100
        n_masked = int(masked.sum())
        predictions = out.mlm_logits.argmax(-1)
        hits = predictions == labels[masked]
        concept = batch["concept_mask"].to(device)[masked]
        sums += torch.tensor(
            [
                float(out.mlm_loss) * n_masked,
                n_masked,
                float(hits.sum()),
                float(concept.sum()),
                float((hits & concept).sum()),
                float(matching.itm_loss) * len(itm),
                len(itm),
                float((matching.itm_logits.argmax(-1) == itm).sum()),
            ],
            dtype=torch.float64,
        )
    return sums


@torch.no_grad()
def masked_word_accuracy(model, processor, rows, words, limit=256, batch_size=64):
    """Accuracy of predicting one masked word of `words` (e.g. the colours) that names an object in the image.

    Each row contributes at most one item: its first caption containing such a word, with that word replaced by
    [MASK]. The closed prediction is the argmax over `words` (chance 1 / len(words)): it asks which colour, and
    is not blurred by the grammar, where "a [MASK] star" may also take a size. The open prediction is the argmax
    over the whole vocabulary. Returns (closed correct, open correct, items).
    """
    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    word_ids = {w: tokenizer.convert_tokens_to_ids(w) for w in words}
    word_ids = {w: i for w, i in word_ids.items() if i != tokenizer.unk_token_id}
    items = []
    rows = rows.cast_column("image", datasets.Image(decode=False))
    for row in range(min(limit, len(rows))):
        record = rows[row]
        try:
            image = decode_image(record["image"])
        except ValueError:
            continue  # unreadable images are counted by the data loader, not here
        refs = json.loads(record["caption_refs"]) if "caption_refs" in record else None
        for number, caption in enumerate(record["captions"]):
            words = caption.split()
            # Only words that name an object in the image (not "there is no red star"), so the image decides.
            # A word said twice would be given away by its other occurrence.
            found = [
                w
                for position, w in enumerate(words)
                if w in word_ids and words.count(w) == 1 and (refs is None or refs[number][position] is not None)
            ]
            if found:
                items.append((image, caption, word_ids[found[0]]))
                break
    candidates = torch.tensor(sorted(word_ids.values()))
    closed = opened = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        images = [image for image, _, _ in chunk]
        encoded = processor(images=images, text=[c for _, c, _ in chunk], padding=True, return_tensors="pt")
        ids = encoded["input_ids"]
        labels = torch.full_like(ids, -100)
        for i, (_, _, target) in enumerate(chunk):
            position = int((ids[i] == target).nonzero()[0, 0])
            labels[i, position] = target
            ids[i, position] = tokenizer.mask_token_id
        inputs = {
            k: v.to(device)
            for k, v in encoded.items()
            if k in ("attention_mask", "token_type_ids", "pixel_values", "pixel_mask")
        }
        logits = model(input_ids=ids.to(device), mlm_labels=labels.to(device), **inputs).mlm_logits.cpu()
        targets = labels[labels != -100]
        opened += int((logits.argmax(-1) == targets).sum())
        closed += int((candidates[logits[:, candidates].argmax(-1)] == targets).sum())
    return closed, opened, len(items)


@torch.no_grad()
def grouped_matching_counts(model, data, batch_size, num_batches, rank=0, world_size=1):
    """Counts behind grouped matching's figures on the validation groups: segments and correct assignments (all,
    and per segment kind: own caption, easy and hard distractor), 'none' predicted / actual / right, whole groups
    and exactly right groups, then the number of segments whose target is each cell of the grid and 'none'."""
    device = next(model.parameters()).device
    fields = ("segments", "correct", "none_predicted", "none_actual", "none_correct", "groups", "groups_exact")
    kinds = tuple(GITM_KINDS)
    num_cells = data.val.groups.spec.num_cells
    sums = torch.zeros(len(fields) + 2 * len(kinds) + num_cells + 1, dtype=torch.float64)
    for batch in _validation_batches(data, batch_size, num_batches, rank, world_size):
        group = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch["gitm"].items()}
        if len(group["index"]) == 0:
            continue
        logits = model(**objective_inputs("gitm", {"gitm": group}, {})).gitm_logits
        targets = group["gitm_segment_targets"]
        counts = grouped_matching_metrics(logits, targets)
        sums[: len(fields)] += torch.tensor([float(counts[f]) for f in fields], dtype=torch.float64)
        predicted = logits.argmax(dim=-1)
        wanted = gitm_classes(targets, num_cells)
        for position, kind in enumerate(kinds):
            rows = (group["gitm_segment_kinds"] == GITM_KINDS[kind]) & (targets != -100)
            sums[len(fields) + 2 * position] += float(rows.sum())
            sums[len(fields) + 2 * position + 1] += float(((predicted == wanted) & rows).sum())
        scored = wanted[targets != -100]
        sums[len(fields) + 2 * len(kinds) :] += torch.bincount(scored, minlength=num_cells + 1).to(torch.float64).cpu()
    return sums


def grouped_matching_figures(sums):
    """Figures from `grouped_matching_counts`' (reduced) sums: accuracy with Wilson intervals overall and per
    segment kind; hard minus easy distractor accuracy with Newcombe's interval; two chance levels: uniform over
    the cells and 'none' (`gitm_chance_uniform`), and the share of the most frequent target, what always
    answering one class scores (`gitm_chance_majority`); 'none' precision and recall; whole-group exact match."""
    segments, correct, none_predicted, none_actual, none_correct, groups, exact = sums[:7]
    figures = {}
    figures.update(_accuracy("gitm_accuracy", int(correct), int(segments)))
    hits_of = {}
    for position, kind in enumerate(GITM_KINDS):
        total, hits = sums[7 + 2 * position], sums[8 + 2 * position]
        hits_of[kind] = (int(hits), int(total))
        figures.update(_accuracy(f"gitm_accuracy_{kind}", int(hits), int(total)))
    difference, low, high = newcombe_difference(*hits_of["hard"], *hits_of["easy"])
    figures.update(gitm_hard_minus_easy=difference, gitm_hard_minus_easy_ci_low=low, gitm_hard_minus_easy_ci_high=high)
    targets = sums[7 + 2 * len(GITM_KINDS) :]
    if len(targets) >= 2 and sum(targets):
        figures["gitm_chance_uniform"] = 1 / len(targets)
        figures["gitm_chance_majority"] = max(targets) / sum(targets)
    figures["gitm_none_precision"] = none_correct / none_predicted if none_predicted else float("nan")
    figures["gitm_none_recall"] = none_correct / none_actual if none_actual else float("nan")
    figures.update(_accuracy("gitm_exact_match", int(exact), int(groups)))
    return figures


def validate(model, data, train_args, accelerator, teacher=None):
    """Validation metrics, identical on every process (each evaluates a share; the sums are reduced)."""
    was_training = model.training
    model.eval()
    extra = [name for name in EXTRA_OBJECTIVES if name in train_args.objective_weights()]
    sums = validation_sums(
        model,
        data,
        train_args.per_device_batch_size,
        train_args.eval_batches,
        accelerator.process_index,
        accelerator.num_processes,
    )
    sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu().tolist()
    mlm_loss, n_masked, mlm_hits, n_concept, concept_hits, itm_loss, n_pairs, itm_hits = sums
    metrics = {"mlm_loss": mlm_loss / max(1, n_masked), "itm_loss": itm_loss / max(1, n_pairs)}
    metrics.update(_accuracy("mlm_accuracy", int(mlm_hits), int(n_masked)))
    metrics.update(_accuracy("mlm_concept_accuracy", int(concept_hits), int(n_concept)))
    metrics.update(_accuracy("itm_accuracy", int(itm_hits), int(n_pairs)))
    if extra:
        sums = objective_loss_sums(
            model,
            data,
            extra,
            train_args.per_device_batch_size,
            train_args.eval_batches,
            accelerator.process_index,
            accelerator.num_processes,
            teacher,
        )
        sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu().tolist()
        for position, name in enumerate(extra):
            metrics[f"{name}_loss"] = sums[2 * position] / max(1.0, sums[2 * position + 1])
    if "gitm" in extra:
        sums = grouped_matching_counts(
            model,
            data,
            train_args.per_device_batch_size,
            train_args.eval_batches,
            accelerator.process_index,
            accelerator.num_processes,
        )
        metrics.update(grouped_matching_figures(accelerator.reduce(sums.to(accelerator.device), "sum").cpu().tolist()))
    if "scene" in data.val_rows.column_names:
        limit = train_args.per_device_batch_size * train_args.eval_batches
        closed, opened, total = masked_word_accuracy(model, data.processor, data.val_rows, shapes_world.COLOURS, limit)
        metrics.update(_accuracy("colour_word_accuracy", closed, total))
        metrics.update(_accuracy("colour_word_accuracy_open", opened, total))
    model.train(was_training)
    return metrics
