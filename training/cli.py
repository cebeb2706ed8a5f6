"""The `vlp` command line.

vlp data shapes --out DIR --num-scenes N --seed S [...]   write the synthetic world as a datasets folder
vlp data shards --from SOURCE --out DIR [...]             write WebDataset shards from the world or a reader
vlp pretrain --config FILE [--key value ...]              pretrain (resumes from the newest checkpoint)
vlp masks RUN_DIR [--out DIR] [--policies ...]            what each masking policy hides: shares + PNG grid
vlp finetune vqa|retrieval|caption MODEL_DIR [...]        finetune a checkpoint with transformers' Trainer
vlp evaluate MODEL_DIR --suite NAME [...]                 the evaluation suite: foils, probes, grounding, ...
vlp study PRESET_OR_FILE --output_dir DIR                 pretrain several mixes, evaluate, report
vlp push RUN_DIR --repo-id NAME [--dry-run DIR]           publish a run's model, processor, code and card
vlp convert-vilt SRC DST                                  a transformers ViLT checkpoint -> VLPForPreTraining
"""

import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Literal

from ..processing import strict_json
from .cli_args import parse_command


@dataclass
class WorldArguments:
    """The synthetic world's options of `vlp data shapes|shards` (`WorldConfig` fields)."""

    num_scenes: int = field(default=4000, metadata={"help": "scenes to write"})
    seed: int = field(default=0, metadata={"help": "the world's seed"})
    image_size: int = field(default=64, metadata={"help": "image side in pixels"})
    max_objects: int = field(default=3, metadata={"help": "objects per scene at most"})
    captions_per_scene: int = field(default=4, metadata={"help": "captions per scene"})
    zipf_exponent: float = field(default=1.0, metadata={"help": "Zipf exponent of colour-shape pair frequencies"})
    noise_rate: float = field(default=0.0, metadata={"help": "share of captions replaced by noisy alt-text"})
    background_noise: float = field(default=0.0, metadata={"help": "background noise amplitude"})
    held_out: str = field(default="", metadata={"help": "colour-shape pairs kept out, e.g. 'red circle,blue star'"})


@dataclass
class ShapesArguments:
    """`vlp data shapes --out DIR`: the world as a datasets folder."""

    out: str = field(metadata={"help": "output folder"})


@dataclass
class ShardsArguments:
    """`vlp data shards --from SOURCE --out DIR`: WebDataset shards (img2dataset layout + manifest.json)."""

    source: str = field(
        metadata={
            "aliases": ["--from"],
            "help": "'shapes' (the world, options below), 'captions:FILE@ROOT' or 'coco:FILE@ROOT'",
        }
    )
    out: str = field(metadata={"help": "output folder (shards and manifest.json)"})
    samples_per_shard: int = field(default=1000, metadata={"help": "samples per tar shard"})
    name: str | None = field(default=None, metadata={"help": "the source name in the manifest (default: the folder's)"})
    max_pixels: int = field(default=0, metadata={"help": "caption/coco: skip images above this many pixels"})


def _data(argv):
    from .config import ConfigError

    kinds = {"shapes": ShapesArguments, "shards": ShardsArguments}
    usage = "vlp data shapes --out DIR [world options] | vlp data shards --from SOURCE --out DIR [...] (-h: options)"
    if argv[:1] in (["-h"], ["--help"]):
        print(f"usage: {usage}")
        return
    if not argv or argv[0] not in kinds:
        raise ConfigError(f"expected 'shapes' or 'shards' after `vlp data`, got {argv[0] if argv else 'nothing'!r}")
    kind = argv[0]
    description = "Write the synthetic world as a datasets folder (shapes) or WebDataset shards from a reader (shards)."
    args, world_args = parse_command((kinds[kind], WorldArguments), argv[1:], f"vlp data {kind}", description)
    from ..processing.worlds import shapes as shapes_world

    held_out = [tuple(pair.replace(":", " ").split()) for pair in world_args.held_out.split(",") if pair.strip()]
    world = {**asdict(world_args), "held_out_pairs": held_out}
    del world["held_out"]
    if kind == "shapes":
        shapes_world.write_shapes_dataset(args.out, **world)
        print(f"wrote {world_args.num_scenes} scenes to {args.out}")
        return
    _write_shards(args, world)


def _write_shards(args, world):
    """`vlp data shards`: the world or one reader's records as shards; skipped records counted and listed."""
    from ..processing.readers.webdataset import write_shards
    from ..processing.worlds import shapes as shapes_world
    from .config import ConfigError, parse_sources
    from .pretrain.data import read_source

    if args.samples_per_shard < 1:
        raise ConfigError(f"--samples-per-shard={args.samples_per_shard}: expected an integer >= 1")
    sources = parse_sources(args.source, "--from")
    if len(sources) != 1 or sources[0].kind not in ("shapes", "captions", "coco"):
        raise ConfigError(
            f"--from={args.source!r}: expected one source, 'shapes', 'captions:FILE@ROOT' or 'coco:FILE@ROOT'"
        )
    name = args.name or os.path.basename(os.path.normpath(args.out))
    report = None
    if sources[0].kind == "shapes":
        rows = shapes_world.build_dataset(shapes_world.WorldConfig(**world))
    else:
        try:
            rows, report = read_source(sources[0], name, args.max_pixels)
        except ValueError as error:
            raise ConfigError(f"--from={args.source!r}: {error}") from None
    written = write_shards(rows, args.out, args.samples_per_shard, source=name)
    if report is not None:
        written.report.merge(report)
    manifest = written.manifest
    print(f"wrote {manifest['samples']} samples in {len(manifest['shards'])} shard(s) to {args.out}")
    for source, by_reason in written.report.counts().items():
        print(f"  skipped from {source}: " + ", ".join(f"{reason} {n}" for reason, n in sorted(by_reason.items())))
    if written.report.entries:
        with open(os.path.join(args.out, "skipped_samples.json"), "w", encoding="utf-8") as handle:
            strict_json.dump(written.report.to_dict(), handle, indent=1)


