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

import argparse
import os
import sys

from ..processing import strict_json


def _data(argv):
    parser = argparse.ArgumentParser(
        prog="vlp data", description="Write a dataset folder (datasets format) or WebDataset shards."
    )
    sub = parser.add_subparsers(dest="kind", required=True)
    shapes = sub.add_parser("shapes", help="the synthetic shapes world")
    shapes.add_argument("--out", required=True, help="output folder")
    shards = sub.add_parser("shards", help="WebDataset tar shards (img2dataset layout + manifest.json) from a reader")
    shards.add_argument(
        "--from",
        dest="source",
        required=True,
        help="'shapes' (the world, options below), 'captions:FILE@ROOT' or 'coco:FILE@ROOT'",
    )
    shards.add_argument("--out", required=True, help="output folder (shards and manifest.json)")
    shards.add_argument("--samples-per-shard", type=int, default=1000)
    shards.add_argument("--name", help="the source name in the manifest (default: the output folder's name)")
    shards.add_argument("--max-pixels", type=int, default=0, help="caption/coco: skip images above this many pixels")
    for command in (shapes, shards):
        command.add_argument("--num-scenes", type=int, default=4000)
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--image-size", type=int, default=64)
        command.add_argument("--max-objects", type=int, default=3)
        command.add_argument("--captions-per-scene", type=int, default=4)
        command.add_argument("--zipf-exponent", type=float, default=1.0)
        command.add_argument("--noise-rate", type=float, default=0.0)
        command.add_argument("--background-noise", type=float, default=0.0)
        command.add_argument("--held-out", default="", help="colour-shape pairs kept out, e.g. 'red circle,blue star'")
    args = parser.parse_args(argv)
    from ..processing import shapes_world

    held_out = [tuple(pair.replace(":", " ").split()) for pair in args.held_out.split(",") if pair.strip()]
    world = dict(
        num_scenes=args.num_scenes,
        seed=args.seed,
        image_size=args.image_size,
        max_objects=args.max_objects,
        captions_per_scene=args.captions_per_scene,
        zipf_exponent=args.zipf_exponent,
        noise_rate=args.noise_rate,
        background_noise=args.background_noise,
        held_out_pairs=held_out,
    )
    if args.kind == "shapes":
        shapes_world.write_shapes_dataset(args.out, **world)
        print(f"wrote {args.num_scenes} scenes to {args.out}")
        return
    from ..processing.webdataset import write_shards
    from .config import ConfigError, parse_sources
    from .data import read_source

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


def _pretrain(argv):
    from .config import ARGUMENT_CLASSES, parse_config

    if "-h" in argv or "--help" in argv:
        from transformers import HfArgumentParser

        parser = HfArgumentParser(
            ARGUMENT_CLASSES,
            prog="vlp pretrain [--config FILE]",
            description="Pretrain VLP. Every key below can be set in the YAML file given by "
            "--config and overridden on the command line as --key value.",
        )
        parser.print_help()
        return
    parser = argparse.ArgumentParser(prog="vlp pretrain")
    parser.add_argument("--config", help="YAML file of config keys")
    args, overrides = parser.parse_known_args(argv)
    from .pretrain import pretrain

    arguments = parse_config(args.config, overrides)
    metrics = pretrain(*arguments)
    print(strict_json.dumps(metrics, indent=2))


def _masks(argv):
    parser = argparse.ArgumentParser(
        prog="vlp masks",
        description="Mask validation samples of a pretraining run with each policy, guided by the "
        "run's final model: concept-word and object-patch shares (with paired bootstrap intervals against random) "
        "in mask_shares.json, and example masks in masks.png.",
    )
    parser.add_argument("run_dir", help="a `vlp pretrain` output folder (run.yaml and model/)")
    parser.add_argument("--out", help="output folder (default: RUN_DIR/masks)")
    parser.add_argument("--policies", default="random,high,low,hint")
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--ratio", type=float, default=0.3, help="share of words / patches masked per sample")
    parser.add_argument("--word-relevance-from", default="patches", choices=("patches", "cls"))
    parser.add_argument("--patch-relevance-from", default="text", choices=("text", "cls"))
    parser.add_argument("--layers", default="last", choices=("last", "mean"))
    parser.add_argument("--scoring", default="lift", choices=("attention", "lift"))
    parser.add_argument("--rows", type=int, default=6, help="samples in the picture")
    args = parser.parse_args(argv)
    from ..processing.masking import POLICIES
    from .config import ConfigError
    from .mask_report import masks_report

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
    "finetune": _from_module("finetune"),
    "evaluate": _from_module("evaluation_suite"),
    "study": _from_module("study"),
    "push": _from_module("publish"),
    "convert-vilt": _from_module("convert_vilt"),
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
