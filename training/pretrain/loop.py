"""Pretraining on Accelerate: `pretrain` is the loop; each of its lines calls one function with one job.

One optimizer step = `gradient_accumulation_steps` micro-batches on every process. Losses are summed per objective
and divided by the objective's count over all processes and micro-batches, so the logged loss is the global mean
and the result does not depend on how the global batch is split. Checkpoints are exact: resuming reproduces the
uninterrupted run.

Data come from a map-style dataset (a `GlobalBatchSampler` slices each epoch's permutation) or from WebDataset shards
(a `ShardStream`: every process reads its own shards; the stream's cursors are checkpointed, so a resumed run
continues with the samples it had not yet seen). A process whose micro-batch is empty (padding at the end of a
streamed epoch, or only unreadable samples) runs a placeholder batch with its loss times zero, so every process makes
the same passes and no collective waits forever."""

import copy
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from accelerate.utils import gather_object

from ...modeling_vlp.losses_vlp import ema_update, false_negative_share
from ...processing.random_streams import HARD_NEGATIVE_STREAM
from ..objectives import (
    JOINT_PASS,
    OBJECTIVE_ORDER,
    joint_passes,
    objective_counts,
    objective_inputs,
    pass_objectives,
    step_objectives,
)
from . import checkpointing
from .factory import full_parameters, learning_rate_at
from .guided_masking import guidance_relevance, mask_diagnostics, share_metrics
from .run import FAULT_ENV, StepBatches, StepLosses, finish_run, real_count, record_skipped, start_run
from .validation import validate


class NonFiniteLossError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss."""


class InjectedFault(RuntimeError):
    """The fault requested through VLP_FAULT_AT_STEP."""


def pretrain(model_args, data_args, train_args):
    """Runs (or resumes) one pretraining run; returns the final validation metrics."""
    run = start_run(model_args, data_args, train_args)
    final_metrics = {}
    if run.state.step == 0 and train_args.eval_every:
        # The starting point of every validation curve (and of the "did each loss go down" check).
        run.logger.log(0, "val", validate_run(run))
    run.model.train()
    while run.state.step < train_args.max_steps:
        step = run.state.step
        started = time.perf_counter()
        batches = next_micro_batches(run, step)
        fetched = time.perf_counter()
        losses = train_step(run, step, batches)
        grad_norm = optimizer_step(run, step, losses)
        account_step(run, losses, started, fetched)
        stop_if_nonfinite(run, step, losses)
        if _due(run.state.step, train_args.log_every, train_args.max_steps):
            log_train(run, step, grad_norm)
        if _due(run.state.step, train_args.eval_every, train_args.max_steps):
            final_metrics = validate_run(run)
            run.logger.log(run.state.step, "val", final_metrics)
            run.model.train()
        if _due(run.state.step, train_args.save_every, train_args.max_steps):
            checkpointing.save_checkpoint(run.accelerator, run.output_dir, run.state.step, train_args.keep_checkpoints)
    finish_run(run, final_metrics)
    return final_metrics


def _due(step, every, max_steps):
    """True at every `every`-th step (never with `every` 0) and at the last one."""
    return bool(every) and step % every == 0 or step == max_steps


def next_micro_batches(run, step):
    """The step's micro-batches on this process's device; empty ones replaced by the placeholder batch."""
    if step == run.fault_step:
        raise InjectedFault(f"fault injected at step {step} through {FAULT_ENV}")
    device = run.accelerator.device
    micro = [_to_device(next(run.batches), device) for _ in range(run.train_args.gradient_accumulation_steps)]
    if run.recorder is not None:
        run.recorder(step + 1, micro)
    skipped = [item for b in micro for item in b.get("skipped", [])]
    if skipped and run.stream is not None and run.data_args.strict:
        raise ValueError(f"strict: unreadable sample {skipped[0][0]}: {skipped[0][1]}")
    real = sum(real_count(b) for b in micro)
    sizes = [len(b["index"]) for b in micro]
    empty = [size == 0 for size in sizes]
    if any(empty):
        if run.placeholder is None:
            run.placeholder = run.data.placeholder_batch()
        micro = [_to_device(copy.deepcopy(run.placeholder), device) if blank else b for b, blank in zip(micro, empty)]
    return StepBatches(micro, empty, skipped, real, sizes)


def train_step(run, step, batches):
    """Forward and backward passes of every objective of the step over its micro-batches (gradients synchronised
    in the last backward pass); returns the objectives' global mean losses."""
    objectives = step_objectives(run.weights, run.train_args.mixing, run.train_args.seed, step)
    names = sorted(objectives)
    masking = _mask_step(run, step, batches, objectives)
    counted = [name for name in names if name not in masking.deferred]
    normalizers, dropped, real_samples = _global_counts(run, step, batches, objectives, counted)
    passes, first_deferred = _pass_order(run, batches, objectives, masking.deferred, dropped)
    loss_sums = _run_passes(run, step, batches, objectives, names, passes, first_deferred, masking, normalizers)
    for key, value in share_metrics(masking.diagnostics).items():
        run.window.setdefault(key, []).append(value)
    if step in run.nonfinite_steps:
        loss_sums += float("nan")
    # Each process holds (its summed loss) / (global count / processes): the mean over processes is the global
    # mean. Every process takes the same decision: the reduced sums are non-finite everywhere or nowhere.
    accelerator = run.accelerator
    loss_sums = accelerator.reduce(loss_sums, reduction="sum") / accelerator.num_processes
    return StepLosses(names, loss_sums, dropped, real_samples, finite=bool(torch.isfinite(loss_sums).all()))


