"""Checkpoints at optimizer-step boundaries that a crash cannot corrupt.

A checkpoint is written by `accelerator.save_state` into a temporary folder, renamed into place (an atomic rename
on one file system), and only then are older checkpoints pruned: the newest complete checkpoint always survives.
"""

import os
import re
import shutil

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


class LoopState:
    """Every piece of loop state that a resumed run needs beyond model, optimizer and RNG states."""

    def __init__(self):
        self.step = 0
        self.nonfinite_steps = 0
        self.consecutive_nonfinite = 0
        self.skipped_samples = 0
        self.samples_seen = 0

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        for key, value in state.items():
            setattr(self, key, value)


def checkpoint_root(output_dir):
    return os.path.join(output_dir, "checkpoints")


def list_checkpoints(output_dir):
    """Complete checkpoints, oldest first, as (step, path)."""
    root = checkpoint_root(output_dir)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = CHECKPOINT_PATTERN.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(root, name)))
    return sorted(found)


def latest_checkpoint(output_dir):
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else (None, None)


def drop_tied_copies(models, weights, output_dir=None):
    """`accelerator.save_state` pre-hook: remove from each state dict the weights that a model declares tied
    (`_tied_weights_keys`, {tied name: source name}) and that share the source's storage, as `save_pretrained`
    does. Without it accelerate drops one of the aliases itself and warns "Removed shared tensor" at every save;
    on `load_state` safetensors restores the alias through the tie either way."""
    for model, state in zip(models, weights):
        module = getattr(model, "module", model)  # DDP wraps the model; the tie is declared on the inner class
        tied = getattr(module, "_tied_weights_keys", None) or {}
        if not isinstance(tied, dict):
            continue
        for key in list(state):
            for target, source in tied.items():
                if key != target and not key.endswith("." + target):
                    continue
                source_key = key[: len(key) - len(target)] + source
                copy, original = state[key], state.get(source_key)
                if original is not None and copy.untyped_storage().data_ptr() == original.untyped_storage().data_ptr():
                    del state[key]


def save_checkpoint(accelerator, output_dir, step, keep):
    """Save state at `step` atomically, then keep only the newest `keep` checkpoints. Returns the path."""
    root = checkpoint_root(output_dir)
    final = os.path.join(root, f"checkpoint-{step}")
    tmp = os.path.join(root, f".tmp-checkpoint-{step}")
    if accelerator.is_main_process:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
