"""Model cards for published VLP checkpoints: the template (`vlp_model_card.md`) and the code that fills it from a run.

Plain data in, text out: `CardInputs` holds what was read from a run folder (config.json, run.yaml, final_metrics.json,
metrics.jsonl records, results.json files) and `render_model_card` returns the README.md text, YAML metadata first.
Nothing here reads files other than the template, or imports the training code.
"""

from __future__ import annotations

import math
import os
import string
from dataclasses import dataclass, field

import yaml

TEMPLATE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vlp_model_card.md")

# Short descriptions of the objectives, by their config names.
OBJECTIVES = {
    "mlm": "masked language modelling: whole words of the caption masked and predicted from the image and the "
    "rest of the caption",
    "itm": "image-text matching: does the caption hold for the image (negatives are captions the data says are "
    "false for it)",
    "mim": "masked image modelling: masked patches reconstructed from the visible ones and the caption",
    "itc": "image-text contrastive: symmetric InfoNCE between text-only and image-only features",
    "wra": "word-region alignment: optimal-transport distance between word and patch states (UNITER)",
    "gitm": "grouped image-text matching: several images in one canvas and several captions in one text; each "
    "caption is assigned to its image or to none",
}

# The pipeline a class of the checkpoint fits, by architecture. The pretraining model has none: it scores image-text
# pairs and fills masked words given an image, which no Hub pipeline does.
PIPELINE_TAGS = {
    "VLPForQuestionAnswering": "visual-question-answering",
    "VLPForConditionalGeneration": "image-text-to-text",
    "VLPForImageTextRetrieval": "zero-shot-image-classification",
}

# Validation metrics of `vlp pretrain` (final_metrics.json): label, metric type, task.
VALIDATION_METRICS = {
    "itm_accuracy": ("ITM accuracy (captions as written, half of them negatives)", "accuracy", "image-text-matching"),
    "mlm_accuracy": ("MLM accuracy (all masked tokens)", "accuracy", "fill-mask"),
    "mlm_concept_accuracy": ("MLM accuracy on masked concept words", "accuracy", "fill-mask"),
    "colour_word_accuracy": ("masked colour-word accuracy, argmax over the colours", "accuracy", "fill-mask"),
    "colour_word_accuracy_open": ("masked colour-word accuracy, argmax over the vocabulary", "accuracy", "fill-mask"),
    "gitm_accuracy": ("grouped matching: caption-to-image assignment accuracy", "accuracy", "image-text-matching"),
    "gitm_accuracy_own": ("grouped matching: accuracy on own captions", "accuracy", "image-text-matching"),
    "gitm_accuracy_easy": ("grouped matching: accuracy on easy distractors", "accuracy", "image-text-matching"),
    "gitm_accuracy_hard": ("grouped matching: accuracy on hard distractors", "accuracy", "image-text-matching"),
    "gitm_exact_match": ("grouped matching: groups assigned exactly right", "exact_match", "image-text-matching"),
}

# The task each suite of `vlp evaluate` measures (model-index `task.type`).
SUITE_TASKS = {
    "foils": "image-text-matching",
    "winoground": "image-text-matching",
    "probes": "feature-extraction",
    "crossmodal": "fill-mask",
    "grounding": "image-text-matching",
    "frequency": "image-text-matching",
}

SYNTHETIC_DATASET = ("vlp-shapes-world", "VLP synthetic shapes world")


@dataclass(frozen=True)
class Figure:
    """One reported number: a point estimate with its 95 % interval (None where there is none)."""

    label: str  # what it is, in words
    metric: str  # model-index metric type, e.g. "accuracy", "acc_r"
    value: float
    low: float | None = None
    high: float | None = None
    n: int | None = None  # items behind it
    task: str = "image-text-matching"  # model-index task type
    dataset: tuple = (*SYNTHETIC_DATASET, "validation")  # (type, name, split)
    interval: str = ""  # what the interval covers
    comparison: str = ""  # differences to floors or to a baseline, in words

    @property
    def has_interval(self):
        return _finite(self.low) and _finite(self.high)


