"""The evaluation suite (`vlp evaluate`): does a pretrained model extract multimodal information?

Suites (``SUITES``, one module each in this folder), on items drawn from the synthetic world
(``processing/worlds/eval_sets.py``; truth from ``caption_holds``) or, for foils, Winoground and probes, on a real
benchmark file (``processing/readers/benchmarks.py``):

- ``foils``: ITM match probability P(match) of the caption and of its foil, per phenomenon, through the ``vl_foils``
  metric (VALSE's acc_r, p_c, p_f, acc, min(p_c, p_f), AUROC).
- ``winoground``: the four match probabilities of two images and two captions -> text, image and group scores.
- ``probes``: linear probes (the ``linear_probe`` metric) on frozen representations of every layer (``[CLS]``: the
  first position, the mean of the text tokens, the mean of the image patches); the Salin et al. tasks with their
  mismatched-image controls and the gap, and the unimodal probes (visual from an image-only pass, word order from
  a text-only pass). Split: the k-th item of a task (its control goes with it) is a test item when
  ``(k // 2) % 2 == 1`` -- half the items, and balanced for the binary tasks, whose labels alternate with k.
- ``crossmodal`` (after Frank et al. 2021): one concept word (colour, shape or size) of a grounding phrase masked,
  predicted among the words of its category, with the true image against a blank and a mismatched image; and MIM
  loss on a seeded random ``mim_probability`` share of patches, with the true caption against none.
- ``grounding``: pointing (the patch that receives most attention from the phrase's tokens, ``relevance`` in the
  chosen layers, lies among the object's patches; beside it the chance of a random patch) and occlusion (the
  caption's match probability drops more when the object's patches are hidden than when as many random other
  patches are). Hiding uses the model's mask embedding (``bool_masked_pos``, ``occlusion="mask"``, the default) or
  replaces the pixels by the background grey (``occlusion="blank"``).
- ``frequency``: colour and shape foils named by one (colour, shape) pair, scored against log10 of the pair's count
  in the pretraining world (least-squares slope of per-item acc_r, and log-spaced buckets), and the held-out pairs.

Language-bias floors: each zero-shot score is recomputed on the same items with the image blanked (a uniform image
of the world's background grey, RGB 128) and with a mismatched image (another item's image, by a seeded
derangement so that no item keeps its own); ``differences`` hold score - floor of the suite's headline per-item
figure with a paired bootstrap interval over items (``training/statistics.py``). For probes the mismatched floor is
Salin et al.'s control (a probe trained and tested on the items shown another scene) and the difference its gap;
pointing is set against the chance of a random patch, occlusion against random patches, MIM against no caption.

Model calls are batched (``batch_size`` rows a forward pass) in eval mode under ``torch.no_grad``.
``results.json`` follows ``training/evaluation/results_schema.json`` (JSON Schema draft 2020-12); every figure is
``{"value", "low", "high"}`` (a 95 % percentile bootstrap interval; null where undefined)."""

from __future__ import annotations

import datetime
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ...processing import strict_json
from ...processing.readers import benchmarks as readers
from ...processing.worlds import eval_sets as es
from ...processing.worlds import shapes as sw
from ..cli_args import parse_command
from ..config import ConfigError
from .crossmodal import run_crossmodal
from .foils import FoilRows, run_foils, text_floor_foil_pairs
from .frequency import run_frequency
from .grounding import run_grounding
from .loading import (
    load_model,
    load_world_file,
    read_run_record,
    resolve_model_dir,
    world_from_dict,
    world_from_run_config,
)
from .matching import GITM_GROUPS_PER_ITEM, gitm_settings, run_grouped_matching, run_matching
from .probes import run_benchmark_probes, run_probes
from .results import json_ready, load_schema, summary_table, validate_json
from .runner import ImageBank, Runner, unreadable_image
from .settings import BENCHMARKS, RESULTS_FORMAT, RESULTS_VERSION, SUITE_SETS, SUITES, Settings, expect
from .winoground import run_winoground


def eval_set_sizes(suites: Sequence[str], items_per_phenomenon: int, world: sw.WorldConfig) -> dict[str, int]:
    """Items to draw for the chosen suites (eval_sets.default_sizes for the sets they need, zero for the others)."""
    defaults = es.default_sizes(items_per_phenomenon, world)
    sizes = dict.fromkeys(es.SET_NAMES, 0)
    for suite in suites:
        for name in SUITE_SETS[suite]:
            sizes[name] = defaults[name]
    return sizes


