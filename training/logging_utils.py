"""Run logs: one JSON line per record plus TensorBoard, both cut back to a checkpoint's step on resume."""

import json
import math
import os

from ..processing import strict_json


def _clean(value):
    """JSON-safe scalars: floats stay floats, non-finite floats become strings, tensors become numbers."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def truncate_jsonl(path, last_step):
    """Drop records with step > last_step (written after the checkpoint a run resumes from)."""
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as handle:
        lines = handle.readlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if record.get("step", 0) <= last_step:
            kept.append(strict_json.dumps(record) + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(kept)
    os.replace(tmp, path)
    return len(lines) - len(kept)


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class MetricLogger:
    """Writes {"step", "split", metrics...} records to metrics.jsonl and scalars to TensorBoard.

    `resume_step` cuts both logs back: JSONL lines after it are removed, and TensorBoard is told to purge events at
    later steps (its `purge_step` mechanism), so a resumed run's curves have no duplicated stretch.
    """

    def __init__(self, run_dir, enabled=True, tensorboard=True, resume_step=None):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.writer = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        if resume_step is not None:
            truncate_jsonl(self.path, resume_step)
        elif os.path.exists(self.path):
            os.remove(self.path)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=purge)

    def log(self, step, split, metrics):
        if not self.enabled:
            return
        record = {"step": step, "split": split}
        record.update({key: _clean(value) for key, value in metrics.items()})
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(strict_json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self.writer.add_scalar(f"{split}/{key}", value, step)

    def close(self):
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
