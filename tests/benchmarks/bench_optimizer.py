"""The AdamW step inside a pretraining step, per implementation, measured in the same run.

A demo-size model (hidden 256, 4 layers, 64 px images in 16 px patches, batch 32, MLM + ITM) built through
`training.pretrain.make_optimizer` once per `optim` setting (and once with PyTorch's foreach implementation), with the
same weights and batch; the models take their steps in rotation so that drifts of the machine affect all alike.
Prints one JSON object on its last line: median step and optimizer times in seconds per implementation, and
`step_ratio_fused` (the fused step's time over the default implementation's).
"""

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import torch

from vlp.modeling_vlp import VLPConfig, VLPForPreTraining
from vlp.training.pretrain.factory import make_optimizer

BATCH, TEXT, IMAGE, VOCAB = 32, 16, 64, 400


def make_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (BATCH, TEXT), generator=gen)
    selected = torch.rand(BATCH, TEXT, generator=gen) < 0.15
    selected[:, 1] = True
    return dict(
        input_ids=torch.where(selected, torch.full_like(ids, 4), ids),
        attention_mask=torch.ones_like(ids),
        pixel_values=torch.randn(BATCH, 3, IMAGE, IMAGE, generator=gen),
        mlm_labels=torch.where(selected, ids, torch.full_like(ids, -100)),
        itm_labels=torch.randint(0, 2, (BATCH,), generator=gen),
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    config = VLPConfig(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        vocab_size=VOCAB,
        image_size=IMAGE,
        patch_size=16,
        max_position_embeddings=40,
    )
    settings = dict(learning_rate=1e-4, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.98)
    runs = {}
    for name in ("adamw_torch_fused", "adamw_torch", "foreach"):
        torch.manual_seed(0)
        model = VLPForPreTraining(config).train()
        optimizer = make_optimizer(
            model, SimpleNamespace(optim=name if name != "foreach" else "adamw_torch", **settings)
        )
        if name == "foreach":
            optimizer.defaults["foreach"] = True
            for group in optimizer.param_groups:
                group["foreach"] = True
        runs[name] = (model, optimizer)
    batch = make_batch()

    def step(model, optimizer):
        started = time.perf_counter()
        model(**batch).loss.backward()
        optimizer_started = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = time.perf_counter()
        return done - started, done - optimizer_started

    for _ in range(args.warmup):
        for model, optimizer in runs.values():
            step(model, optimizer)
    times = {name: ([], []) for name in runs}
    names = list(runs)
    for i in range(args.steps):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            total, optimizer_time = step(*runs[name])
            times[name][0].append(total)
            times[name][1].append(optimizer_time)
    result = {"batch": BATCH, "steps": args.steps, "threads": torch.get_num_threads()}
    for name, (totals, optimizer_times) in times.items():
        result[f"step_s_{name}"] = statistics.median(totals)
        result[f"optimizer_s_{name}"] = statistics.median(optimizer_times)
    result["step_ratio_fused"] = result["step_s_adamw_torch_fused"] / result["step_s_adamw_torch"]
    result["fused_kernel"] = bool(runs["adamw_torch_fused"][1].defaults.get("fused"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