def run_synthetic(
    runner: Runner,
    suites: Sequence[str],
    sets: Mapping,
    pair_counts: Mapping | None,
    settings: Settings,
    log=None,
    objectives: Sequence[str] | None = None,
    run_config: Mapping | None = None,
    items_per_phenomenon: int = 200,
) -> dict:
    """The chosen suites on evaluation sets of the synthetic world; {suite: results}. ``objectives``: the run's
    pretraining objectives when known (the MIM part of ``crossmodal`` needs a trained MIM head, ``gitm`` a trained
    grouped-matching head); ``run_config``: the run's config (the grid grouped matching was trained on);
    ``gitm`` draws ``GITM_GROUPS_PER_ITEM * items_per_phenomenon`` groups."""
    results = {}
    for suite in suites:
        started = time.perf_counter()
        if suite == "foils":
            items = list(sets["foils"])
            bank = ImageBank(scenes=[item.scene for item in items], image_size=runner.image_size)
            world = world_from_dict(sets.meta["world_config"], "evaluation world")
            results[suite] = run_foils(
                runner,
                bank,
                FoilRows.from_items(items, np.arange(len(items))),
                settings,
                text_floor_foil_pairs(world, items),
            )
        elif suite == "winoground":
            items = list(sets["winoground"])
            bank = ImageBank(scenes=[s for item in items for s in item.scenes], image_size=runner.image_size)
            ids = np.arange(2 * len(items)).reshape(-1, 2)
            results[suite] = run_winoground(
                runner, bank, ids, [item.captions for item in items], [item.phenomenon for item in items], settings
            )
        elif suite == "probes":
            results[suite] = run_probes(runner, sets, settings)
        elif suite == "crossmodal":
            results[suite] = run_crossmodal(runner, sets, settings, objectives)
        elif suite == "grounding":
            results[suite] = run_grounding(runner, sets, settings)
        elif suite == "frequency":
            results[suite] = run_frequency(runner, sets, pair_counts or {}, settings)
        elif suite == "itm":
            world = world_from_dict(sets.meta["world_config"], "evaluation world")
            results[suite] = run_matching(
                runner, world, GITM_GROUPS_PER_ITEM * items_per_phenomenon, settings, objectives
            )
        elif suite == "gitm":
            world = world_from_dict(sets.meta["world_config"], "evaluation world")
            results[suite] = run_grouped_matching(
                runner,
                world,
                GITM_GROUPS_PER_ITEM * items_per_phenomenon,
                gitm_settings(run_config),
                settings,
                objectives,
            )
        else:
            raise ConfigError(f"--suite={suite!r}: expected one of {SUITES} or 'all'")
        if log:
            log(f"{suite}: {time.perf_counter() - started:.1f} s")
    return results


READERS = {
    "valse": readers.read_valse,
    "sugarcrepe": readers.read_sugarcrepe,
    "aro": readers.read_aro,
    "winoground": readers.read_winoground,
    "probing": readers.read_probing_csv,
}


def read_benchmark(name: str, path: str, image_dir: str) -> tuple[list, list[dict], int]:
    """(usable items, skipped records [{"id", "reason"}], records read) of a benchmark file: records with a missing
    image are skipped by the reader, records whose image cannot be opened here."""
    if name not in READERS:
        raise ConfigError(f"--benchmark={name!r}: expected one of {tuple(READERS)}")
    if not path or not os.path.isfile(path):
        raise ConfigError(f"--benchmark-file={path!r}: expected an existing {name} file")
    if not image_dir or not os.path.isdir(image_dir):
        raise ConfigError(f"--image-dir={image_dir!r}: expected the folder of the benchmark's images")
    try:
        read = READERS[name](path, image_dir)
    except ValueError as error:  # a malformed record: the reader names the file and the record
        raise ConfigError(f"--benchmark-file: {error}") from None
    skipped = [{"id": entry.id, "reason": entry.reason} for entry in read.skipped]
    items = []
    for item in read.items:
        paths = item.image_paths if hasattr(item, "image_paths") else [item.image_path]
        problem = next((p for p in map(unreadable_image, paths) if p), None)
        if problem:
            skipped.append({"id": item.id, "reason": problem})
        else:
            items.append(item)
    return items, skipped, len(read.items) + len(read.skipped)


