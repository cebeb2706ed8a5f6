"""Pretraining on Accelerate: `pretrain` is the loop; each of its lines calls one function with one job.

One optimizer step = `gradient_accumulation_steps` micro-batches on every process. Losses are summed per objective
and divided by the objective's count over all processes and micro-batches, so the logged loss is the global mean
and the result does not depend on how the global batch is split. Checkpoints are exact: resuming reproduces the
uninterrupted run.

Data come from a map-style dataset (a `GlobalBatchSampler` slices each epoch's permutation) or from WebDataset shards
(a `ShardStream`: every process reads its own shards; the stream's cursors are checkpointed, so a resumed run
continues with the samples it had not yet seen). A process whose micro-batch is empty (padding at the end of a
streamed epoch, or only unreadable samples) runs a placeholder batch with its loss times zero, so every process makes
the same passes and no collective waits forever.
"""

import copy
import inspect
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import DistributedType, gather_object, set_seed
from tqdm.auto import tqdm

from ...modeling_vlp import VLPConfig, VLPForPreTraining
from ...modeling_vlp.losses_vlp import ema_update, false_negative_share
from ...processing import strict_json
from ...processing.random_streams import HARD_NEGATIVE_STREAM
from ...processing.readers.captions import SkipReport
from ..config import to_dict
from ..logging_utils import MetricLogger, truncate_jsonl
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
from .data import build_pretraining_data, write_source_report
from .guided_masking import GuidedMasking, guidance_relevance, mask_diagnostics, share_metrics
from .sampler import GlobalBatchSampler
from .validation import validate

# Fault injection for tests. Step indices count completed optimizer steps (the step with index k is logged as k + 1).
FAULT_ENV = "VLP_FAULT_AT_STEP"  # raise before the step with this index runs (crash and resume)
NONFINITE_ENV = "VLP_NONFINITE_AT_STEPS"  # comma-separated step indices whose loss is made NaN (the guard)

# A pause, the GIL released, between the last collective and freeing the process group. ProcessGroupGloo's
# destructor joins its worker threads while the caller holds the GIL; a worker still letting go of a finished
# collective whose tensors Python has dropped needs the GIL to do so, and the two then wait on each other for ever
# (seen as a rank that never exits in 2 of 24 two-process runs on a loaded 2-core machine; the destructor runs when
# the DDP reducer or the group is freed). A barrier waits for the collectives to finish, not for the workers to let
# go of them.
PROCESS_GROUP_SETTLE_SECONDS = 0.25


class NonFiniteLossError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss."""


class InjectedFault(RuntimeError):
    """The fault requested through VLP_FAULT_AT_STEP."""


def learning_rate_at(step, args):
    """Linear warm-up to the peak, then cosine decay to `min_lr_ratio` of the peak at `max_steps`."""
    if args.warmup_steps and step < args.warmup_steps:
        return args.learning_rate * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return args.learning_rate * (args.min_lr_ratio + (1.0 - args.min_lr_ratio) * cosine)


def make_optimizer(model, args, log=print):
    """AdamW without weight decay on biases, norms, embeddings' special tokens and position grids; fused into one
    kernel per step with `optim=adamw_torch_fused` where PyTorch has that kernel for the parameters (else, said
    through `log`, its default implementation)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        plain = parameter.ndim < 2 or "LayerNorm" in name or "layernorm" in name or "token" in name
        (no_decay if plain else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    settings = dict(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2))
    if args.optim == "adamw_torch_fused":
        try:
            return torch.optim.AdamW(groups, fused=True, **settings)
        except (RuntimeError, ValueError) as error:  # no fused kernel for these parameters' device or dtype
            log(f"optim=adamw_torch_fused: {error}; using PyTorch's default AdamW implementation")
    return torch.optim.AdamW(groups, **settings)


def code_version():
    """The package version plus the git commit when run from a checkout."""
    from importlib import metadata

    version = metadata.version("vlp") if _has_distribution("vlp") else "unknown"
    head = os.path.join(os.path.dirname(__file__), "..", "..", ".git", "HEAD")
    try:
        with open(head, encoding="utf-8") as handle:
            ref = handle.read().strip()
        if ref.startswith("ref:"):
            with open(os.path.join(os.path.dirname(head), *ref[5:].split("/")), encoding="utf-8") as handle:
                ref = handle.read().strip()
        return f"{version}+{ref[:12]}"
    except OSError:
        return version