@dataclass
class CardInputs:
    """What a card is filled from, as read from a run folder."""

    repo_id: str
    model_config: dict  # config.json
    run_record: dict  # run.yaml: {config, code_version, seed, num_processes, torch}
    final_metrics: dict | None = None  # final_metrics.json
    train_log: list = field(default_factory=list)  # metrics.jsonl records
    results: list = field(default_factory=list)  # results.json dicts of `vlp evaluate` or `vlp study`
    mix: str | None = None  # this run's mix in a study's results.json
    num_parameters: int | None = None
    license: str | None = None
    datasets: tuple = ()  # Hub dataset ids for the metadata
    files: tuple = ()  # extra files published beside the model (run/, results.json), listed in the card
    code_files: tuple = ()  # the model's and processor's code files published with the weights

    @property
    def config(self):
        return self.run_record.get("config") or {}


# -- small helpers -----------------------------------------------------------------------------------------------------


def _finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value, digits=3):
    return f"{value:.{digits}f}" if _finite(value) else "—"


def _signed(figure_like):
    value, low, high = (figure_like.get(k) for k in ("value", "low", "high"))
    if not _finite(value):
        return "—"
    text = f"{value:+.3f}"
    if _finite(low) and _finite(high):
        text += f" [{low:+.3f}, {high:+.3f}]"
    return text


def _interval(figure):
    return f"[{figure.low:.3f}, {figure.high:.3f}]" if figure.has_interval else "—"


def _count(value):
    if not _finite(value):
        return "—"
    return f"{value:,.0f}" if abs(value) >= 1 else f"{value:g}"


def _duration(seconds):
    if not _finite(seconds):
        return "—"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"


def repo_name(repo_id):
    """The model's name: the part of the repo id after the namespace."""
    return repo_id.rsplit("/", 1)[-1]


def pipeline_tag_for(architectures):
    """The Hub pipeline tag of the first architecture that has one, else None."""
    for name in architectures or ():
        if name in PIPELINE_TAGS:
            return PIPELINE_TAGS[name]
    return None


def objective_weights(config):
    """run.yaml's `objectives` ('mlm,itm:0.5') as {name: weight}."""
    weights = {}
    for item in filter(None, (part.strip() for part in str(config.get("objectives", "")).split(","))):
        name, _, weight = item.partition(":")
        weights[name] = float(weight) if weight else 1.0
    return weights


def data_sources(config):
    """[(kind, name)] of the run's training data: ('shapes', ''), ('folder', basename) or real sources by basename."""
    sources = []
    kind = None
    for part in filter(None, (p.strip() for p in str(config.get("dataset", "shapes")).split(","))):
        prefix, colon, rest = part.partition(":")
        if colon and prefix in ("shards", "captions", "coco"):
            kind, part = prefix, rest
        if kind is None:
            sources.append(("shapes", "") if part == "shapes" else ("folder", os.path.basename(part.rstrip("/"))))
        else:
            sources.append((kind, os.path.basename(part.split("@")[0].rstrip("/"))))
    return sources or [("shapes", "")]


def is_synthetic(config):
    """Whether the run trained on the synthetic shapes world (embedded, or a `vlp data shapes` folder)."""
    return all(kind in ("shapes", "folder") for kind, _ in data_sources(config))


def is_primary(metric, patterns):
    """A pattern 'foils.acc_r' names every figure whose dotted path holds its parts in order (as `vlp study`)."""
    parts = metric.split(".")
    for pattern in patterns:
        position = 0
        for part in pattern.split("."):
            if part not in parts[position:]:
                break
            position = parts.index(part, position) + 1
        else:
            return True
    return False


# -- figures -----------------------------------------------------------------------------------------------------------


def validation_figures(final_metrics, dataset=(*SYNTHETIC_DATASET, "validation")):
    """The figures of `vlp pretrain`'s final validation: accuracies with their Wilson intervals, then the losses."""
    if not final_metrics:
        return []
    accuracies, losses = [], []
    for key, value in final_metrics.items():
        if not _finite(value) or key == "step" or key.endswith(("_ci_low", "_ci_high", "_n")):
            continue
        if key.endswith("_loss"):
            task = "fill-mask" if key.startswith("mlm") else "image-text-matching"
            losses.append(
                Figure(label=f"{key[:-5].upper()} loss", metric="loss", value=float(value), task=task, dataset=dataset)
            )
            continue
        label, metric, task = VALIDATION_METRICS.get(key, (key.replace("_", " "), key, "image-text-matching"))
        low, high = final_metrics.get(f"{key}_ci_low"), final_metrics.get(f"{key}_ci_high")
        has_interval = _finite(low) and _finite(high)
        accuracies.append(
            Figure(
                label=label,
                metric=metric,
                value=float(value),
                low=float(low) if has_interval else None,
                high=float(high) if has_interval else None,
                n=final_metrics.get(f"{key}_n"),
                task=task,
                dataset=dataset,
                interval="Wilson, over validation items" if has_interval else "",
            )
        )
    return accuracies + losses


