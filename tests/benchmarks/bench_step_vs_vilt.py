"""Pretraining step throughput of VLPForPreTraining (MLM only) against transformers' ViltForMaskedLM.

Same size for both (hidden 256, 4 layers, 4 heads, intermediate 1024, vocabulary 1000, 96 px images, patch 16,
24 text tokens, batch 32), the same AdamW implementation (fused, as VLP pretrains; --optim foreach for PyTorch's
foreach one), alternating steps. FLOPs are counted with
torch.utils.flop_counter on the eager attention path of each model (it counts nothing for CPU SDPA). The peak is the
best rate of the step's own matrix-multiply shapes, measured interleaved with the steps.

Prints one JSON object on its last line: ratio (median samples/s of VLP over ViLT), its quartiles, each model's MFU.
"""

import argparse
import json
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from transformers import ViltConfig, ViltForMaskedLM

from vlp.modeling_vlp import VLPConfig, VLPForPreTraining

SIZE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, vocab_size=1000)
IMAGE, PATCH, TEXT, BATCH = 96, 16, 24, 32
MATMUL_OPS = ("aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten.convolution")


def make_models(seed=0):
    torch.manual_seed(seed)
    vlp = VLPForPreTraining(
        VLPConfig(
            **SIZE,
            image_size=IMAGE,
            patch_size=PATCH,
            max_position_embeddings=40,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )
    torch.manual_seed(seed)
    vilt = ViltForMaskedLM(
        ViltConfig(
            **SIZE,
            image_size=IMAGE,
            patch_size=PATCH,
            max_position_embeddings=40,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            max_image_length=-1,
        )
    )
    return vlp, vilt


def make_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, SIZE["vocab_size"], (BATCH, TEXT), generator=gen)
    selected = torch.rand(BATCH, TEXT, generator=gen) < 0.15
    selected[:, 1] = True
    labels = torch.where(selected, ids, torch.full_like(ids, -100))
    ids = torch.where(selected, torch.full_like(ids, 4), ids)
    return dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        token_type_ids=torch.zeros_like(ids),
        pixel_values=torch.randn(BATCH, 3, IMAGE, IMAGE, generator=gen),
        pixel_mask=torch.ones(BATCH, IMAGE, IMAGE, dtype=torch.long),
        labels=labels,
    )


def step_fn(model, optimizer, batch, eager=False):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if isinstance(model, VLPForPreTraining):
        loss = model(**inputs, mlm_labels=batch["labels"], output_attentions=eager).loss
    else:
        loss = model(**inputs, labels=batch["labels"]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class _MatmulShapes(TorchDispatchMode):
    """Records the argument shapes of every matrix multiply of a step."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in ("aten.mm", "aten.bmm"):
            self.calls.append((name, tuple(args[0].shape), tuple(args[1].shape)))
        elif name in ("aten.addmm", "aten.baddbmm"):
            self.calls.append((name.replace("add", ""), tuple(args[1].shape), tuple(args[2].shape)))
        return func(*args, **(kwargs or {}))


def count_flops(model, optimizer, batch):
    counter = FlopCounterMode(display=False)
    with counter:
        step_fn(model, optimizer, batch, eager=True)
    return counter.get_total_flops()


def matmul_shapes(model, optimizer, batch):
    recorder = _MatmulShapes()
    with recorder:
        step_fn(model, optimizer, batch)
    return set(recorder.calls)


def best_matmul_rate(shapes, repeats=5):
    """The highest FLOP/s among the given matrix-multiply shapes (the machine's attainable peak for this step)."""
    best = 0.0
    for name, left, right in shapes:
        a, b = torch.randn(left), torch.randn(right)
        op = torch.bmm if name == "aten.bmm" else torch.mm
        flops = 2 * a.numel() * right[-1]
        op(a, b)
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            op(a, b)
            timings.append(time.perf_counter() - start)
        best = max(best, flops / min(timings))
    return best


def quartiles(values):
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-rounds", type=int, default=3)
    parser.add_argument("--optim", choices=("fused", "foreach"), default="fused", help="AdamW implementation (both)")
    args = parser.parse_args()

    vlp, vilt = make_models()
    models = {"vlp": vlp.train(), "vilt": vilt.train()}
    # The same AdamW implementation for both: the fused one VLP pretrains with (`optim=adamw_torch_fused`), or
    # PyTorch's foreach one.
    implementation = {"fused": {"fused": True}, "foreach": {"foreach": True}}[args.optim]
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, **implementation) for k, m in models.items()}
    batch = make_batch()
    flops = {k: count_flops(models[k], optimizers[k], batch) for k in models}
    shapes = set().union(*(matmul_shapes(models[k], optimizers[k], batch) for k in models))

    for _ in range(args.warmup):
        for k in models:
            step_fn(models[k], optimizers[k], batch)
    times = {k: [] for k in models}
    peaks = []
    peak_every = max(1, args.steps // args.peak_rounds)
    for step in range(args.steps):
        order = ("vlp", "vilt") if step % 2 == 0 else ("vilt", "vlp")
        for k in order:
            start = time.perf_counter()
            step_fn(models[k], optimizers[k], batch)
            times[k].append(time.perf_counter() - start)
        if step % peak_every == 0:
            peaks.append(best_matmul_rate(shapes))
    peak = max(peaks)
    # Per-pair ratio of throughputs; its quartiles show how stable the advantage is.
    ratios = [v_time / p_time for p_time, v_time in zip(times["vlp"], times["vilt"])]
    r_q1, r_med, r_q3 = quartiles(ratios)
    result = {
        "batch": BATCH,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "optim": args.optim,
        "peak_flops": peak,
        "peak_rounds": len(peaks),
    }
    for k in models:
        q1, med, q3 = quartiles(times[k])
        result[f"step_s_{k}"] = med
        result[f"step_s_{k}_q1"] = q1
        result[f"step_s_{k}_q3"] = q3
        result[f"samples_per_s_{k}"] = BATCH / med
        result[f"gflop_per_step_{k}"] = flops[k] / 1e9
        result[f"mfu_{k}"] = flops[k] / med / peak
    result["ratio"] = result["samples_per_s_vlp"] / result["samples_per_s_vilt"]
    result["ratio_pairs_median"] = r_med
    result["ratio_q1"] = r_q1
    result["ratio_q3"] = r_q3
    result["mfu"] = result.pop("mfu_vlp")
    result["target_met"] = bool(result["ratio"] >= 1.10 and r_q1 > 1.0 and result["mfu"] >= result["mfu_vilt"] + 0.05)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