@dataclass
class ConfigFile:
    """`vlp pretrain --config FILE [--key value ...]`: the YAML file; every other option is a config key."""

    config: str | None = field(default=None, metadata={"help": "YAML file of config keys"})


def _pretrain(argv):
    from .config import ARGUMENT_CLASSES, parse_config

    if "-h" in argv or "--help" in argv:
        from transformers import HfArgumentParser

        parser = HfArgumentParser(
            (ConfigFile, *ARGUMENT_CLASSES),
            prog="vlp pretrain [--config FILE]",
            description="Pretrain VLP. Every key below can be set in the YAML file given by "
            "--config and overridden on the command line as --key value.",
        )
        parser.print_help()
        return
    from transformers import HfArgumentParser

    config_file, overrides = HfArgumentParser(ConfigFile).parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    from .pretrain.loop import pretrain

    arguments = parse_config(config_file.config, overrides)
    metrics = pretrain(*arguments)
    print(strict_json.dumps(metrics, indent=2))


@dataclass
class MasksArguments:
    """`vlp masks RUN_DIR`: what each masking policy hides, from the relevance of the run's final model."""

    run_dir: str = field(metadata={"help": "a `vlp pretrain` output folder (run.yaml and model/)"})
    out: str | None = field(default=None, metadata={"help": "output folder (default: RUN_DIR/masks)"})
    policies: str = field(default="random,high,low,hint", metadata={"help": "comma-separated masking policies"})
    num_samples: int = field(default=512, metadata={"help": "validation samples masked"})
    ratio: float = field(default=0.3, metadata={"help": "share of words / patches masked per sample"})
    word_relevance_from: Literal["patches", "cls"] = field(default="patches", metadata={"help": "queries of words"})
    patch_relevance_from: Literal["text", "cls"] = field(default="text", metadata={"help": "queries of patches"})
    layers: Literal["last", "mean"] = field(default="last", metadata={"help": "attention of the last layer or mean"})
    scoring: Literal["attention", "lift"] = field(default="lift", metadata={"help": "relevance scoring"})
    rows: int = field(default=6, metadata={"help": "samples in the picture"})


def _masks(argv):
    description = (
        "Mask validation samples of a pretraining run with each policy, guided by the run's final model: "
        "concept-word and object-patch shares (with paired bootstrap intervals against random) in "
        "mask_shares.json, and example masks in masks.png."
    )
    args = parse_command(MasksArguments, argv, "vlp masks", description, positional=("run_dir",))
    from ..processing.masking import POLICIES
    from .config import ConfigError
    from .evaluation.mask_report import masks_report

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise ConfigError(f"--policies: {', '.join(unknown) or 'none given'}; expected names from {POLICIES}")
    if not os.path.isfile(os.path.join(args.run_dir, "run.yaml")):
        raise ConfigError(f"{args.run_dir} has no run.yaml: expected a `vlp pretrain` output folder")
    out = args.out or os.path.join(args.run_dir, "masks")
    table = masks_report(
        args.run_dir,
        out,
        policies,
        num_samples=args.num_samples,
        ratio=args.ratio,
        grid_rows=args.rows,
        word_query=args.word_relevance_from,
        patch_query=args.patch_relevance_from,
        layers=args.layers,
        scoring=args.scoring,
    )
    for policy, row in table.items():
        shares = ", ".join(f"{key} {value:.3f}" for key, value in row.items() if key.endswith("share"))
        print(f"{policy:>6}: {shares}")
    print(f"wrote {os.path.join(out, 'mask_shares.json')} and {os.path.join(out, 'masks.png')}")


def _from_module(module):
    """A subcommand whose parser and work live in `module` (a `cli(argv)` function), imported only when used."""

    def run(argv):
        import importlib

        return importlib.import_module(f"{__package__}.{module}").cli(argv)

    return run


COMMANDS = {
    "data": _data,
    "pretrain": _pretrain,
    "masks": _masks,
    "finetune": _from_module("finetune.cli"),
    "evaluate": _from_module("evaluation.suite"),
    "study": _from_module("studies.runner"),
    "push": _from_module("hub.publish"),
    "convert-vilt": _from_module("hub.convert_vilt"),
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    from .config import ConfigError

    try:
        COMMANDS[argv[0]](argv[1:])
    except ConfigError as error:
        print(f"vlp {argv[0]}: config error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
