"""The `vlp` command line.

    vlp data shapes --out DIR --num-scenes N --seed S [...]   write the synthetic world as a datasets folder
    vlp pretrain --config FILE [--key value ...]              pretrain (resumes from the newest checkpoint)
"""

import argparse
import json
import sys


def _data(argv):
    parser = argparse.ArgumentParser(prog="vlp data", description="Write a dataset folder (datasets format).")
    sub = parser.add_subparsers(dest="kind", required=True)
    shapes = sub.add_parser("shapes", help="the synthetic shapes world")
    shapes.add_argument("--out", required=True, help="output folder")
    shapes.add_argument("--num-scenes", type=int, default=4000)
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--image-size", type=int, default=64)
    shapes.add_argument("--max-objects", type=int, default=3)
    shapes.add_argument("--captions-per-scene", type=int, default=4)
    shapes.add_argument("--zipf-exponent", type=float, default=1.0)
    shapes.add_argument("--noise-rate", type=float, default=0.0)
    shapes.add_argument("--background-noise", type=float, default=0.0)
    shapes.add_argument("--held-out", default="", help="colour-shape pairs kept out, e.g. 'red circle,blue star'")
    args = parser.parse_args(argv)
    from ..processing.shapes_world import write_shapes_dataset

    held_out = [tuple(pair.replace(":", " ").split()) for pair in args.held_out.split(",") if pair.strip()]
    write_shapes_dataset(
        args.out, num_scenes=args.num_scenes, seed=args.seed, image_size=args.image_size,
        max_objects=args.max_objects, captions_per_scene=args.captions_per_scene,
        zipf_exponent=args.zipf_exponent, noise_rate=args.noise_rate, background_noise=args.background_noise,
        held_out_pairs=held_out,
    )
    print(f"wrote {args.num_scenes} scenes to {args.out}")


def _pretrain(argv):
    from .config import ARGUMENT_CLASSES, parse_config

    if "-h" in argv or "--help" in argv:
        from transformers import HfArgumentParser

        parser = HfArgumentParser(ARGUMENT_CLASSES, prog="vlp pretrain [--config FILE]",
                                  description="Pretrain VLP. Every key below can be set in the YAML file given by "
                                              "--config and overridden on the command line as --key value.")
        parser.print_help()
        return
    parser = argparse.ArgumentParser(prog="vlp pretrain")
    parser.add_argument("--config", help="YAML file of config keys")
    args, overrides = parser.parse_known_args(argv)
    from .pretrain import pretrain

    arguments = parse_config(args.config, overrides)
    metrics = pretrain(*arguments)
    print(json.dumps(metrics, indent=2))


COMMANDS = {"data": _data, "pretrain": _pretrain}


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
