"""ITC under torch.distributed (gloo, CPU), for tests/unit/test_losses.py. Launch with torch.distributed.run:

    python -m torch.distributed.run --nproc_per_node 2 --master_port PORT tests/distributed_itc_check.py OUTDIR

Each process takes its slice of a fixed batch, projects it with a DDP-wrapped module and computes the contrastive
loss divided by (global pairs / world size), as the model does, and the summed loss with true pairs left out
(`matches` over the gathered batch, and over its own pairs only). It writes its summed loss, count, normalized loss,
the gradients of its own features and the DDP-averaged parameter gradients to OUTDIR/rank<r>.pt; rank 0 also writes
the batch and the initial parameters, from which the test recomputes everything on the full batch in one process.
"""

import math
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vlp.modeling_vlp.losses_vlp import contrastive_loss

GLOBAL_BATCH, TEXT_DIM, IMAGE_DIM, EMBED_DIM = 8, 6, 5, 4


def global_matches():
    """(texts, images) truth over the whole batch: two pairs across the halves, one inside the first."""
    matches = torch.eye(GLOBAL_BATCH, dtype=torch.bool)
    matches[1, 5] = matches[6, 2] = matches[0, 3] = True
    return matches


class Projector(nn.Module):
    """Text and image projections and a learnable log logit scale, as in the contrastive head."""

    def __init__(self):
        super().__init__()
        self.text = nn.Linear(TEXT_DIM, EMBED_DIM, dtype=torch.float64)
        self.image = nn.Linear(IMAGE_DIM, EMBED_DIM, dtype=torch.float64)
        self.log_scale = nn.Parameter(torch.tensor(math.log(5.0), dtype=torch.float64))

    def forward(self, text, image):
        return self.text(text), self.image(image), self.log_scale.exp()


def main(outdir):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    generator = torch.Generator().manual_seed(0)
    text_inputs = torch.randn(GLOBAL_BATCH, TEXT_DIM, generator=generator, dtype=torch.float64)
    image_inputs = torch.randn(GLOBAL_BATCH, IMAGE_DIM, generator=generator, dtype=torch.float64)
    torch.manual_seed(1)
    model = Projector()
    initial = {name: value.detach().clone() for name, value in model.state_dict().items()}
    ddp = DistributedDataParallel(model)

    local = GLOBAL_BATCH // world
    rows = slice(rank * local, (rank + 1) * local)
    text, image, scale = ddp(text_inputs[rows], image_inputs[rows])
    text.retain_grad()
    image.retain_grad()
    summed, count = contrastive_loss(text, image, scale)
    with torch.no_grad():  # false-negative elimination: over the gathered batch, and this process's pairs only
        matched = contrastive_loss(text, image, scale, matches=global_matches())[0]
        local_matched = contrastive_loss(text, image, scale, matches=global_matches()[rows, rows])[0]
    loss = summed / (GLOBAL_BATCH / world)
    loss.backward()

    result = {
        "world": world,
        "summed": summed.detach(),
        "matched": matched,
        "local_matched": local_matched,
        "count": count,
        "loss": loss.detach(),
        "text_grad": text.grad,
        "image_grad": image.grad,
        "param_grads": {name: param.grad for name, param in model.named_parameters()},
    }
    if rank == 0:
        result.update(text_inputs=text_inputs, image_inputs=image_inputs, initial=initial)
    torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
    # Release DDP's reducer and line the processes up before the group goes: tearing the group down under a live
    # reducer could hang at exit once in a while.
    del ddp
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