def _has_distribution(name):
    from importlib import metadata

    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


# ModelArguments that are VLPConfig keys of the same name (the vocabulary comes from the tokenizer).
MODEL_CONFIG_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "image_size",
    "patch_size",
    "max_position_embeddings",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "mim_target",
    "mim_loss",
    "contrastive_temperature",
)


def build_model(model_args, tokenizer, seed, data_args=None, objectives=()):
    """A fresh VLPForPreTraining sized by `model_args` (vocabulary from the tokenizer), or one loaded from a folder.

    With grouped matching among the objectives, the model gets one segment embedding per grid cell and a position
    table long enough for the grouped texts.
    """
    if model_args.init_from:
        return VLPForPreTraining.from_pretrained(model_args.init_from)
    set_seed(seed)
    sizes = {key: getattr(model_args, key) for key in MODEL_CONFIG_KEYS}
    sizes["contrastive_temperature_range"] = (
        model_args.contrastive_min_temperature,
        model_args.contrastive_max_temperature,
    )
    if "gitm" in objectives and data_args is not None:
        sizes["num_text_segments"] = data_args.gitm_rows * data_args.gitm_cols
        sizes["max_position_embeddings"] = max(sizes["max_position_embeddings"], data_args.gitm_max_length)
    config = VLPConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **sizes)
    return VLPForPreTraining(config)


def fsdp_requested():
    """Whether the launcher asked for FSDP (`accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def enable_fsdp_on_cpu(accelerator, mixed_precision):
    """Turn FSDP on for a multi-process CPU run (gloo), as accelerate does on GPUs.

    accelerate (1.15) enables FSDP only for accelerator devices and silently trains a CPU run with DDP; FSDP2
    (`fully_shard`) itself runs on CPU over gloo, so the plugin the launcher configured (environment variables) is
    installed in the shared state before `prepare`. Used for tests and debugging; GPU runs take accelerate's path.
    """
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.state import PartialState

    plugin = FullyShardedDataParallelPlugin()
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # AcceleratorState re-reads it


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
        account_step(run, batches, losses, started, fetched)
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


@dataclass
class Run:
    """What one pretraining run holds from step to step (built by `start_run`)."""

    accelerator: Accelerator
    model_args: Any
    data_args: Any
    train_args: Any
    data: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    teacher: torch.nn.Module | None
    guide: GuidedMasking | None
    state: checkpointing.LoopState
    logger: MetricLogger | None = None
    weights: dict = field(default_factory=dict)
    batches: Any = None
    sampler: GlobalBatchSampler | None = None
    stream: Any = None
    recorder: Any = None
    scalar_parameters: list = field(default_factory=list)
    lost_samples: int = 0
    placeholder: dict | None = None
    progress: Any = None
    fault_step: int = -1
    nonfinite_steps: set = field(default_factory=set)
    timing: dict = field(default_factory=dict)
    window: dict = field(default_factory=dict)

    @property
    def output_dir(self):
        return self.train_args.output_dir

    @property
    def main(self):
        return self.accelerator.is_main_process

    @property
    def fsdp(self):
        return self.accelerator.distributed_type == DistributedType.FSDP


@dataclass
class StepBatches:
    """One optimizer step's micro-batches on this process; a micro-batch with no sample (`empty`) is the
    placeholder batch, run with its loss times zero."""

    micro: list
    empty: list
    skipped: list  # (index, reason) of this process's unreadable samples
    real: int  # samples this process consumed: padding excluded, unreadable ones included
    sizes: list  # micro-batch sizes, which decide whether every process can take part in the gathered ITC loss

    @property
    def real_batches(self):
        return [b for b, blank in zip(self.micro, self.empty) if not blank]


@dataclass
class StepLosses:
    """One step's objectives, their global mean losses and what the step learned about the batch."""

    names: list
    sums: torch.Tensor
    dropped: set
    real_samples: int
    finite: bool = True