@dataclass
class _Masking:
    """Attention-guided masking in one step: whether the masks come after the ITM passes (`reuse`), the objectives
    whose masks (and counts) wait for them (`deferred`), and the mask diagnostics so far."""

    reuse: bool
    deferred: list
    diagnostics: dict


def _mask_step(run, step, batches, objectives):
    """Masks drawn now from a guidance pass (model / EMA teacher), or after the ITM passes whose matched rows give
    the relevance (`itm`), whose objectives' counts are then known only later."""
    guide, names = run.guide, sorted(objectives)
    masked_now = [t for t in (guide.targets if guide else ()) if t in objectives]
    reuse = bool(masked_now) and guide.needs_guidance(step) and guide.source == "itm"
    deferred = [name for name in names if reuse and name in masked_now]
    diagnostics = {}
    if masked_now and not reuse:
        unwrapped = run.accelerator.unwrap_model(run.model)
        for batch, blank in zip(batches.micro, batches.empty):
            relevance = None
            guidance_started = time.perf_counter()
            if guide.needs_guidance(step):
                source = run.teacher if guide.source == "ema" else unwrapped
                relevance = guidance_relevance(source, objective_inputs("guidance", batch, {}), guide)
            applied = guide.apply(batch, step, relevance)
            if not blank:
                _add(diagnostics, applied)
            run.timing["guidance_time"] = run.timing.get("guidance_time", 0.0) + time.perf_counter() - guidance_started
    elif not masked_now:
        for batch in batches.real_batches:
            _add(diagnostics, mask_diagnostics(batch, [n for n in ("mlm", "mim") if n in objectives]))
    return _Masking(reuse, deferred, diagnostics)


def _global_counts(run, step, batches, objectives, counted):
    """One reduction gives every counted objective's global count (its loss normalizer), the number of unreadable
    and of real samples, and every process's micro-batch sizes; returns (normalizers, objectives dropped this step,
    real samples over all processes)."""
    accelerator, hard = run.accelerator, run.train_args.itm_negatives == "hard"
    processes = accelerator.num_processes
    local_counts = objective_counts(batches.real_batches, counted, accelerator.device, hard)
    size_slots = torch.zeros(len(batches.sizes) * processes, dtype=torch.float64)
    size_slots[accelerator.process_index :: processes] = torch.tensor(batches.sizes, dtype=torch.float64)
    extra = [local_counts.new_tensor([len(batches.skipped), batches.real]), size_slots.to(local_counts.device)]
    global_counts = accelerator.reduce(torch.cat([local_counts, *extra]), reduction="sum")
    global_sizes = global_counts[len(counted) + 2 :].view(len(batches.sizes), processes)
    if global_counts[len(counted)] > 0:
        record_skipped(batches.skipped, run.state, run.output_dir, step + 1, accelerator)
    real_samples = int(global_counts[len(counted) + 1])
    normalizers = {n: max(float(c), 1.0) / processes for n, c in zip(counted, global_counts)}
    # ITC gathers features from every process and needs equal micro-batch sizes; a step where they differ (an
    # uneven end of a streamed epoch, unreadable samples) trains without it, the same on every process.
    unequal = bool((global_sizes != global_sizes[:, :1]).any())
    dropped = {"itc"} if "itc" in objectives and processes > 1 and unequal else set()
    if "itc" in objectives and processes > 1:
        run.window.setdefault("itc_skipped_share", []).append(float(bool(dropped)))
    return normalizers, dropped, real_samples