def run_benchmark(runner: Runner, name: str, items: Sequence, settings: Settings) -> dict:
    """The suite of benchmark ``name`` on its items; {suite: results}."""
    suite = BENCHMARKS[name]
    minimum = 4 if suite == "probes" else 2
    if len(items) < minimum:
        raise ValueError(f"{name}: {len(items)} usable items; the {suite} suite needs at least {minimum}")
    if suite == "winoground":
        paths = list(dict.fromkeys(p for item in items for p in item.image_paths))
        index = {p: k for k, p in enumerate(paths)}
        bank = ImageBank(paths=paths, image_size=runner.image_size)
        ids = np.asarray([[index[p] for p in item.image_paths] for item in items])
        return {
            suite: run_winoground(
                runner,
                bank,
                ids,
                [tuple(item.captions) for item in items],
                [item.collapsed_tag or item.tag for item in items],
                settings,
            )
        }
    boxes = [tuple(item.meta["bbox"]) if "bbox" in item.meta else None for item in items]
    bank = ImageBank(paths=[item.image_path for item in items], boxes=boxes, image_size=runner.image_size)
    if suite == "probes":
        return {suite: run_benchmark_probes(runner, items, bank, settings)}
    return {suite: run_foils(runner, bank, FoilRows.from_items(items, np.arange(len(items))), settings)}


def _code_version() -> str:
    from ..pretrain.factory import code_version

    return code_version()


def run_objectives(record: Mapping | None) -> list[str] | None:
    """The pretraining objectives named in a run record ('mlm,itm:0.5' -> ['mlm', 'itm']), None when unknown."""
    text = ((record or {}).get("config") or {}).get("objectives")
    if not isinstance(text, str):
        return None
    return [part.split(":")[0].strip() for part in text.split(",") if part.strip()]


def expand_suites(suites: Sequence[str]) -> list[str]:
    """Suite names in run order; "all" is every suite."""
    chosen = []
    for name in suites:
        if name == "all":
            chosen += SUITES
        elif name in SUITES:
            chosen.append(name)
        else:
            raise ConfigError(f"--suite={name!r}: expected one of {SUITES} or 'all'")
    return list(dict.fromkeys(chosen))


