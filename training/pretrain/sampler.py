"""Batches that do not depend on the number of processes.

The global batch of optimizer step `s` is a fixed slice of the epoch's permutation, a function of (seed, epoch) only.
Each process takes its part of each micro-batch, so one process with batch 2B and two processes with batch B see the
same samples at the same step, and a resumed run starts exactly where the checkpoint left off.
"""

import numpy as np
import torch

from ...processing.random_streams import SAMPLER_STREAM


def epoch_permutation(num_samples, seed, epoch):
    """The order of the dataset in `epoch`: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch, SAMPLER_STREAM]).permutation(num_samples)


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields lists of `(epoch, index)` for one process, starting at optimizer step `start_step`.

    An optimizer step consumes `global_batch = per_device * accumulation * world_size` samples; the last incomplete
    global batch of an epoch is dropped (every step has the same size on every process, so no process waits for
    another at the end of an epoch). Micro-batch `m` of process `r` is slice `m * world_size + r` of the step.
    """

    def __init__(
        self,
        num_samples,
        per_device_batch_size,
        seed,
        rank=0,
        world_size=1,
        accumulation_steps=1,
        start_step=0,
        max_steps=None,
    ):
        self.num_samples = num_samples
        self.per_device = per_device_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.accumulation = accumulation_steps
        self.global_batch = per_device_batch_size * accumulation_steps * world_size
        if self.global_batch > num_samples:
            raise ValueError(
                f"global batch {self.global_batch} (per_device_batch_size={per_device_batch_size} x "
                f"gradient_accumulation_steps={accumulation_steps} x processes={world_size}) is larger than "
                f"the dataset ({num_samples} samples)"
            )
        self.steps_per_epoch = num_samples // self.global_batch
        self.start_step = start_step
        self.max_steps = max_steps
        self._order = (None, None)

    def order(self, epoch):
        """The epoch's permutation, computed once per epoch."""
        if self._order[0] != epoch:
            self._order = (epoch, epoch_permutation(self.num_samples, self.seed, epoch))
        return self._order[1]

    def position(self, step):
        """(epoch, step within the epoch) of a global optimizer step."""
        return divmod(step, self.steps_per_epoch)

    def step_batches(self, step):
        """This process's micro-batches of optimizer step `step`, each a list of (epoch, index)."""
        epoch, within = self.position(step)
        order = self.order(epoch)
        start = within * self.global_batch
        batches = []
        for micro in range(self.accumulation):
            offset = start + (micro * self.world_size + self.rank) * self.per_device
            batches.append([(epoch, int(i)) for i in order[offset : offset + self.per_device]])
        return batches

    def __iter__(self):
        step = self.start_step
        while self.max_steps is None or step < self.max_steps:
            yield from self.step_batches(step)
            step += 1

    def __len__(self):
        if self.max_steps is None:
            raise TypeError("an endless GlobalBatchSampler has no length")
        return max(0, self.max_steps - self.start_step) * self.accumulation