def _comparison_figure(suite, item, block, dataset):
    """The headline figure of one comparison block of `vlp evaluate` with its score - floor differences."""
    if not isinstance(block, dict) or not block.get("score"):
        return None
    name = block.get("headline") or next(iter(block["score"]))
    score = block["score"].get(name) or next(iter(block["score"].values()))
    if not isinstance(score, dict) or not _finite(score.get("value")):
        return None
    differences = "; ".join(
        f"minus {floor} {_signed(diff)}"
        for floor, diff in (block.get("differences") or {}).items()
        if isinstance(diff, dict)
    )
    has_interval = _finite(score.get("low")) and _finite(score.get("high"))
    return Figure(
        label=f"{suite}: {item} ({name})",
        metric=name,
        value=float(score["value"]),
        low=score.get("low") if has_interval else None,
        high=score.get("high") if has_interval else None,
        n=block.get("n_items"),
        task=SUITE_TASKS.get(suite, "image-text-matching"),
        dataset=dataset,
        interval="bootstrap, over items" if has_interval else "",
        comparison=differences,
    )


def evaluation_figures(results):
    """The headline figures of a `vlp evaluate` results.json (format vlp-evaluation-results), suite by suite."""
    benchmark = results.get("benchmark")
    if benchmark:
        dataset = (benchmark["name"], f"{benchmark['name']} ({os.path.basename(benchmark.get('file', ''))})", "test")
    else:
        dataset = (SYNTHETIC_DATASET[0], f"{SYNTHETIC_DATASET[1]}, evaluation items", "test")
    suites = results.get("suites") or {}
    blocks = []
    for suite in ("foils", "winoground"):
        for item, block in (suites.get(suite) or {}).get("phenomena", {}).items():
            blocks.append((suite, item, block))
    for task, block in (suites.get("probes") or {}).get("tasks", {}).items():
        headline = block.get("headline") or {}
        blocks.append(("probes", f"{task} ({headline.get('representation')}, layer {headline.get('layer')})", headline))
    crossmodal = suites.get("crossmodal") or {}
    for item, block in (crossmodal.get("masked_word") or {}).items():
        blocks.append(("crossmodal", f"masked word: {item}", block))
    blocks.append(("crossmodal", "MIM loss", crossmodal.get("mim")))
    grounding = suites.get("grounding") or {}
    blocks += [("grounding", item, grounding.get(item)) for item in ("pointing", "occlusion")]
    frequency = suites.get("frequency") or {}
    if frequency.get("slope"):
        slope = frequency["slope"]
        blocks.append(
            (
                "frequency",
                "slope of acc_r per decade of pair frequency",
                {
                    "headline": "slope",
                    "score": {"slope": slope.get("score")},
                    "n_items": slope.get("n_items"),
                    "differences": slope.get("differences") or {},
                },
            )
        )
    blocks.append(("frequency", "held-out pairs", frequency.get("held_out")))
    figures = [_comparison_figure(suite, item, block, dataset) for suite, item, block in blocks]
    return [f for f in figures if f is not None]