def _pass_order(run, batches, objectives, deferred, dropped):
    """The (micro-batch, objective) passes in order, those of deferred objectives last; joint MLM+MIM passes
    merged. Returns (passes, index of the first deferred pass)."""
    micro = range(len(batches.micro))
    passes = [
        (index, name)
        for index in micro
        for name in OBJECTIVE_ORDER
        if name in objectives and name not in deferred and name not in dropped
    ]
    first_deferred = len(passes)
    passes += [(index, name) for index in micro for name in OBJECTIVE_ORDER if name in deferred]
    guide = run.guide
    if guide is not None and guide.joint != "independent" and {"mlm", "mim"} <= set(objectives):
        passes = joint_passes(passes)
        waits = (
            n for n, (_, name) in enumerate(passes) if name in deferred or name == JOINT_PASS and "mlm" in deferred
        )
        first_deferred = next(waits, len(passes))
    return passes, first_deferred


def _run_passes(run, step, batches, objectives, names, passes, first_deferred, masking, normalizers):
    """Forward and backward of each pass; returns this process's loss sums per objective (`names` order)."""
    accelerator, model, train_args = run.accelerator, run.model, run.train_args
    hard = train_args.itm_negatives == "hard"
    unwrapped = accelerator.unwrap_model(model)
    seed = np.random.default_rng([train_args.seed, step, accelerator.process_index, HARD_NEGATIVE_STREAM])
    generator = torch.Generator(device="cpu").manual_seed(int(seed.integers(2**62)))
    context = {"model": unwrapped, "teacher": run.teacher, "hard_negatives": hard, "generator": generator}
    if accelerator.num_processes > 1:  # ITC's truth over the gathered batch
        context.update(gather=gather_object, holds_fn=run.data.holds_fn)
    loss_sums = torch.zeros(len(names), dtype=torch.float64, device=accelerator.device)
    guidance = {}
    for number, (index, name) in enumerate(passes):
        batch = batches.micro[index]
        if masking.deferred and number == first_deferred:
            _apply_deferred_masks(run, step, batches, masking, guidance, normalizers)
        if name == "itc" or number == 0 or passes[number - 1][0] != index:
            context["similarity"] = None
        inputs = objective_inputs(name, batch, context)
        if name == "itc" and inputs.get("itc_matches") is not None and not batches.empty[index]:
            run.window.setdefault("itc_false_negative_share", []).append(false_negative_share(inputs["itc_matches"]))
        if masking.reuse and name == "itm":
            inputs["relevance_weights"] = run.guide.request(inputs)
            inputs["relevance_layers"] = run.guide.relevance_layers(unwrapped.config.num_hidden_layers)
        pass_started = time.perf_counter()
        # Gradients are synchronised once per optimizer step, in the last backward pass.
        with nullcontext() if number == len(passes) - 1 else accelerator.no_sync(model):
            outputs = model(**inputs, loss_normalizers=normalizers, loss_weights=objectives)
            loss = outputs.loss
            if batches.empty[index]:
                loss = loss * 0.0  # the placeholder: the same passes as every other process, no gradient
            if step in run.nonfinite_steps:
                loss = loss * float("nan")
            accelerator.backward(loss)
        if name == "itc":
            context["similarity"] = outputs.itc_similarity
        if masking.reuse and name == "itm":
            guidance[index] = matched_relevance(outputs.relevance, inputs, batch, hard)
        if not batches.empty[index]:
            for objective in pass_objectives(name):
                loss_sums[names.index(objective)] += getattr(outputs, f"{objective}_loss").detach().double()
        key = f"{name.replace('+', '_')}_time"
        run.timing[key] = run.timing.get(key, 0.0) + time.perf_counter() - pass_started
    return loss_sums


def _apply_deferred_masks(run, step, batches, masking, guidance, normalizers):
    """Every ITM pass has run: the masks of the deferred objectives from its relevance, then their global counts."""
    accelerator, hard = run.accelerator, run.train_args.itm_negatives == "hard"
    for i, b in enumerate(batches.micro):
        applied = run.guide.apply(b, step, *guidance[i])
        if not batches.empty[i]:
            _add(masking.diagnostics, applied)
    counts = objective_counts(batches.real_batches, masking.deferred, accelerator.device, hard)
    deferred_counts = accelerator.reduce(counts, reduction="sum")
    processes = accelerator.num_processes
    normalizers.update({n: max(float(c), 1.0) / processes for n, c in zip(masking.deferred, deferred_counts)})