def evaluate(
    model_dir: str,
    suites: Sequence[str] = ("all",),
    output: str | None = None,
    items_per_phenomenon: int = 200,
    settings: Settings | None = None,
    world_config: str | None = None,
    eval_sets_file: str | None = None,
    benchmark: str | None = None,
    benchmark_file: str | None = None,
    image_dir: str | None = None,
    device: str | None = None,
    log=print,
) -> dict:
    """Run the suites (or a real benchmark) on the model in ``model_dir``; write ``output`` and return the results."""
    settings = settings or Settings()
    chosen = _check_request(suites, items_per_phenomenon, benchmark, benchmark_file, image_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_path, run_dir = resolve_model_dir(model_dir)
    record = read_run_record(run_dir) if run_dir else None
    world = None if benchmark else _world_for(model_dir, world_config, record, run_dir)
    model, processor = load_model(model_path, device)
    runner = Runner(model, processor, device, settings.batch_size)
    started = time.perf_counter()
    results = _results_header(model_dir, model_path, record, device, settings)
    if benchmark:
        _add_benchmark(results, runner, benchmark, benchmark_file, image_dir, settings, log)
    else:
        sets = _synthetic_sets(chosen, world, runner, eval_sets_file, items_per_phenomenon)
        _add_synthetic(results, runner, chosen, world, sets, record, items_per_phenomenon, settings, log)
    results["seconds"] = round(time.perf_counter() - started, 2)
    results = json_ready(results)
    errors = validate_json(results, load_schema())
    if errors:
        raise RuntimeError("results do not follow training/evaluation/results_schema.json:\n" + "\n".join(errors[:20]))
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w", encoding="utf-8") as handle:
            strict_json.dump(results, handle, indent=1)
    return results


def _check_request(suites, items_per_phenomenon, benchmark, benchmark_file, image_dir) -> list[str]:
    """The chosen suites, after checking the request (before any work)."""
    expect(
        isinstance(items_per_phenomenon, int) and items_per_phenomenon >= 4,
        "--items-per-phenomenon",
        items_per_phenomenon,
        "an integer >= 4 (a quick run a few hundred, a full run thousands)",
    )
    chosen = expand_suites(suites)
    if benchmark and benchmark not in BENCHMARKS:
        raise ConfigError(f"--benchmark={benchmark!r}: expected one of {tuple(BENCHMARKS)}")
    if benchmark and tuple(suites) != ("all",) and chosen != [BENCHMARKS[benchmark]]:
        raise ConfigError(
            f"--suite={','.join(suites)}: --benchmark {benchmark} runs the "
            f"{BENCHMARKS[benchmark]!r} suite; leave --suite out or give that one"
        )
    if benchmark:
        if not benchmark_file or not os.path.isfile(benchmark_file):
            raise ConfigError(f"--benchmark-file={benchmark_file!r}: expected an existing {benchmark} file")
        if not image_dir or not os.path.isdir(image_dir):
            raise ConfigError(f"--image-dir={image_dir!r}: expected the folder of the benchmark's images")
    return chosen


def _world_for(model_dir, world_config, record, run_dir):
    """The synthetic world the model was pretrained on: --world-config, else the run's run.yaml."""
    if world_config:
        return load_world_file(world_config)
    if record:
        return world_from_run_config(record["config"], os.path.join(run_dir, "run.yaml"))
    raise ConfigError(
        f"--world-config: {model_dir!r} has no run.yaml inside or beside it; give "
        f"--world-config FILE (a run.yaml, a run config or WorldConfig fields)"
    )


def _results_header(model_dir, model_path, record, device, settings) -> dict:
    """results.json before any suite ran: what was evaluated, with which code and settings."""
    return {
        "format": RESULTS_FORMAT,
        "format_version": RESULTS_VERSION,
        "model_dir": os.path.abspath(model_dir),
        "model_path": os.path.abspath(model_path),
        "code_version": _code_version(),
        "model_code_version": record.get("code_version") if record else None,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device,
        "config": record["config"] if record else None,
        "settings": settings.to_dict(),
        "seeds": {"evaluation": settings.seed},
        "world_config": None,
        "eval_world_config": None,
        "item_counts": {},
        "skipped": {},
        "benchmark": None,
        "suites": {},
    }


def _add_benchmark(results, runner, benchmark, benchmark_file, image_dir, settings, log) -> None:
    """A real benchmark's file read (skipped records counted, listed and their reasons tallied) and its suite run."""
    items, skipped, records = read_benchmark(benchmark, benchmark_file, image_dir)
    reasons = Counter(entry["reason"].split(":")[0] for entry in skipped)
    results["benchmark"] = {
        "name": benchmark,
        "file": os.path.abspath(benchmark_file),
        "image_dir": os.path.abspath(image_dir),
        "n_records": records,
        "n_items": len(items),
        "n_skipped": len(skipped),
        "skipped_by_reason": dict(reasons),
        "skipped": skipped[:100],
    }
    for entry in skipped[:5]:
        log(f"skipped {entry['id']}: {entry['reason']}")
    results["item_counts"] = {BENCHMARKS[benchmark]: len(items)}
    results["suites"] = run_benchmark(runner, benchmark, items, settings)


def _synthetic_sets(chosen, world, runner, eval_sets_file, items_per_phenomenon):
    """The evaluation sets: read from --eval-sets (checked against the model and the suites) or built."""
    if not eval_sets_file:
        sizes = eval_set_sizes(chosen, items_per_phenomenon, world.config)
        return es.build_eval_sets(world.config, sizes, image_size=runner.image_size, patch_size=runner.patch_size)
    try:
        sets = es.load_eval_sets(eval_sets_file)
    except (OSError, ValueError) as error:
        raise ConfigError(f"--eval-sets={eval_sets_file!r}: {error}") from None
    if sets.meta.get("patch_size") != runner.patch_size or sets.meta.get("image_size") != runner.image_size:
        raise ConfigError(
            f"--eval-sets={eval_sets_file!r}: built for {sets.meta.get('image_size')} px images "
            f"in {sets.meta.get('patch_size')} px patches; the model takes "
            f"{runner.image_size} px in {runner.patch_size} px patches"
        )
    for suite in chosen:
        for name in SUITE_SETS[suite][:1]:  # held-out items are optional
            if not sets.get(name):
                raise ConfigError(
                    f"--eval-sets={eval_sets_file!r}: holds no {name!r} items, which the {suite} suite needs"
                )
    return sets


def _add_synthetic(results, runner, chosen, world, sets, record, items_per_phenomenon, settings, log) -> None:
    """The synthetic suites run on `sets`, with the world, seeds and item counts they used."""
    pair_counts = world.pair_counts() if "frequency" in chosen else None
    results["world_config"] = {
        "source": world.source,
        "training_scenes": list(world.training_scenes),
        **world.config.to_dict(),
    }
    results["eval_world_config"] = sets.meta.get("world_config")
    results["seeds"].update(
        {
            "world": world.config.seed,
            "eval_world": (sets.meta.get("world_config") or {}).get("seed"),
            "eval_seed_offset": sets.meta.get("seed_offset"),
        }
    )
    results["item_counts"] = {name: len(items) for name, items in sets.items()}
    results["skipped"] = dict(sets.skipped)
    results["settings"]["items_per_phenomenon"] = items_per_phenomenon
    config = record["config"] if record else None
    objectives = run_objectives(record)
    results["suites"] = run_synthetic(
        runner, chosen, sets, pair_counts, settings, log, objectives, config, items_per_phenomenon
    )


@dataclass
class EvaluateArguments:
    """`vlp evaluate MODEL_DIR --output FILE`: the options, parsed by `HfArgumentParser`."""

    model_dir: str = field(metadata={"help": "a `vlp pretrain` run folder (run.yaml, model/) or a saved model folder"})
    output: str = field(metadata={"help": "where to write results.json"})
    suite: str = field(default="all", metadata={"help": f"comma-separated suites from {', '.join(SUITES)}, or 'all'"})
    items_per_phenomenon: int = field(
        default=200,
        metadata={
            "help": "items per foil phenomenon / Winoground phenomenon / probe task, grounding items; frequency "
            "items per pair are a 64th of it (a full run thousands)"
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "seed of the bootstrap, mismatched images, occlusion and MIM draws and probes; the items "
            "themselves come from the world's seed, identical for every model"
        },
    )
    world_config: str | None = field(
        default=None,
        metadata={
            "help": "the pretraining world: a run.yaml, a run config or WorldConfig fields (default: run.yaml of "
            "MODEL_DIR or beside it)"
        },
    )
    eval_sets: str | None = field(
        default=None, metadata={"help": "evaluation sets saved with eval_sets.save_eval_sets (instead of drawing)"}
    )
    benchmark: str | None = field(
        default=None, metadata={"help": f"a real benchmark instead of the synthetic world: {', '.join(BENCHMARKS)}"}
    )
    benchmark_file: str | None = field(
        default=None,
        metadata={"help": "the benchmark's file (VALSE/SugarCrepe/ARO json, Winoground examples.jsonl, probing csv)"},
    )
    image_dir: str | None = field(default=None, metadata={"help": "the folder of the benchmark's images"})
    batch_size: int = field(default=64, metadata={"help": "rows per forward pass"})
    n_resamples: int = field(default=2000, metadata={"help": "bootstrap resamples"})
    occlusion: str = field(
        default="mask",
        metadata={"help": "hide patches with the model's 'mask' embedding or 'blank' pixels (background grey)"},
    )
    relevance_layers: str = field(
        default="-1", metadata={"help": "layers whose attention points (comma-separated; -1 the last; averaged)"}
    )
    device: str | None = field(default=None, metadata={"help": "torch device (default cuda when available, else cpu)"})


EVALUATE_DESCRIPTION = (
    "Run the evaluation suite on a pretrained model: zero-shot foils, Winoground pairs, probes, cross-modal use, "
    "grounding and concept frequency on the synthetic world (or a real benchmark), each beside its language-bias "
    "floor. Writes results.json and prints a summary."
)


def _int_list(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected comma-separated integers, e.g. '-1' or '0,1'") from None
    expect(bool(values), name, text, "at least one layer index")
    return values


def cli(argv: Sequence[str]) -> dict:
    """``vlp evaluate MODEL_DIR --suite ... --output results.json [...]``."""
    args = parse_command(EvaluateArguments, argv, "vlp evaluate", EVALUATE_DESCRIPTION, positional=("model_dir",))
    if args.benchmark and not (args.benchmark_file and args.image_dir):
        raise ConfigError(f"--benchmark {args.benchmark}: expected --benchmark-file FILE and --image-dir DIR too")
    if not args.benchmark and (args.benchmark_file or args.image_dir):
        raise ConfigError("--benchmark-file/--image-dir: expected --benchmark NAME beside them")
    suites = tuple(part.strip() for part in args.suite.split(",") if part.strip()) or ("all",)
    settings = Settings(
        seed=args.seed,
        batch_size=args.batch_size,
        n_resamples=args.n_resamples,
        occlusion=args.occlusion,
        relevance_layers=_int_list(args.relevance_layers, "--relevance-layers"),
    )

    def log(message):
        print(message, file=sys.stderr, flush=True)

    results = evaluate(
        args.model_dir,
        suites,
        args.output,
        args.items_per_phenomenon,
        settings,
        args.world_config,
        args.eval_sets,
        args.benchmark,
        args.benchmark_file,
        args.image_dir,
        args.device,
        log,
    )
    print(summary_table(results))
    print(f"\nwrote {args.output} ({results['seconds']:.0f} s)")
    return results