def study_figures(results, mix=None):
    """This run's mix in a `vlp study` results.json: its primary metrics (or, without any, the validation accuracies
    and losses) as mean and interval, each with the difference to the baseline mix."""
    mixes = results.get("mixes") or {}
    if mix is None and len(mixes) == 1:
        mix = next(iter(mixes))
    if mix not in mixes:
        raise ValueError(
            f"study results.json of {results.get('study')!r} has mixes {sorted(mixes)}; this run's mix "
            f"{mix!r} is not one of them (name it with --mix)"
        )
    metrics = mixes[mix].get("metrics") or {}
    primary = [m for m in metrics if is_primary(m, results.get("primary_metrics") or [])]
    chosen = primary or [m for m in metrics if m.startswith("val.") and m.endswith(("_accuracy", "_loss"))]
    seeds = results.get("seeds") or []
    baseline = results.get("baseline")
    dataset = ("vlp-study", f"study {results.get('study')}, mix {mix}, seeds {seeds}", "evaluation")
    differences = (results.get("differences") or {}).get(mix, {})
    figures = []
    for metric in chosen:
        entry = metrics[metric]
        if not _finite(entry.get("mean")):
            continue
        diff = differences.get(metric)
        comparison = ""
        if mix != baseline and isinstance(diff, dict) and _finite(diff.get("difference")):
            comparison = f"minus baseline `{baseline}` " + _signed(
                {"value": diff["difference"], "low": diff.get("low"), "high": diff.get("high")}
            )
            if _finite(diff.get("p_holm")):
                comparison += f", Holm-adjusted p {diff['p_holm']:.3f}"
        has_interval = _finite(entry.get("low")) and _finite(entry.get("high"))
        over = entry.get("interval_over")
        figures.append(
            Figure(
                label=metric,
                metric=metric.rsplit(".", 1)[-1],
                value=float(entry["mean"]),
                low=entry.get("low") if has_interval else None,
                high=entry.get("high") if has_interval else None,
                task=SUITE_TASKS.get(_suite_of(metric), "image-text-matching"),
                dataset=dataset,
                comparison=comparison,
                interval=f"bootstrap, over {over}" if has_interval and over else "",
            )
        )
    return figures


def _suite_of(metric):
    """The evaluation suite of a study metric ('eval.foils.all.acc_r' -> 'foils'), '' for others."""
    parts = metric.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "eval" else ""


def generic_figures(tree, dataset=("vlp-results", "VLP results", "evaluation"), prefix=""):
    """Every {value, low, high} figure of a results dict of another format, named by its path."""
    figures = []
    if isinstance(tree, dict):
        if _finite(tree.get("value")) and "low" in tree and "high" in tree:
            has_interval = _finite(tree["low"]) and _finite(tree["high"])
            name = prefix.rstrip(".") or "value"
            return [
                Figure(
                    label=name,
                    metric=name.rsplit(".", 1)[-1],
                    value=float(tree["value"]),
                    low=tree["low"] if has_interval else None,
                    high=tree["high"] if has_interval else None,
                    dataset=dataset,
                    interval="as reported" if has_interval else "",
                )
            ]
        for key, value in tree.items():
            figures += generic_figures(value, dataset, f"{prefix}{key}.")
    return figures


def results_figures(results, mix=None):
    """The figures of one results.json: `vlp evaluate`, `vlp study`, or any file of {value, low, high} figures."""
    kind = results.get("format")
    if kind == "vlp-evaluation-results":
        return evaluation_figures(results)
    if kind == "vlp-study-results":
        return study_figures(results, mix)
    return generic_figures(results)


# -- metadata ----------------------------------------------------------------------------------------------------------


def model_index(name, figures):
    """The model-index entry of the figures that have an interval, grouped by (task, dataset); each metric's name
    gives its interval in words."""
    grouped = {}
    for figure in figures:
        if not (_finite(figure.value) and figure.has_interval):
            continue
        grouped.setdefault((figure.task, figure.dataset), []).append(figure)
    results = []
    for (task, (dataset_type, dataset_name, split)), members in grouped.items():
        metrics = []
        for figure in members:
            text = f"{figure.label}; 95 % interval [{figure.low:.4f}, {figure.high:.4f}]"
            if figure.interval:
                text += f" ({figure.interval})"
            if figure.n:
                text += f", n = {figure.n}"
            metrics.append({"type": figure.metric, "value": round(float(figure.value), 6), "name": text})
        results.append(
            {
                "task": {"type": task},
                "dataset": {"type": dataset_type, "name": dataset_name, "split": split},
                "metrics": metrics,
            }
        )
    return [{"name": name, "results": results}] if results else []


def card_tags(config, architectures=()):
    """Tags: the package, the field, the objectives and the data kind."""
    tags = ["vlp", "vision-language", "single-stream", "custom_code"]
    weights = objective_weights(config)
    tags += list(weights)
    if config.get("masking_policy") in ("high", "low", "hint"):
        tags.append("attention-guided-masking")
    if "gitm" in weights:
        tags.append("grouped-image-text-matching")
    if is_synthetic(config):
        tags.append("synthetic-data")
    return list(dict.fromkeys(tags))


def all_figures(inputs):
    """Validation figures, then those of each results.json."""
    figures = validation_figures(inputs.final_metrics, _validation_dataset(inputs.config))
    for results in inputs.results:
        figures += results_figures(results, inputs.mix)
    return figures


