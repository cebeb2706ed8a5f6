"""Validation during pretraining: each objective's figures on the first validation batches, identical on every
process (each evaluates a share; the sums are reduced).

MLM and ITM give losses and accuracies (`objectives.mlm`, `objectives.itm`), MIM, ITC, WRA and GITM their losses,
GITM its assignment figures (`objectives.gitm`), and on the shapes world the masked colour-word accuracy
(`objectives.mlm.masked_word_accuracy`). Accuracies come with a 95 % Wilson score interval (items are independent
validation pairs).
"""

import torch

from ...processing.worlds import shapes as shapes_world
from ..objectives import gitm, itm, mlm, objective_counts, objective_inputs
from ..statistics import accuracy_figures

EXTRA_OBJECTIVES = ("mim", "itc", "wra", "gitm")  # validated by their loss (and grouped matching's own figures)


def _validation_batches(data, batch_size, num_batches, rank, world_size, device=None):
    """This process's share of the first validation batches (fixed: epoch 0, in index order), on `device`."""
    limit = min(len(data.val), batch_size * num_batches)
    data.val.set_epoch(0)
    for start in range(rank * batch_size, limit, batch_size * world_size):
        batch = data.val_collator([data.val[i] for i in range(start, min(start + batch_size, limit))])
        yield batch if device is None else _to(batch, device)


def _to(batch, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def objective_loss_sums(model, data, objectives, batch_size, num_batches, rank=0, world_size=1, teacher=None):
    """Summed validation loss and unit count of each objective in `objectives` (MIM, ITC, WRA, GITM)."""
    device = next(model.parameters()).device
    sums = torch.zeros(2 * len(objectives), dtype=torch.float64)
    context = {"model": model, "teacher": teacher}
    for batch in _validation_batches(data, batch_size, num_batches, rank, world_size, device):
        for position, name in enumerate(objectives):
            count = float(objective_counts([batch], {name: 1.0}, "cpu")[0])
            loss = getattr(model(**objective_inputs(name, batch, context)), f"{name}_loss")
            sums[2 * position] += float(loss) * count
            sums[2 * position + 1] += count
    return sums


@torch.no_grad()
def validation_sums(model, data, batch_size, num_batches, rank=0, world_size=1):
    """Summed MLM and ITM figures (`mlm.VALIDATION_SUMS`, then `itm.VALIDATION_SUMS`) over this process's share of
    the first validation batches."""
    device = next(model.parameters()).device
    sums = torch.zeros(len(mlm.VALIDATION_SUMS) + len(itm.VALIDATION_SUMS), dtype=torch.float64)
    for batch in _validation_batches(data, batch_size, num_batches, rank, world_size, device):
        sums += torch.tensor(mlm.validation_sums(model, batch) + itm.validation_sums(model, batch), dtype=torch.float64)
    return sums


@torch.no_grad()
def grouped_matching_counts(model, data, batch_size, num_batches, rank=0, world_size=1):
    """`gitm.validation_counts` summed over this process's share of the validation groups."""
    device = next(model.parameters()).device
    num_cells = data.val.groups.spec.num_cells
    sums = torch.zeros(gitm.num_counts(num_cells), dtype=torch.float64)
    for batch in _validation_batches(data, batch_size, num_batches, rank, world_size):
        sums += gitm.validation_counts(model, _to(batch["gitm"], device), num_cells)
    return sums


def _reduced(sums, accelerator):
    return accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu().tolist()


def validate(model, data, train_args, accelerator, teacher=None):
    """Validation metrics, identical on every process (each evaluates a share; the sums are reduced)."""
    was_training = model.training
    model.eval()
    batches = (train_args.per_device_batch_size, train_args.eval_batches)
    share = (*batches, accelerator.process_index, accelerator.num_processes)
    sums = _reduced(validation_sums(model, data, *share), accelerator)
    mlm_loss, n_masked, mlm_hits, n_concept, concept_hits, itm_loss, n_pairs, itm_hits = sums
    metrics = {"mlm_loss": mlm_loss / max(1, n_masked), "itm_loss": itm_loss / max(1, n_pairs)}
    metrics.update(accuracy_figures("mlm_accuracy", int(mlm_hits), int(n_masked)))
    metrics.update(accuracy_figures("mlm_concept_accuracy", int(concept_hits), int(n_concept)))
    metrics.update(accuracy_figures("itm_accuracy", int(itm_hits), int(n_pairs)))
    extra = [name for name in EXTRA_OBJECTIVES if name in train_args.objective_weights()]
    if extra:
        sums = _reduced(objective_loss_sums(model, data, extra, *share, teacher), accelerator)
        for position, name in enumerate(extra):
            metrics[f"{name}_loss"] = sums[2 * position] / max(1.0, sums[2 * position + 1])
    if "gitm" in extra:
        metrics.update(gitm.validation_figures(_reduced(grouped_matching_counts(model, data, *share), accelerator)))
    if "scene" in data.val_rows.column_names:
        limit = train_args.per_device_batch_size * train_args.eval_batches
        closed, opened, total = mlm.masked_word_accuracy(
            model, data.processor, data.val_rows, shapes_world.COLOURS, limit
        )
        metrics.update(accuracy_figures("colour_word_accuracy", closed, total))
        metrics.update(accuracy_figures("colour_word_accuracy_open", opened, total))
    model.train(was_training)
    return metrics
