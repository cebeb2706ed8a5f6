"""The model card's text: YAML metadata, then the sections of the template (`vlp_model_card.md`), from plain data."""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field

import yaml

from ._format import _count, _duration, _finite, _interval, _number
from .facts import OBJECTIVES, data_sources, is_synthetic, objective_weights, pipeline_tag_for, repo_name
from .figures import (
    SYNTHETIC_DATASET,
    model_index,
    results_figures,
    validation_figures,
)

TEMPLATE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vlp_model_card.md")


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