def _validation_dataset(config):
    if is_synthetic(config):
        return (*SYNTHETIC_DATASET, "validation")
    names = ", ".join(name for _, name in data_sources(config))
    return ("vlp-pretraining-data", f"held-out pretraining data ({names})", "validation")


def card_metadata(inputs):
    """The card's YAML metadata as a dict (ModelCardData fields; `model-index` when figures have intervals)."""
    architectures = inputs.model_config.get("architectures") or []
    metadata = {"library_name": "transformers"}
    tag = pipeline_tag_for(architectures)
    if tag:
        metadata["pipeline_tag"] = tag
    if inputs.license:
        metadata["license"] = inputs.license
    metadata["tags"] = card_tags(inputs.config, architectures)
    if inputs.datasets:
        metadata["datasets"] = list(inputs.datasets)
    index = model_index(repo_name(inputs.repo_id), all_figures(inputs))
    if index:
        metadata["model-index"] = index
    return metadata


# -- sections ----------------------------------------------------------------------------------------------------------


def model_description(inputs):
    """Architecture and size, from config.json."""
    c = inputs.model_config
    architecture = (c.get("architectures") or ["VLPForPreTraining"])[0]
    grid = c.get("image_size", 0) // max(1, c.get("patch_size", 1))
    size = f"{inputs.num_parameters / 1e6:.2f} M parameters" if inputs.num_parameters else "size not recorded"
    lines = [
        f"`{architecture}` ({size}): a single-stream transformer of the ViLT/UNITER family, pretrained with VLP. "
        "Text tokens and image patches go through one encoder: `[text tokens][image CLS, patches]`, BERT-style word, "
        "position and token-type embeddings for the text, ViT-style patch embeddings with a learned position grid "
        "for the image, and a modality-type embedding added to each.",
        "",
        "| | |",
        "|---|---|",
        f"| hidden size | {c.get('hidden_size')} |",
        f"| layers | {c.get('num_hidden_layers')} |",
        f"| attention heads | {c.get('num_attention_heads')} |",
        f"| MLP width | {c.get('intermediate_size')} |",
        f"| image size / patch size | {c.get('image_size')} px / {c.get('patch_size')} px ({grid} x {grid} patches) |",
        f"| longest text | {c.get('max_position_embeddings')} tokens |",
        f"| vocabulary | {c.get('vocab_size')} word pieces |",
    ]
    if c.get("num_text_segments"):
        lines.append(f"| text segments (grouped matching) | {c['num_text_segments']} |")
    if inputs.num_parameters:
        lines.append(f"| parameters | {inputs.num_parameters:,} |")
    if c.get("dtype"):
        lines.append(f"| weights | {c['dtype']} |")
    return "\n".join(lines)