def make_accelerator(train_args):
    """The Accelerator: CPU processes over gloo without a GPU; FSDP when requested (on CPU too)."""
    accelerator = Accelerator(
        # Without a GPU, several processes (torchrun / accelerate launch) train on the CPU over gloo.
        cpu=not torch.cuda.is_available(),
        mixed_precision=train_args.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    accelerator.register_save_state_pre_hook(checkpointing.drop_tied_copies)
    if fsdp_requested() and accelerator.distributed_type == DistributedType.MULTI_CPU:
        enable_fsdp_on_cpu(accelerator, train_args.mixed_precision)
    return accelerator


def start_run(model_args, data_args, train_args):
    """Data, model, optimizer and teacher, prepared and restored from the newest checkpoint (with `resume`)."""
    weights = train_args.objective_weights()
    accelerator = make_accelerator(train_args)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if accelerator.is_main_process:
        os.makedirs(train_args.output_dir, exist_ok=True)
    policy_targets = train_args.masking_target_list() if train_args.masking_policy else ()
    hard = train_args.itm_negatives == "hard"
    data = build_pretraining_data(
        model_args,
        data_args,
        train_args.seed,
        train_args.output_dir,
        accelerator,
        tuple(weights),
        hard,
        policy_masked=policy_targets,
    )
    if fsdp:
        _check_fsdp_validation(len(data.val), train_args, accelerator.num_processes)
    model = build_model(model_args, data.processor.tokenizer, train_args.seed, data_args, tuple(weights))
    scalar_parameters = vector_scalar_parameters(model) if fsdp else []
    guide = GuidedMasking.from_args(train_args, data.processor.tokenizer, model.config.patch_size)
    optimizer = make_optimizer(model, train_args, accelerator.print)
    teacher = None
    if ("mim" in weights and model.config.mim_target == "teacher") or (guide and guide.source == "ema"):
        # An EMA copy of the model (iBOT-style MIM targets, or the guide of attention-guided masking), never trained
        # by gradients, saved with every checkpoint.
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
    model, optimizer = accelerator.prepare(model, optimizer)
    if teacher is not None:
        teacher.to(accelerator.device)
    state = checkpointing.LoopState()
    accelerator.register_for_checkpointing(state)
    if teacher is not None:
        accelerator.register_for_checkpointing(teacher)
    run = Run(
        accelerator,
        model_args,
        data_args,
        train_args,
        data,
        model,
        optimizer,
        teacher,
        guide,
        state,
        weights=weights,
        scalar_parameters=scalar_parameters,
    )
    if data.streaming:
        run.stream = data.stream(
            data_args,
            train_args.per_device_batch_size,
            train_args.seed,
            accelerator.process_index,
            accelerator.num_processes,
            gather_object if accelerator.num_processes > 1 else None,
        )
        # Registered last, after the loop state and the teacher, so that their checkpoint files keep their numbers.
        accelerator.register_for_checkpointing(run.stream)
    _resume(run)
    _open_batches(run)
    run.fault_step = int(os.environ.get(FAULT_ENV, "-1"))
    run.nonfinite_steps = {int(s) for s in os.environ.get(NONFINITE_ENV, "").split(",") if s.strip()}
    run.progress = tqdm(
        total=train_args.max_steps,
        initial=state.step,
        disable=not (run.main and train_args.progress_bar),
        desc="pretrain",
        dynamic_ncols=True,
    )
    run.timing = {"data": 0.0, "compute": 0.0, "steps": 0}
    return run


def _resume(run):
    """Restores the newest checkpoint (with `resume`), writes run.yaml and the source report, opens the logs."""
    accelerator, output_dir, train_args = run.accelerator, run.output_dir, run.train_args
    resume_step, resume_path = checkpointing.latest_checkpoint(output_dir) if train_args.resume else (None, None)
    if resume_path is not None:
        accelerator.load_state(resume_path)
        accelerator.print(f"resumed from {resume_path} (step {run.state.step})")
    report = run.data.source_report
    if run.main:
        _write_run_record(output_dir, run.model_args, run.data_args, train_args, accelerator)
        if report.read or report.entries:
            write_source_report(os.path.join(output_dir, "source_report.json"), report)
            for source, count in sorted(report.read.items()):
                skipped = report.counts().get(source, {})
                accelerator.print(
                    f"source {source}: read {count}, kept {report.kept[source]}, skipped "
                    f"{sum(skipped.values())} {skipped or ''}"
                )
    run.logger = MetricLogger(output_dir, enabled=run.main, tensorboard=train_args.tensorboard, resume_step=resume_step)
    if run.main and resume_step is not None:  # samples skipped after the checkpoint are met again, and listed again
        truncate_jsonl(os.path.join(output_dir, "skipped_samples.jsonl"), resume_step)
    if run.data_args.record_samples:
        run.recorder = _sample_recorder(output_dir, accelerator.process_index, resume_step)
    return resume_step


def _open_batches(run):
    """The batch iterator: the stream's batches, or the map-style loader from the resumed step on."""
    accelerator, train_args = run.accelerator, run.train_args
    if run.stream is not None:
        run.batches = stream_batches(run.stream, run.data.collator)
        # Samples a shuffle buffer held when the checkpoint was written are lost on resume (counted, never repeated).
        lost = torch.tensor([run.stream.lost_total], device=accelerator.device)
        run.lost_samples = int(accelerator.reduce(lost, reduction="sum").item())
        if run.lost_samples:
            accelerator.print(f"resumed stream: {run.lost_samples} sample(s) held in shuffle buffers were lost")
        return
    run.sampler = GlobalBatchSampler(
        len(run.data.train),
        train_args.per_device_batch_size,
        train_args.seed,
        accelerator.process_index,
        accelerator.num_processes,
        train_args.gradient_accumulation_steps,
        start_step=run.state.step,
        max_steps=train_args.max_steps,
    )
    run.batches = iter(run.data.loader(run.sampler, run.data_args.num_workers))


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
    real = sum(_real_count(b) for b in micro)
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
        _record_skipped(batches.skipped, run.state, run.output_dir, step + 1, accelerator)
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
            ema_update(run.teacher.parameters(), _full_parameters(unwrapped), train_args.teacher_momentum)
        state.consecutive_nonfinite = 0
    else:
        grad_norm = torch.tensor(float("nan"))
        state.nonfinite_steps += 1
        state.consecutive_nonfinite += 1
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def account_step(run, batches, losses, started, fetched):
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


def finish_run(run, final_metrics):
    """Logs closed, workers stopped, the stream's skip report merged, and the model, processor and final metrics
    saved (under FSDP every process takes part in gathering the full state dict)."""
    accelerator = run.accelerator
    run.progress.close()
    run.logger.close()
    # Stop this run's DataLoader workers now, while every process still takes part, rather than at interpreter exit
    # (after the process group is gone).
    close_batches(run.batches)
    if run.stream is not None:
        entry = run.stream.report.to_dict()
        reports = gather_object([entry]) if accelerator.num_processes > 1 else [entry]
        if run.main:
            for entry in reports:
                run.data.source_report.merge(SkipReport.from_dict(entry))
            write_source_report(os.path.join(run.output_dir, "source_report.json"), run.data.source_report)
    accelerator.wait_for_everyone()
    full_state = _full_state_dict(run) if run.fsdp else None
    if run.main:
        final_dir = os.path.join(run.output_dir, "model")
        state = {"state_dict": full_state} if run.fsdp else {}
        accelerator.unwrap_model(run.model).save_pretrained(final_dir, **state)
        run.data.processor.save_pretrained(final_dir)
        with open(os.path.join(run.output_dir, "final_metrics.json"), "w", encoding="utf-8") as handle:
            strict_json.dump({"step": run.state.step, **final_metrics}, handle, indent=2)
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:
        time.sleep(PROCESS_GROUP_SETTLE_SECONDS)  # see the constant
    accelerator.end_training()


def _full_state_dict(run):
    """Under FSDP, the gathered full state dict (every process takes part) on the main process: tied weights once,
    the 1-element vectors of `vector_scalar_parameters` scalars again."""
    full_state = run.accelerator.get_state_dict(run.model)
    if not run.main or full_state is None:
        return full_state
    # The gathered dict holds tied weights twice (as separate tensors); save_pretrained stores the source only.
    tied = getattr(run.accelerator.unwrap_model(run.model), "_tied_weights_keys", None) or {}
    if isinstance(tied, dict):
        full_state = {
            name: value for name, value in full_state.items() if not (name in tied and tied[name] in full_state)
        }
    for name in run.scalar_parameters:
        full_state[name] = full_state[name].reshape(())
    return full_state


def stream_batches(stream, collate_fn):
    """Batches of a `ShardStream`, epoch after epoch, each recorded as consumed (`observe`) when it is handed out,
    so that a checkpoint written after the step saves cursors just past it. Starts at the stream's current epoch
    and position (where `load_state_dict` put it). Closing the generator stops the epoch's workers."""
    while True:
        iterator = iter(stream.loader(collate_fn))
        try:
            for batch in iterator:
                stream.observe(batch)
                yield batch
        finally:
            close_batches(iterator)
        stream.set_epoch(stream.epoch + 1)


def close_batches(batches):
    """Stop the worker processes behind a batch iterator: a generator is closed, a DataLoader iterator shut
    down; anything else is left alone."""
    if inspect.isgenerator(batches):
        batches.close()
    shutdown = getattr(batches, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()


def _real_count(batch):
    """Samples a batch consumed: streamed positions that are not padding, or the kept and skipped samples."""
    if "stream_positions" in batch:
        return sum(1 for position in batch["stream_positions"] if position[4] >= 0)
    return len(batch["index"]) + len(batch.get("skipped", []))


def _sample_recorder(output_dir, rank, resume_step):
    """A function writing each micro-batch's sample indices (kept and skipped) to samples/rank<R>.jsonl; on resume
    the file is cut back to the checkpoint's step, as the metrics log."""
    path = os.path.join(output_dir, "samples", f"rank{rank}.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if resume_step is not None:
        truncate_jsonl(path, resume_step)
    elif os.path.exists(path):
        os.remove(path)

    def record(step, micro_batches):
        with open(path, "a", encoding="utf-8") as handle:
            for batch in micro_batches:
                indices = [int(i) for i in batch["index"]] + [int(i) for i, _ in batch.get("skipped", [])]
                epochs = sorted(
                    {int(p[0]) for p in batch.get("stream_positions", ())} or {int(e) for e in batch["epoch"]}
                )
                handle.write(
                    strict_json.dumps({"step": step, "epoch": epochs[0] if epochs else None, "index": indices}) + "\n"
                )

    return record


def vector_scalar_parameters(model):
    """Make 0-d parameters (the ITC temperature) 1-element vectors, which FSDP2 can shard ("fully_shard doesn't
    support scalar parameters"); the values and the losses are unchanged. Returns their names, so that the saved
    model gets them back as scalars."""
    names = []
    for module_name, module in model.named_modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            if parameter.ndim == 0:
                setattr(
                    module,
                    name,
                    torch.nn.Parameter(parameter.detach().reshape(1), requires_grad=parameter.requires_grad),
                )
                names.append(f"{module_name}.{name}" if module_name else name)
    return names


def _full_parameters(model):
    """The model's parameters as full tensors (FSDP shards them as DTensors; the EMA teacher holds full ones)."""
    for parameter in model.parameters():
        yield parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter


def _check_fsdp_validation(num_val, train_args, num_processes):
    """Under FSDP every forward pass is collective: validation batches must split evenly over the processes."""
    batches = -(
        -min(num_val, train_args.per_device_batch_size * train_args.eval_batches) // train_args.per_device_batch_size
    )
    if batches % num_processes:
        raise ValueError(
            f"FSDP: validation runs {batches} batches of {train_args.per_device_batch_size} over "
            f"{num_processes} processes; every process must run as many forward passes, so choose "
            f"eval_batches (and enough validation samples) for a multiple of {num_processes} batches"
        )


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


def _record_skipped(skipped, state, output_dir, step, accelerator):
    """Counts unreadable samples (over all processes) and lists them in skipped_samples.jsonl under `step`, the
    step's number in metrics.jsonl (a resumed run cuts the list back to its checkpoint, as the metrics log).

    Called on every process, and only in steps where some process skipped a sample (the objects are gathered).
    """
    gathered = gather_object(skipped) if accelerator.num_processes > 1 else skipped
    state.skipped_samples += len(gathered)
    if accelerator.is_main_process:
        with open(os.path.join(output_dir, "skipped_samples.jsonl"), "a", encoding="utf-8") as handle:
            for index, reason in gathered:
                handle.write(strict_json.dumps({"step": step, "index": int(index), "reason": str(reason)}) + "\n")


def _write_run_record(output_dir, model_args, data_args, train_args, accelerator):
    """The config, code version, seed and process count of this run, next to its logs."""
    import yaml

    record = {
        "config": to_dict((model_args, data_args, train_args)),
        "code_version": code_version(),
        "seed": train_args.seed,
        "num_processes": accelerator.num_processes,
        "torch": str(torch.__version__),
    }
    with open(os.path.join(output_dir, "run.yaml"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(record, handle, sort_keys=False)
