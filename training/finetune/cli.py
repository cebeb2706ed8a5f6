"""Downstream finetuning through transformers' Trainer: VQA, image-text retrieval and captioning.

`finetune_vqa`, `finetune_retrieval` and `finetune_caption` load a checkpoint with `from_pretrained`, finetune it with a
plain `transformers.Trainer` and a collator from `processing/finetune_collators.py`, evaluate with VLP's local
`evaluate` modules and write `results.json` (and the finetuned model with its processor under `model/`) to the output
folder. Beside the pretrained score they report baselines, so that what pretraining bought is visible:

- `random_init`: the same config and the same finetuning from fresh weights;
- VQA `question_only`: the pretrained checkpoint finetuned and evaluated with every image blanked (a constant image,
  `pixel_values` all zero): what the question alone tells;
- captioning `blank_image`: the same for captions (a caption prior learnt by the same model), and `most_frequent`:
  the most frequent training caption given for every image (no training).

VQA results also hold `floors`, scored on the same questions: `blank_image`, the finetuned pretrained model shown
blank images, and `text_only`, a bag of words trained on the training questions that never sees an image
(`question_only_logits`), each with the pretrained model's paired gain over it (`gain_over_blank_image`,
`gain_over_text_only`).

    vlp finetune vqa RUN/model --output_dir out/vqa                 # synthetic VQA with complementary pairs
    vlp finetune retrieval RUN/model --output_dir out/ret           # the shapes world's captions
    vlp finetune caption RUN/model --output_dir out/cap --num_beams 3
    vlp finetune vqa RUN/model --output_dir out --data vqa2 --train_questions ... --eval_pairs ..."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, make_dataclass
from typing import Literal, get_type_hints

import datasets

from ...processing import strict_json
from ...processing.readers.downstream import read_karpathy_split, read_vqa_v2, vqa_features
from ...processing.worlds.synthetic_vqa import QUESTION_FAMILIES
from ..cli_args import parse_command
from ..config import ConfigError
from .captioning import finetune_caption
from .common import RESULTS_FILE, TASK_SETTINGS, FinetuneSettings
from .retrieval import finetune_retrieval
from .vqa import finetune_vqa


@dataclass
class FinetuneArguments:
    """`vlp finetune TASK MODEL_DIR --output_dir DIR`: the options besides the Trainer settings, parsed by
    `HfArgumentParser` (the settings come from `SettingsOverrides`, one option per `FinetuneSettings` field)."""

    task: Literal["vqa", "retrieval", "caption"] = field(metadata={"help": "the downstream task"})
    model_dir: str = field(metadata={"help": "a checkpoint folder (config.json), or a `vlp pretrain` run folder"})
    output_dir: str = field(metadata={"help": "where the variants' runs and results.json go"})
    data: str = field(default="synthetic", metadata={"help": "synthetic; vqa2 (vqa); karpathy (retrieval, caption)"})
    variants: str | None = field(default=None, metadata={"help": "comma-separated; default: all of the task's"})
    num_train: int | None = field(
        default=None, metadata={"help": "synthetic: training pairs (vqa, 1000) or scenes (retrieval, caption, 2000)"}
    )
    num_eval: int | None = field(
        default=None, metadata={"help": "synthetic: evaluation pairs (vqa, 250) or scenes (retrieval, caption, 100)"}
    )
    data_seed: int = field(default=0, metadata={"help": "synthetic: the data's seed"})
    max_objects: int = field(default=3, metadata={"help": "synthetic: objects per scene at most"})
    image_size: int | None = field(
        default=None, metadata={"help": "finetune and evaluate at this image side (default: the processor's)"}
    )
    min_answer_count: int = field(default=9, metadata={"help": "vqa: answers given this often form the vocabulary"})
    families: str = field(default=",".join(QUESTION_FAMILIES), metadata={"help": "vqa: synthetic question families"})
    train_questions: str | None = field(default=None, metadata={"help": "vqa2: training questions json"})
    train_annotations: str | None = field(default=None, metadata={"help": "vqa2: training annotations json"})
    train_image_dir: str | None = field(default=None, metadata={"help": "vqa2: training images"})
    eval_questions: str | None = field(default=None, metadata={"help": "vqa2: evaluation questions json"})
    eval_annotations: str | None = field(default=None, metadata={"help": "vqa2: evaluation annotations json"})
    eval_image_dir: str | None = field(default=None, metadata={"help": "vqa2: evaluation images"})
    eval_pairs: str | None = field(default=None, metadata={"help": "vqa2: complementary pairs json of the eval split"})
    karpathy_json: str | None = field(default=None, metadata={"help": "karpathy: the split file (dataset_coco.json)"})
    image_dir: str | None = field(default=None, metadata={"help": "karpathy: the images"})
    max_eval_images: int | None = field(default=None, metadata={"help": "karpathy: evaluation images at most"})
    top_k: int | None = field(default=None, metadata={"help": "retrieval: candidates re-ranked by ITM per query"})
    num_beams: int = field(default=1, metadata={"help": "caption: beam size (1: greedy)"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "caption: longest generated caption"})
    no_java: bool = field(default=False, metadata={"help": "caption: skip PTB tokenization and METEOR (java)"})


def _settings_overrides():
    """A dataclass with one optional field per `FinetuneSettings` field (None: the task's default)."""
    hints = get_type_hints(FinetuneSettings)
    defaults = {task: asdict(values) for task, values in TASK_SETTINGS.items()}

    def default_help(name):
        return {"help": "default: " + ", ".join(f"{task} {values[name]}" for task, values in defaults.items())}

    fields_ = [(name, hints[name] | None, field(default=None, metadata=default_help(name))) for name in hints]
    return make_dataclass("SettingsOverrides", fields_)


SettingsOverrides = _settings_overrides()
FINETUNE_DESCRIPTION = (
    "Finetune a VLP checkpoint with transformers' Trainer and report the task's metrics beside baselines (random "
    "initialisation; question-only for VQA; blank-image and most-frequent caption for captioning) in "
    "OUTPUT_DIR/results.json."
)


def _require(args, names, data):
    missing = [f"--{name}" for name in names if getattr(args, name) is None]
    if missing:
        raise ConfigError(f"--data {data} needs {', '.join(missing)}")


def _vqa2_rows(args):
    _require(
        args,
        (
            "train_questions",
            "train_annotations",
            "train_image_dir",
            "eval_questions",
            "eval_annotations",
            "eval_image_dir",
        ),
        "vqa2",
    )
    features = vqa_features()
    train = read_vqa_v2(args.train_questions, args.train_annotations, args.train_image_dir)
    evaluation = read_vqa_v2(args.eval_questions, args.eval_annotations, args.eval_image_dir, args.eval_pairs)
    return (
        datasets.Dataset.from_list(train, features=features),
        datasets.Dataset.from_list(evaluation, features=features),
    )


def _karpathy_rows(args):
    _require(args, ("karpathy_json", "image_dir"), "karpathy")
    train = read_karpathy_split(args.karpathy_json, ("train", "restval"), args.image_dir)
    evaluation = read_karpathy_split(args.karpathy_json, "test", args.image_dir)
    if args.max_eval_images:
        evaluation = evaluation[: args.max_eval_images]
    return train, evaluation


def cli(argv: Sequence[str]):
    """`vlp finetune vqa|retrieval|caption MODEL_DIR --output_dir DIR [...]`: prints the results."""
    args, overrides = parse_command(
        (FinetuneArguments, SettingsOverrides), argv, "vlp finetune", FINETUNE_DESCRIPTION, ("task", "model_dir")
    )
    given = {name: value for name, value in asdict(overrides).items() if value is not None}
    settings = FinetuneSettings(**{**asdict(TASK_SETTINGS[args.task]), **given})
    allowed = {
        "vqa": ("synthetic", "vqa2"),
        "retrieval": ("synthetic", "karpathy"),
        "caption": ("synthetic", "karpathy"),
    }[args.task]
    if args.data not in allowed:
        raise ConfigError(f"--data {args.data!r} for {args.task}: expected one of {allowed}")
    common = dict(
        settings=settings,
        data_seed=args.data_seed,
        max_objects=args.max_objects,
        data_name=args.data,
        image_size=args.image_size,
    )
    if args.variants is not None:
        common["variants"] = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    train_rows = eval_rows = None
    if args.task == "vqa":
        if args.data == "vqa2":
            train_rows, eval_rows = _vqa2_rows(args)
        sizes = {
            key: value
            for key, value in (("num_train_pairs", args.num_train), ("num_eval_pairs", args.num_eval))
            if value is not None
        }
        families = tuple(f.strip() for f in args.families.split(",") if f.strip())
        unknown = [f for f in families if f not in QUESTION_FAMILIES]
        if unknown or not families:
            raise ConfigError(f"--families {unknown or 'none given'}: expected names from {QUESTION_FAMILIES}")
        results = finetune_vqa(
            args.model_dir,
            args.output_dir,
            train_rows,
            eval_rows,
            families=families,
            min_answer_count=args.min_answer_count,
            **sizes,
            **common,
        )
    else:
        if args.data == "karpathy":
            train_rows, eval_rows = _karpathy_rows(args)
        sizes = {
            key: value
            for key, value in (("num_train_scenes", args.num_train), ("num_eval_scenes", args.num_eval))
            if value is not None
        }
        if args.task == "retrieval":
            results = finetune_retrieval(
                args.model_dir, args.output_dir, train_rows, eval_rows, top_k=args.top_k, **sizes, **common
            )
        else:
            results = finetune_caption(
                args.model_dir,
                args.output_dir,
                train_rows,
                eval_rows,
                num_beams=args.num_beams,
                max_new_tokens=args.max_new_tokens,
                tokenize=not args.no_java,
                meteor=not args.no_java,
                **sizes,
                **common,
            )
    print(strict_json.dumps(_summary(results), indent=2))
    print(f"wrote {os.path.join(args.output_dir, RESULTS_FILE)}")
    return results


def _summary(results):
    """The headline figures of each variant, for the terminal."""
    keys = {
        "vqa": ("accuracy", "accuracy_low", "accuracy_high", "pair_accuracy"),
        "retrieval": ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"),
        "caption": ("bleu_4", "meteor", "cider_d"),
    }[results["task"]]
    return {variant: {key: run[key] for key in keys if key in run} for variant, run in results["runs"].items()}