def objectives_section(config, model_config=None):
    """The objectives with their weights, how they are mixed, and every masking setting that applies."""
    weights = objective_weights(config)
    if not weights:
        return "The run record names no objectives."
    mixing = config.get("mixing", "sum")
    lines = ["| objective | weight | what it trains |", "|---|---|---|"]
    lines += [f"| `{name}` | {weight:g} | {OBJECTIVES.get(name, name)} |" for name, weight in weights.items()]
    lines += [
        "",
        "Mixing: "
        + (
            "every objective every step, losses summed with these weights (`mixing: sum`)."
            if mixing == "sum"
            else "one objective per step, drawn with these weights (`mixing: sample`)."
        ),
        "",
    ]
    policy = config.get("masking_policy") or ""
    targets = [t.strip() for t in str(config.get("masking_targets", "")).split(",") if t.strip()] if policy else []
    settings = []
    if "mlm" in weights and "mlm" not in targets:
        settings.append(
            f"MLM: {config.get('mlm_probability', 0.15):g} of the words masked at random (whole words, 80/10/10)"
        )
    if "mim" in weights:
        target = (model_config or {}).get("mim_target", config.get("mim_target", "pixel"))
        masked = (
            "by the masking policy below"
            if "mim" in targets
            else f"{config.get('mim_probability', 0.4):g} of the patches masked "
            + ("block-wise" if config.get("mim_block") else "at random")
        )
        settings.append(f"MIM: {masked}; targets `{target}`, loss `{config.get('mim_loss', 'l2')}`")
    if "itm" in weights or "wra" in weights:
        negatives = config.get("itm_negatives", "random")
        settings.append(
            f"ITM: negatives `{negatives}`"
            + (
                f", {config.get('itm_probability', 0.5):g} of the pairs given a caption that does not hold"
                if negatives == "random"
                else " (ALBEF: drawn in the batch by ITC similarity)"
            )
        )
    if "gitm" in weights:
        settings.append(
            f"grouped matching: {config.get('gitm_rows')} x {config.get('gitm_cols')} grid "
            f"(`{config.get('gitm_mode')}`), own caption with probability "
            f"{config.get('gitm_own_probability')}, distractors `{config.get('gitm_distractors')}`"
        )
    if policy:
        ratio = (
            f"a fixed ratio of {config['masking_ratio']:g}"
            if config.get("masking_ratio")
            else f"a ratio drawn per step from U[{config.get('masking_ratio_min')}, {config.get('masking_ratio_max')}]"
        )
        text = (
            f"masking policy `{policy}` on {', '.join(f'`{t}`' for t in targets)}: {ratio}, each sample masked "
            f"with probability {config.get('masking_probability')}"
        )
        if config.get("masking_random_share"):
            text += f", {config['masking_random_share']:g} of the masked positions drawn at random"
        if policy != "random":
            text += (
                f"; relevance from `{config.get('guidance_source')}` ({config.get('guidance_layers')} layer(s), "
                f"words ranked by attention from `{config.get('word_relevance_from')}`, patches from "
                f"`{config.get('patch_relevance_from')}`, scoring `{config.get('relevance_scoring')}`)"
            )
            if policy == "hint":
                text += f", {config.get('hint_share')} of the top positions revealed"
            if config.get("joint_masking", "independent") != "independent":
                text += f", joint masking `{config['joint_masking']}`"
            if config.get("guidance_warmup_steps"):
                text += f", random for the first {config['guidance_warmup_steps']} steps"
        settings.append(text)
    if settings:
        lines += ["Masking and negatives:", ""] + [f"- {s}" for s in settings]
    return "\n".join(lines).rstrip()


def data_section(config):
    """What the run trained on: the synthetic world's settings, or the data sources by name."""
    sources = data_sources(config)
    if sources[0][0] == "shapes":
        held_out = config.get("held_out_pairs") or "none"
        return "\n".join(
            [
                "The embedded synthetic shapes world: seeded scenes of coloured shapes (8 shapes, 8 colours, 2 sizes) "
                "rendered on a plain background, with captions from a grammar (attributes, exact counts, spatial "
                "relations, bindings, negation) whose truth in each scene is known.",
                "",
                "| | |",
                "|---|---|",
                f"| training scenes | {_count(config.get('num_scenes'))} |",
                f"| validation scenes | {_count(config.get('val_scenes'))} (a separately seeded world) |",
                f"| world seed | {config.get('world_seed')} |",
                f"| objects per scene | 1 to {config.get('max_objects')} |",
                f"| colour-shape pair frequencies | Zipf, exponent {config.get('zipf_exponent')} |",
                f"| held-out colour-shape pairs | {held_out} |",
                f"| noisy captions | {config.get('noise_rate')} |",
                f"| background noise | {config.get('background_noise')} |",
                f"| image size | {config.get('image_size')} px |",
            ]
        )
    if sources[0][0] == "folder":
        return (
            f"A synthetic shapes world saved with `vlp data shapes` (folder `{sources[0][1]}`); its last "
            f"{config.get('val_scenes')} rows validate."
        )
    listed = "\n".join(f"- `{kind}`: {name}" for kind, name in sources)
    weights = config.get("dataset_weights")
    val = config.get("val_dataset")
    return "\n".join(
        ["Image-caption sources:", "", listed, ""]
        + ([f"Sampling weights: {weights}.", ""] if weights else [])
        + [f"Validation: {'`' + str(val) + '`' if val else 'held-out samples of the sources'}."]
    )


