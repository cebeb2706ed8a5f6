"""report.md and PNG plots of a study from its results.json, costs and run folders."""

from __future__ import annotations

import json
import os

import numpy as np

from ...model_cards import is_primary
from ..statistics import MIN_SEEDS_FOR_CLAIMS


def _fmt(value, digits=3):
    return "—" if value is None else f"{value:.{digits}f}"


def _cell(entry):
    if entry is None:
        return "—"
    text = _fmt(entry["mean"])
    if "low" in entry:
        text += f" [{_fmt(entry['low'])}, {_fmt(entry['high'])}]"
    return text


def _difference_cell(entry):
    if entry is None:
        return "—"
    text = f"{entry['difference']:+.3f}"
    if "low" in entry:
        text += f" [{entry['low']:+.3f}, {entry['high']:+.3f}]"
    if "p_holm" in entry:
        text += f", p_Holm {entry['p_holm']:.3f}" + (" *" if entry.get("significant") else "")
    return text


def _report_metrics(results):
    """The metrics the tables show: the declared primary ones first, then validation figures of every run."""
    every = sorted(set().union(*(set(m["metrics"]) for m in results["mixes"].values())) if results["mixes"] else ())
    # Floors and score - floor differences of a primary figure are shown beside it (the floors table), not as one.
    primary = [
        m
        for m in every
        if is_primary(m, results["primary_metrics"]) and ".floors." not in m and ".differences." not in m
    ]
    headline = [m for m in every if m.startswith("val.") and m.endswith(("_accuracy", "_loss"))]
    return primary, [m for m in headline if m not in primary], every


#: z(1 - 0.05 / 2) + z(0.80): a difference this many standard errors large is found 80 % of the time at alpha 0.05.
_POWER_Z = 1.959964 + 0.841621


