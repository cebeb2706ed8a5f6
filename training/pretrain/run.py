"""A pretraining run's state (`Run`) and its life outside the step: `start_run` (data, model, optimizer, EMA
teacher, resume), the batch streams, `finish_run` (the model, the run record), skipped-sample records."""

import copy
import inspect
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object
from tqdm.auto import tqdm

from ...processing import strict_json
from ...processing.readers.captions import SkipReport
from ..config import to_dict
from ..logging_utils import MetricLogger, truncate_jsonl
from . import checkpointing
from .data import build_pretraining_data, write_source_report
from .factory import (
    build_model,
    check_fsdp_validation,
    code_version,
    make_accelerator,
    make_optimizer,
    vector_scalar_parameters,
)
from .guided_masking import GuidedMasking
from .sampler import GlobalBatchSampler

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
        check_fsdp_validation(len(data.val), train_args, accelerator.num_processes)
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


def real_count(batch):
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


def record_skipped(skipped, state, output_dir, step, accelerator):
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