def training_budget(config, run_record, train_log, final_metrics=None):
    """{steps, global_batch, samples_seen, train_seconds, step_time}: from run.yaml and metrics.jsonl (training
    time is the sum of the logged mean step times over their windows; validation is not included)."""
    processes = int(run_record.get("num_processes") or 1)
    global_batch = (
        int(config.get("per_device_batch_size") or 0) * int(config.get("gradient_accumulation_steps") or 1) * processes
    )
    train = sorted((r for r in train_log or () if r.get("split") == "train"), key=lambda r: r.get("step", 0))
    steps = (final_metrics or {}).get("step") or (train[-1]["step"] if train else config.get("max_steps"))
    seen = next((r["samples_seen"] for r in reversed(train) if _finite(r.get("samples_seen"))), None)
    seconds, previous = 0.0, 0
    for record in train:
        if _finite(record.get("step_time")):
            seconds += record["step_time"] * (record["step"] - previous)
        previous = record["step"]
    timed = seconds if train and any(_finite(r.get("step_time")) for r in train) else None
    return {
        "steps": steps,
        "global_batch": global_batch,
        "processes": processes,
        "samples_seen": seen if seen is not None else (steps * global_batch if steps else None),
        "train_seconds": timed,
        "step_time": timed / previous if timed and previous else None,
    }


def budget_section(inputs):
    config = inputs.config
    budget = training_budget(config, inputs.run_record, inputs.train_log, inputs.final_metrics)
    rate = (
        budget["samples_seen"] / budget["train_seconds"] if budget["train_seconds"] and budget["samples_seen"] else None
    )
    lines = [
        "| | |",
        "|---|---|",
        f"| optimizer steps | {_count(budget['steps'])} |",
        f"| global batch | {budget['global_batch']} ({config.get('per_device_batch_size')} per process x "
        f"{config.get('gradient_accumulation_steps', 1)} accumulation x {budget['processes']} process(es)) |",
        f"| samples seen | {_count(budget['samples_seen'])} |",
        f"| training time | {_duration(budget['train_seconds'])}"
        + (
            f" ({budget['step_time']:.3f} s per step, {rate:.1f} samples/s; validation not included) |"
            if budget["step_time"]
            else " |"
        ),
        f"| optimizer | AdamW, peak learning rate {config.get('learning_rate')}, {config.get('warmup_steps')} warm-up "
        f"steps then cosine decay, weight decay {config.get('weight_decay')}, clipping {config.get('max_grad_norm')} |",
        f"| precision | {config.get('mixed_precision', 'no')} mixed precision |"
        if config.get("mixed_precision", "no") != "no"
        else "| precision | float32 |",
        f"| seed | {inputs.run_record.get('seed', config.get('seed'))} |",
        f"| code version | VLP {inputs.run_record.get('code_version', 'unknown')}, torch "
        f"{inputs.run_record.get('torch', 'unknown')} |",
    ]
    return "\n".join(lines)


def _figure_table(figures, limit=60):
    lines = ["| figure | value | 95 % interval | n | compared with |", "|---|---|---|---|---|"]
    for figure in figures[:limit]:
        lines.append(
            f"| {figure.label} | {_number(figure.value)} | {_interval(figure)} | "
            f"{figure.n if figure.n else '—'} | {figure.comparison or '—'} |"
        )
    if len(figures) > limit:
        lines.append(f"| ... {len(figures) - limit} more in the results file | | | | |")
    return lines


def evaluation_section(inputs):
    """Validation figures from final_metrics.json, then each results.json's figures, all with their intervals."""
    parts = []
    validation = validation_figures(inputs.final_metrics, _validation_dataset(inputs.config))
    if validation:
        step = (inputs.final_metrics or {}).get("step")
        parts += [
            f"Validation at the end of pretraining (step {step}) on held-out "
            + ("scenes of a separately seeded world" if is_synthetic(inputs.config) else "samples")
            + ". Accuracies with 95 % Wilson intervals over the validation items; losses are means.",
            "",
        ]
        parts += _figure_table(validation) + [""]
    for results in inputs.results:
        figures = results_figures(results, inputs.mix)
        kind = results.get("format")
        if kind == "vlp-evaluation-results":
            suites = ", ".join(results.get("suites") or {})
            parts += [
                f"The evaluation suite (`vlp evaluate`; suites: {suites}). Headline figure of each block with "
                "its 95 % bootstrap interval over items; 'compared with' gives score minus each language-bias "
                "floor (the same items with the image blanked or mismatched) with a paired bootstrap interval.",
                "",
            ]
        elif kind == "vlp-study-results":
            seeds = results.get("seeds") or []
            over = "seeds" if len(seeds) > 1 else "evaluation items only (one seed)"
            mix = inputs.mix or next(iter(results.get("mixes") or {}), "")
            parts += [
                f"Study `{results.get('study')}`, mix `{mix}`"
                f" (baseline `{results.get('baseline')}`, seeds {seeds}): mean over seeds with a 95 % bootstrap "
                f"interval over {over}; the difference to the baseline uses a paired, hierarchical bootstrap.",
                "",
            ]
        else:
            parts += ["Further results (figures as reported in the results file).", ""]
        parts += (_figure_table(figures) if figures else ["No figures."]) + [""]
    if not parts:
        return "No evaluation results were recorded for this run."
    return "\n".join(parts).rstrip()


