"""What a pretraining run is built from: the model (`build_model`), the optimizer and its learning-rate schedule,
the accelerator (FSDP on CPU for tests), and the code version written into every run record."""

import math
import os

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import DistributedType, set_seed

from ...modeling_vlp import VLPConfig, VLPForPreTraining
from . import checkpointing


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


def full_parameters(model):
    """The model's parameters as full tensors (FSDP shards them as DTensors; the EMA teacher holds full ones)."""
    for parameter in model.parameters():
        yield parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter


def check_fsdp_validation(num_val, train_args, num_processes):
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
