"""The options of a `vlp` command from one dataclass, parsed by transformers' `HfArgumentParser`: each option is
written once, as a field with its type, default and help; `--snake_case` and `--kebab-case` spellings both work."""

from __future__ import annotations

from collections.abc import Sequence


def parse_command(arguments_class, argv: Sequence[str], prog: str, description: str, positional: Sequence[str] = ()):
    """An `arguments_class` instance from `argv` (a tuple of classes gives a tuple of instances). The fields named
    in `positional` may come first, in that order, without their flag (`vlp push RUN_DIR --repo-id ...`). An
    unknown option exits with status 2, naming it."""
    argv = list(argv)
    leading = []
    for name in positional:
        if not argv or argv[0].startswith("-"):
            break
        leading += [f"--{name}", argv.pop(0)]
    from transformers import HfArgumentParser  # imported when a command runs: `vlp --help` stays fast

    parser = HfArgumentParser(arguments_class)
    parser.prog, parser.description = prog, description
    *args, unknown = parser.parse_args_into_dataclasses(args=leading + argv, return_remaining_strings=True)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return tuple(args) if isinstance(arguments_class, tuple) else args[0]