def limitations_section(inputs):
    config, c = inputs.config, inputs.model_config
    lines = []
    if is_synthetic(config):
        lines.append(
            "- **Synthetic data only.** It was pretrained on rendered shapes on a plain background with captions from "
            f"a small grammar ({c.get('vocab_size')} word pieces). It knows nothing about natural images or free "
            "text: on photographs or everyday language its outputs mean nothing."
        )
    else:
        lines.append(
            "- **Web-like data.** It inherits the content, noise and biases of its image-caption sources listed above."
        )
    size = f"{inputs.num_parameters / 1e6:.2f} M parameters, " if inputs.num_parameters else ""
    lines.append(
        f"- **Small scale.** A small model ({size}hidden size {c.get('hidden_size')}, {c.get('num_hidden_layers')} "
        f"layers, {c.get('image_size')} px images) trained on a CPU-scale budget. Differences between objectives at "
        "this scale need not carry over to base-size models and real data."
    )
    lines.append(
        "- **In-distribution figures.** The evaluation items come from the same kind of data the model was "
        "pretrained on (held-out scenes), and the intervals cover the sampling of evaluation items; they cover the "
        "variation between training runs only where a study with several seeds is reported."
    )
    lines.append(
        "- **Untrained task heads.** Loaded into the VQA, retrieval or captioning classes, the task heads "
        "start from scratch and need finetuning."
    )
    return "\n".join(lines)


def reproduce_section(inputs):
    files = set(inputs.files)
    lines = []
    if "run/pretrain_config.yaml" in files:
        lines += [
            "With VLP installed at the code version above:",
            "",
            "```bash",
            "vlp pretrain --config run/pretrain_config.yaml --output_dir runs/reproduced",
            "```",
            "",
            "`run/pretrain_config.yaml` is the run's full configuration (machine-specific paths removed).",
        ]
    else:
        lines.append("The run's configuration is summarised above.")
    published = sorted(f for f in files if f != "run/pretrain_config.yaml")
    if published:
        lines += ["", "Also published with the model: " + ", ".join(f"`{f}`" for f in published) + "."]
    return "\n".join(lines)


def example_caption(config):
    return "there is a red circle" if is_synthetic(config) else "a photo of a dog on a beach"


def render_model_card(inputs, template_path=TEMPLATE_PATH):
    """The README.md text of the published model: YAML metadata, then the sections of the template."""
    with open(template_path, encoding="utf-8") as handle:
        template = string.Template(handle.read())
    metadata = yaml.safe_dump(card_metadata(inputs), sort_keys=False, allow_unicode=True, width=1000).strip()
    weights = objective_weights(inputs.config)
    summary = (
        f"A VLP checkpoint pretrained with {' + '.join(n.upper() for n in weights) or 'no recorded objective'}"
        f" on {'the synthetic shapes world' if is_synthetic(inputs.config) else 'image-caption data'}, "
        f"published to study what these objectives teach a vision-language transformer."
    )
    return template.substitute(
        metadata=metadata,
        title=repo_name(inputs.repo_id),
        summary=summary,
        repo_id=inputs.repo_id,
        model_description=model_description(inputs),
        objectives=objectives_section(inputs.config, inputs.model_config),
        data=data_section(inputs.config),
        budget=budget_section(inputs),
        evaluation=evaluation_section(inputs),
        limitations=limitations_section(inputs),
        reproduce=reproduce_section(inputs),
        example_caption=example_caption(inputs.config),
        code_files=", ".join(f"`{name}`" for name in inputs.code_files) or "its code files",
    )


__all__ = [
    "CardInputs",
    "Figure",
    "TEMPLATE_PATH",
    "all_figures",
    "card_metadata",
    "card_tags",
    "data_sources",
    "evaluation_figures",
    "generic_figures",
    "is_primary",
    "is_synthetic",
    "model_index",
    "objective_weights",
    "pipeline_tag_for",
    "render_model_card",
    "repo_name",
    "results_figures",
    "study_figures",
    "training_budget",
    "validation_figures",
]