def minimum_detectable_effect(low, high, confidence=0.95):
    """The smallest difference found with 80 % power at a two-sided 5 % level, from a difference's interval:
    (z_0.975 + z_0.80) x its standard error, the error read off the interval's width."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return _POWER_Z * (high - low) / (2 * z)


def _power_lines(results, primary):
    """Per primary metric, the minimum detectable effect of the design (the median over the mixes compared)."""
    rows = []
    for metric in primary:
        entries = [d[metric] for d in results["differences"].values() if metric in d and "low" in d[metric]]
        if entries:
            effects = [minimum_detectable_effect(e["low"], e["high"]) for e in entries]
            rows.append(f"| {metric} | {np.median(effects):.3f} | {entries[0]['interval_over']} |")
    if not rows:
        return []
    return [
        "## Power",
        "",
        "The smallest difference to the baseline this design finds 80 % of the time (two-sided "
        "5 % level, before Holm), from the width of the measured difference intervals (median over the mixes): "
        "'no difference' reads as 'no difference larger than this'.",
        "",
        "| metric | minimum detectable effect | variation covered |",
        "|---|---|---|",
        *rows,
        "",
    ]


def frequency_buckets(results, output_dir):
    """{(bucket, count_low, count_high): {mix: [acc_r per seed]}} from each run's evaluation.json (bucket 0: pairs
    held out of pretraining)."""
    buckets = {}
    for mix in results["mixes"]:
        for seed in results["seeds"]:
            path = os.path.join(output_dir, "runs", mix, f"seed{seed}", "evaluation.json")
            if not os.path.exists(path):
                continue
            with open(path, encoding="utf-8") as handle:
                table = json.load(handle).get("suites", {}).get("frequency", {}).get("buckets", [])
            for bucket in table:
                key = (bucket["bucket"], bucket["count_low"], bucket["count_high"])
                value = bucket["score"]["acc_r"]["value"]
                if value is not None:
                    buckets.setdefault(key, {}).setdefault(mix, []).append(value)
    return buckets


def _frequency_plot(results, output_dir, plt):
    """acc_r against the pretraining count of the named pair (log scale, the bucket's geometric centre) per mix:
    the mean over seeds, bars spanning the seeds; held-out pairs (bucket 0) as a separate marker on the left.
    Returns the file name, or None without frequency results."""
    import matplotlib.ticker

    buckets = frequency_buckets(results, output_dir)
    seen = sorted(key for key in buckets if key[0] > 0)
    if not seen:
        return None
    figure, axis = plt.subplots(figsize=(5.2, 3.2))
    held = [key for key in buckets if key[0] == 0]
    for number, mix in enumerate(results["mixes"]):
        centres = {key: float(np.sqrt(max(key[1], 1.0) * key[2])) for key in seen}
        points = [(centres[key], buckets[key][mix]) for key in seen if mix in buckets[key]]
        if not points:
            continue
        x = [p[0] for p in points]
        means = [float(np.mean(v)) for _, v in points]
        spread = np.array([[m - min(v), max(v) - m] for m, (_, v) in zip(means, points)]).T
        axis.errorbar(x, means, yerr=spread, marker="o", capsize=3, label=mix, color=f"C{number}")
        if held and mix in buckets[held[0]]:
            left = seen[0][1] / 3
            axis.errorbar([left], [float(np.mean(buckets[held[0]][mix]))], marker="s", color=f"C{number}")
    if held:
        axis.annotate("held out", (seen[0][1] / 3, axis.get_ylim()[0]), fontsize=7, ha="center", va="bottom")
    axis.axhline(0.5, linestyle="--", linewidth=1, color="grey", label="chance")
    axis.set_xscale("log")
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only
    axis.set_xlabel("pretraining count of the named colour-shape pair", fontsize=8)
    axis.set_ylabel("foils acc_r", fontsize=8)
    axis.set_title("rare concepts: acc_r against frequency (mean of the seeds; bars: their range)", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(os.path.join(output_dir, "frequency.png"), dpi=100)
    plt.close(figure)
    return "frequency.png"


def _rare_concept_lines(results, output_dir):
    """The frequency suite per mix: the slope of acc_r per decade of pretraining count, held-out pairs, and acc_r
    per count bucket (mean over seeds, from each run's evaluation.json)."""
    mixes = list(results["mixes"])
    figures = {
        "slope of acc_r per decade of pair count": "eval.suites.frequency.slope.score",
        "held-out pairs: acc_r": "eval.suites.frequency.held_out.score.acc_r",
        "held-out minus seen pairs: acc_r": "eval.suites.frequency.held_out_versus_seen.value",
    }
    present = {name: key for name, key in figures.items() if any(key in results["mixes"][m]["metrics"] for m in mixes)}
    if not present:
        return []
    lines = [
        "## Rare concepts",
        "",
        "acc_r of colour and shape foils against how often the colour-shape pair they "
        "name occurs in the pretraining world, and on pairs held out of pretraining (after Udandarao et al. "
        "2024).",
        "",
        "| figure | " + " | ".join(mixes) + " |",
        "|---|" + "---|" * len(mixes),
    ]
    for name, key in present.items():
        lines.append(f"| {name} | " + " | ".join(_cell(results["mixes"][m]["metrics"].get(key)) for m in mixes) + " |")
    buckets = frequency_buckets(results, output_dir)
    if buckets:
        lines += [
            "",
            "acc_r per bucket of pretraining count (mean over seeds; bucket 0: held-out pairs):",
            "",
            "| bucket | pair count | " + " | ".join(mixes) + " |",
            "|---|---|" + "---|" * len(mixes),
        ]
        for (number, low, high), values in sorted(buckets.items()):
            cells = [_fmt(float(np.mean(values[m]))) if m in values else "—" for m in mixes]
            lines.append(f"| {number} | {low:.0f}–{high:.0f} | " + " | ".join(cells) + " |")
    return lines + [""]


def _floor_cell(score, floor):
    """A floor's figure, marked when the score's interval does not clear it (lower bound at or below the floor)."""
    if floor is None:
        return "—"
    low = score.get("low", score["mean"]) if score else None
    cleared = low is not None and low > floor["mean"]
    return _cell(floor) + ("" if cleared else " (not cleared)")


def _floors_of(metric, every):
    """The floor figures of a score figure: 'x.score.acc_r' -> every 'x.floors.<floor>.acc_r'."""
    if ".score." not in metric:
        return []
    prefix, figure = metric.rsplit(".score.", 1)
    return [
        m
        for m in every
        if m.startswith(f"{prefix}.floors.") and m.endswith(f".{figure}") and m.count(".") == metric.count(".") + 1
    ]


def _uncleared(values, metrics, every):
    """The metrics whose score (a mix's figures `values`) does not clear one of its floors."""
    return {
        m
        for m in metrics
        for floor in _floors_of(m, every)
        if _floor_cell(values.get(m), values.get(floor)).endswith("(not cleared)")
    }


def _words(name, differences, metrics, below=frozenset()):
    """One line: where a mix helps or hurts, only for differences whose interval excludes zero after Holm; a metric
    in `below` (the mix's or the baseline's score does not clear a floor) is said to be so."""

    def said(m, d):
        return f"{m} ({d['difference']:+.3f}{'; a score not above its floors' if m in below else ''})"

    helps = [
        said(m, d) for m, d in differences.items() if d.get("significant") and d["difference"] > 0 and m in metrics
    ]
    hurts = [
        said(m, d) for m, d in differences.items() if d.get("significant") and d["difference"] < 0 and m in metrics
    ]
    if not helps and not hurts:
        return f"- **{name}**: no difference to the baseline whose interval excludes zero after the Holm correction."
    parts = []
    if helps:
        parts.append("higher on " + ", ".join(helps))
    if hurts:
        parts.append("lower on " + ", ".join(hurts))
    return f"- **{name}**: " + "; ".join(parts) + " (losses: lower is better)."


def write_report(study, results, costs, output_dir):
    """Writes report.md and the plots into `output_dir`."""
    plots = write_plots(study, results, output_dir) + write_examples(study, results, output_dir)
    primary, headline, every = _report_metrics(results)
    lines = _header_lines(study, results)
    for title, metrics in (("Primary metrics", primary), ("Validation during pretraining", headline)):
        lines += _metric_tables(results, title, metrics)
    lines += _floor_lines(results, primary, every)
    lines += _power_lines(results, primary)
    lines += _rare_concept_lines(results, output_dir)
    lines += _words_lines(results, primary, headline, every)
    lines += _cost_lines(study, results, costs)
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in plots]
    lines += ["", f"All figures: `results.json` ({len(every)} metrics per mix)."]
    with open(os.path.join(output_dir, "report.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def _header_lines(study, results):
    """Title, question, mixes and budget; with one seed, first of all, that the study shows no evidence about runs."""
    seeds = results["seeds"]
    lines = [f"# Study `{results['study']}`", ""]
    if len(seeds) < MIN_SEEDS_FOR_CLAIMS:
        lines += [
            "**One seed: this study shows no evidence about training runs.** With one seed, "
            "intervals cover the sampling of evaluation items only, not the variation between "
            "training runs, so no difference is starred or named below.",
            "",
        ]
    if study.get("description"):
        lines += [study["description"], ""]
    complete = "" if results.get("complete") else " **Incomplete: some runs have not finished.**"
    lines += [f"Mixes: {', '.join(results['mixes'])}; baseline `{results['baseline']}`; seeds {seeds}." + complete, ""]
    keys = ("max_steps", "per_device_batch_size", "gradient_accumulation_steps", "num_scenes")
    budget = {k: v for k, v in study["base"].items() if k in keys}
    steps = {mix: data.get("max_steps", budget.get("max_steps")) for mix, data in results["mixes"].items()}
    if len(set(steps.values())) <= 1:
        lines += [f"Budget per run: {budget} (equal for every mix).", ""]
    else:
        flops = ", ".join(f"{mix} {data.get('total_flops', 0):.3g}" for mix, data in results["mixes"].items())
        budget.pop("max_steps", None)
        lines += [
            f"Budget per run: {budget}; steps per mix {steps}, so that the mixes get about the same compute "
            f"(estimated model FLOPs per run: {flops}).",
            "",
        ]
    lines += [
        "Intervals are 95 % bootstrap intervals; differences to the baseline use a paired bootstrap, "
        "hierarchical over seeds then items where items were saved. `*`: the interval excludes zero after a "
        "Holm correction across the metrics compared for that mix.",
        "",
    ]
    return lines


def _metric_tables(results, title, metrics):
    """Each mix's value of `metrics`, then each mix's difference to the baseline."""
    if not metrics:
        return []
    mixes, baseline = results["mixes"], results["baseline"]
    others = [m for m in mixes if m != baseline]
    lines = [f"## {title}", "", "| metric | " + " | ".join(mixes) + " |", "|---|" + "---|" * len(mixes)]
    for metric in metrics:
        row = [_cell(mixes[mix]["metrics"].get(metric)) for mix in mixes]
        lines.append(f"| {metric} | " + " | ".join(row) + " |")
    lines += ["", "Difference to the baseline:", "", "| metric | " + " | ".join(others) + " |"]
    lines.append("|---|" + "---|" * len(others))
    for metric in metrics:
        row = [_difference_cell(results["differences"].get(mix, {}).get(metric)) for mix in others]
        lines.append(f"| {metric} | " + " | ".join(row) + " |")
    return lines + [""]


def _floor_lines(results, primary, every):
    """The floors of each primary metric, with `(not cleared)` where a mix's lower bound does not exceed one."""
    floor_rows = [(metric, floor) for metric in primary for floor in _floors_of(metric, every)]
    if not floor_rows:
        return []
    mixes = results["mixes"]
    lines = [
        "## Floors of the primary metrics",
        "",
        "What the same items give without the information the score is meant to need: the same model with "
        "a blank or mismatched image, a bag of words that never sees an image (`text_only`), chance. A "
        "score means something only above its floors: `(not cleared)` marks a mix whose score's lower "
        "bound does not exceed the floor.",
        "",
        "| metric | floor | " + " | ".join(mixes) + " |",
        "|---|---|" + "---|" * len(mixes),
    ]
    for metric, floor in floor_rows:
        name = floor[len(metric.split(".score.")[0]) + len(".floors.") :].rsplit(".", 1)[0]
        row = [_floor_cell(mixes[mix]["metrics"].get(metric), mixes[mix]["metrics"].get(floor)) for mix in mixes]
        lines.append(f"| {metric} | {name} | " + " | ".join(row) + " |")
    return lines + [""]


def _words_lines(results, primary, headline, every):
    """ "In words": what survives Holm with seed-level evidence, per mix; one seed names nothing."""
    baseline, mixes = results["baseline"], results["mixes"]
    lines = ["## In words", ""]
    for mix in mixes:
        if mix == baseline:
            continue
        if len(results["seeds"]) < MIN_SEEDS_FOR_CLAIMS:
            lines.append(f"- **{mix}**: one seed; no claim.")
            continue
        below = _uncleared(mixes[mix]["metrics"], primary, every) | _uncleared(
            mixes[baseline]["metrics"], primary, every
        )
        lines.append(_words(mix, results["differences"].get(mix, {}), set(primary) | set(headline), below))
    return lines


def _cost_lines(study, results, costs):
    """Measured step time and throughput per mix, and the estimated model FLOPs."""
    lines = [
        "",
        "## Cost",
        "",
        "| mix | step time (s) | samples/s | model FLOPs per step (estimate) | per run |",
        "|---|---|---|---|---|",
    ]
    for mix, data in results["mixes"].items():
        times = [c for key, c in costs.items() if key.split("/")[0] == mix]
        step = np.mean([c["step_time"] for c in times if c.get("step_time")]) if times else None
        rate = np.mean([c["samples_per_second"] for c in times if c.get("samples_per_second")]) if times else None
        total = data.get("total_flops", data["step_flops"] * study["base"].get("max_steps", 0))
        lines.append(f"| {mix} | {_fmt(step)} | {_fmt(rate, 1)} | {data['step_flops']:.3g} | {total:.3g} |")
    return lines


#: Validation figures drawn against steps in learning_curves.png, where a run logged more than one evaluation.
VALIDATION_CURVES = ("itm_accuracy", "mlm_accuracy", "colour_word_accuracy", "gitm_accuracy")


def curve_panels(curves, validation):
    """The panels of learning_curves.png as (split, figure): every training loss, then each of VALIDATION_CURVES
    that some mix logged at more than one step. `curves` and `validation`: {mix: [metrics.jsonl records]}."""
    losses = sorted({k for records in curves.values() for r in records for k in r if k.endswith("_loss")})
    accuracies = [
        name
        for name in VALIDATION_CURVES
        if any(sum(name in r for r in records) > 1 for records in validation.values())
    ]
    return [("train", loss) for loss in losses] + [("val", name) for name in accuracies]


def write_plots(study, results, output_dir):
    """Learning curves, per-metric bars with intervals, and (when the runs have them) accuracy against concept
    frequency; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    written = []
    seed = results["seeds"][0]
    curves, validation = {}, {}
    for mix in results["mixes"]:
        path = os.path.join(output_dir, "runs", mix, f"seed{seed}", "metrics.jsonl")
        if os.path.exists(path):
            records = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
            curves[mix] = [r for r in records if r.get("split") == "train"]
            validation[mix] = [r for r in records if r.get("split") == "val"]
    panels = curve_panels(curves, validation)
    if panels:
        columns = min(4, len(panels))
        rows = -(-len(panels) // columns)
        figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False)
        for axis in axes.flat[len(panels) :]:
            axis.axis("off")
        # One colour per mix in every panel (a mix missing from a panel keeps its colour elsewhere), one legend.
        colour = {mix: f"C{number % 10}" for number, mix in enumerate(results["mixes"])}
        for axis, (split, name) in zip(axes.flat, panels):
            for mix in curves:
                records = curves[mix] if split == "train" else validation[mix]
                points = [(r["step"], r[name]) for r in records if name in r]
                if points:
                    axis.plot(*zip(*points), color=colour[mix], marker="." if split == "val" else None)
            axis.set_title(f"{split} {name}", fontsize=9)
            axis.set_xlabel("step", fontsize=8)
            if split == "val" and name == "itm_accuracy":
                axis.axhline(0.5, linestyle="--", linewidth=1, color="grey")
        handles = [Line2D([], [], color=colour[mix], label=mix) for mix in curves]
        if ("val", "itm_accuracy") in panels:
            handles.append(Line2D([], [], color="grey", linestyle="--", linewidth=1, label="chance"))
        figure.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
        figure.suptitle(f"seed {seed}", x=0.01, ha="left", fontsize=8)
        figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (2.8 * rows)))
        figure.savefig(os.path.join(output_dir, "learning_curves.png"), dpi=100)
        plt.close(figure)
        written.append("learning_curves.png")
    primary, headline, every = _report_metrics(results)
    panels = [m for m in primary + headline if m.endswith(("accuracy", "acc_r", "score"))][:12]
    if panels:
        written.append(_metric_panels(results, panels, every, os.path.join(output_dir, "metrics.png"), plt))
    frequency = _frequency_plot(results, output_dir, plt)
    if frequency:
        written.append(frequency)
    return written


def _short_name(metric):
    """A panel title: the metric's path without the evaluation-file prefixes."""
    for prefix in ("eval.suites.", "val."):
        metric = metric[len(prefix) :] if metric.startswith(prefix) else metric
    return metric.replace(".phenomena.", ".").replace(".score.", ": ").replace(".tasks.", ".")


def _metric_panels(results, metrics, every, path, plt):
    """One small panel per metric, three a row: the mixes as bars with their intervals, each floor of the metric
    (its mean over the mixes) as a dashed line."""
    mixes = list(results["mixes"])
    columns = min(3, len(metrics))
    rows = -(-len(metrics) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.6 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, metric in zip(axes.flat, metrics):
        entries = [results["mixes"][mix]["metrics"].get(metric) for mix in mixes]
        means = [e["mean"] if e else np.nan for e in entries]
        errors = np.array(
            [[e["mean"] - e["low"], e["high"] - e["mean"]] if e and "low" in e else [0, 0] for e in entries]
        ).T
        axis.bar(range(len(mixes)), means, yerr=errors, capsize=3, color=colours[: len(mixes)])
        for number, floor in enumerate(_floors_of(metric, every)):
            values = [
                results["mixes"][m]["metrics"][floor]["mean"] for m in mixes if floor in results["mixes"][m]["metrics"]
            ]
            name = floor[len(metric.split(".score.")[0]) + len(".floors.") :].rsplit(".", 1)[0]
            axis.axhline(
                float(np.mean(values)), linestyle="--", linewidth=1, color=f"C{7 + number % 3}", label=f"floor: {name}"
            )
        axis.set_title(_short_name(metric), fontsize=8)
        axis.set_xticks(range(len(mixes)))
        axis.set_xticklabels(mixes, rotation=20, ha="right", fontsize=7)
        axis.tick_params(axis="y", labelsize=7)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=6, loc="lower right")
    for axis in list(axes.flat)[len(metrics) :]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return os.path.basename(path)


def _run_config(run_dir):
    import yaml

    from ..config import parse_config

    with open(os.path.join(run_dir, "run.yaml"), encoding="utf-8") as handle:
        return parse_config(values=yaml.safe_load(handle)["config"])


def _cell_name(cell, cells):
    """A grouped-matching class as shown: the cell number, or 'none' (negative targets, the class after the cells)."""
    return "none" if cell < 0 or cell >= cells else str(cell)


def write_gitm_examples(run_dir, path, groups=4):
    """A PNG of validation groups of a run trained with grouped matching: the canvas with its cells numbered, each
    caption segment with its true cell and the model's choice ('none' when the caption holds for no cell)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from accelerate import Accelerator

    from ...modeling_vlp import VLPForPreTraining
    from ..objectives import objective_inputs
    from ..pretrain.data import build_pretraining_data

    model_args, data_args, _ = _run_config(run_dir)
    model = VLPForPreTraining.from_pretrained(os.path.join(run_dir, "model")).eval()
    data = build_pretraining_data(model_args, data_args, 0, run_dir, Accelerator(cpu=True), ("mlm", "itm", "gitm"))
    samples = [data.val[i] for i in range(groups)]
    batch = data.val_collator(samples)
    with torch.no_grad():
        logits = model(**objective_inputs("gitm", batch, {})).gitm_logits
    predicted = logits.argmax(-1)
    processor = data.processor.image_processor
    mean = torch.tensor(processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    figure, axes = plt.subplots(1, groups, figsize=(3.6 * groups, 4.6), squeeze=False)
    for column, sample in enumerate(samples):
        group = sample["gitm"]
        axis = axes[0][column]
        axis.imshow((group["pixel_values"] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy())
        rows, cols = group["gitm_grid"]
        height, width = group["pixel_values"].shape[-2:]
        for cell in range(rows * cols):
            axis.text(
                (cell % cols + 0.05) * width / cols,
                (cell // cols + 0.2) * height / rows,
                str(cell),
                color="white",
                fontsize=9,
                weight="bold",
            )
        lines = []
        cells = rows * cols
        for position, (text, target) in enumerate(zip(group["group"].segments, group["group"].segment_targets)):
            guess = int(predicted[column, position])
            mark = "ok" if (guess == cells and target < 0) or guess == target else "x"
            lines.append(f"{text[:56]} -> {_cell_name(target, cells)} / {_cell_name(guess, cells)} {mark}")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_xlabel("\n".join(lines), fontsize=6, loc="left")
    figure.suptitle("caption -> true cell / model's cell", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")  # the caption lines below the panels, whole
    plt.close(figure)


def write_examples(study, results, output_dir):
    """Example masks of the attention-guided mix (`masks_for`) and grouped-matching assignments of the first mix
    with grouped matching, from the first seed's runs; returns the file names written."""
    from ..evaluation.mask_report import masks_report

    written = []
    seed = results["seeds"][0]
    masks_mix = study.get("masks_for")
    run = os.path.join(output_dir, "runs", str(masks_mix), f"seed{seed}")
    if masks_mix and os.path.exists(os.path.join(run, "model")):
        overrides = next(m.get("overrides") or {} for m in study["mixes"] if m["name"] == masks_mix)
        folder = os.path.join(output_dir, "masks")
        masks_report(
            run,
            folder,
            policies=("random", overrides.get("masking_policy", "high")),
            num_samples=128,
            scoring=overrides.get("relevance_scoring", "lift"),
        )
        os.replace(os.path.join(folder, "masks.png"), os.path.join(output_dir, "example_masks.png"))
        written.append("example_masks.png")
    for mix in study["mixes"]:
        objectives = (mix.get("overrides") or {}).get("objectives", study["base"].get("objectives", ""))
        run = os.path.join(output_dir, "runs", mix["name"], f"seed{seed}")
        if "gitm" in objectives and os.path.exists(os.path.join(run, "model")):
            write_gitm_examples(run, os.path.join(output_dir, "example_groups.png"))
            written.append("example_groups.png")
            break
    return written