def optimizer_step(run, step, losses):
    """The learning rate of the step, then (finite losses only) clipping, the update, the temperature clamp and
    the EMA teacher; returns the gradient norm (NaN for a skipped step)."""
    state, train_args = run.state, run.train_args
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate_at(step, train_args)
    if losses.finite:
        grad_norm = run.accelerator.clip_grad_norm_(run.model.parameters(), train_args.max_grad_norm or float("inf"))
        run.optimizer.step()
        unwrapped = run.accelerator.unwrap_model(run.model)
        unwrapped.clamp_temperature_()  # in place, after the step (CLIP): the gradient still reaches the bounds
        if run.teacher is not None:
            ema_update(run.teacher.parameters(), full_parameters(unwrapped), train_args.teacher_momentum)
        state.consecutive_nonfinite = 0
    else:
        grad_norm = torch.tensor(float("nan"))
        state.nonfinite_steps += 1
        state.consecutive_nonfinite += 1
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def account_step(run, losses, started, fetched):
    """The step counted: loop state, samples seen, times and the losses of the logging window."""
    run.state.step += 1
    run.state.samples_seen += run.sampler.global_batch if run.sampler is not None else losses.real_samples
    done = time.perf_counter()
    run.timing["data"] += fetched - started
    run.timing["compute"] += done - fetched
    run.timing["steps"] += 1
    for name, value in zip(losses.names, losses.sums.tolist()):
        if name not in losses.dropped:
            run.window.setdefault(f"{name}_loss", []).append(value)
    run.progress.update(1)


def stop_if_nonfinite(run, step, losses):
    """Raise `NonFiniteLossError` after `max_nonfinite_steps` non-finite steps in a row."""
    state, limit = run.state, run.train_args.max_nonfinite_steps
    if losses.finite or state.consecutive_nonfinite < limit:
        return
    last_step, last_path = checkpointing.latest_checkpoint(run.output_dir)
    run.logger.close()
    raise NonFiniteLossError(
        f"stopped at step {step}: {state.consecutive_nonfinite} consecutive steps with a non-finite loss "
        f"(max_nonfinite_steps={limit}); last good checkpoint: {last_path or 'none'} (step {last_step})"
    )


def log_train(run, step, grad_norm):
    """One train record: the window's mean losses and shares, the learning rate, counts and time shares."""
    timing, state = run.timing, run.state
    total_time = max(1e-9, timing["data"] + timing["compute"])
    record = {key: float(np.mean(values)) for key, values in run.window.items()}
    record.update(
        lr=learning_rate_at(step, run.train_args),
        grad_norm=float(grad_norm),
        nonfinite_steps=state.nonfinite_steps,
        skipped_samples=state.skipped_samples,
        samples_seen=state.samples_seen,
        step_time=(timing["data"] + timing["compute"]) / max(1, timing["steps"]),
        data_wait_share=timing["data"] / total_time,
    )
    if run.stream is not None:
        record.update(epoch=run.stream.epoch, lost_samples=run.lost_samples)
    record.update(
        {f"{key[:-5]}_time_share": value / total_time for key, value in timing.items() if key.endswith("_time")}
    )
    run.logger.log(state.step, "train", record)
    run.progress.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k.endswith("_loss")})
    run.window = {}
    run.timing = {"data": 0.0, "compute": 0.0, "steps": 0}


def validate_run(run):
    return validate(run.accelerator.unwrap_model(run.model), run.data, run.train_args, run.accelerator, run.teacher)


def matched_relevance(relevance, inputs, batch, hard):
    """(relevance of the ITM rows that show a sample with its own caption, those samples' rows in the batch).

    With hard negatives the first B ITM rows are the matched pairs; with the dataset's negatives, the rows whose
    label is 1 show the sample's own caption.
    """
    size = len(batch["index"])
    if hard:
        return relevance[:size], torch.arange(size)
    rows = torch.nonzero(inputs["itm_labels"] == 1).flatten()
    return relevance[rows], rows.cpu()


def _add(totals, values):
    for key, value in values.items():
        totals[key] = totals.get(key, 0.0) + value


def _to_device(batch, device):
    return {
        k: v.to(device) if isinstance(v, torch.Tensor) else _to_device(v, device) if isinstance(v, dict) else v
        for k, v in batch.items()
    }
