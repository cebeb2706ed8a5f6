"""`vlp study`: pretrain several objective mixes on the same budget and seeds, evaluate each run, and report the
differences to a baseline mix with intervals.

A study file (YAML; presets in `training/configs/studies/`) holds:

    name, description
    baseline: the mix the others are compared with
    seeds: [0, 1, 2]                  every mix runs with the same seeds
    primary_metrics: [...]            declared up front; the report leads with them
    base: {...}                       pretraining keys shared by every mix (the budget: max_steps, batch, ...)
    mixes: [{name, overrides: {...}}]
    evaluation: {suites: [...], items_per_phenomenon: N}      optional (`vlp evaluate`)
    finetune: {vqa: {...}}            optional short VQA finetune per run (`vlp finetune vqa` keys); the question-only
                                      and random-initialisation baselines run once per study
    masks_for: mix name               optional: the mix whose masks are pictured (attention-guided masking)

Each (mix, seed) is a folder `runs/<mix>/seed<seed>/` with the merged config, the pretraining run (resumable: a run
that stopped restarts from its last checkpoint), `evaluation.json` and `finetune/`. A step writes its output last
and atomically, so a finished step is never redone and a killed study continues where it stopped. `results.json`
holds only what the runs determine (no wall times), so an interrupted and an uninterrupted study give the same file;
times go to `costs.json` and the report.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import yaml

from ...model_cards import is_primary
from ...processing import strict_json
from ..cli_args import parse_command
from ..config import ConfigError, parse_config, read_yaml, to_dict
from ..evaluation.settings import SUITES
from ..pretrain.guided_masking import POLICY_KEYS, mask_fingerprint
from ..statistics import MIN_SEEDS_FOR_CLAIMS, bootstrap_ci, hierarchical_bootstrap_difference, holm_correction
from .report import write_report

STUDIES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "studies")
RESULTS_FORMAT = "vlp-study-results"
RESULTS_VERSION = 1


# -- the study file ---------------------------------------------------------------------------------------------------


def study_path(preset_or_file):
    """A preset name (quick, standard, gpu, agmm, gitm, ...) or a path to a study YAML file."""
    if os.path.isfile(preset_or_file):
        return preset_or_file
    path = os.path.join(STUDIES_DIR, f"{preset_or_file}.yaml")
    if not os.path.isfile(path):
        presets = sorted(name[:-5] for name in os.listdir(STUDIES_DIR) if name.endswith(".yaml"))
        raise ConfigError(f"{preset_or_file!r} is neither a file nor a preset; presets: {', '.join(presets)}")
    return path


def load_study(path):
    """The study as a dict, checked: every mix's config parses, names are unique, the baseline is a mix."""
    study = read_yaml(path) or {}
    if not isinstance(study, dict):
        raise ConfigError(f"{path}: expected a mapping with name, baseline, seeds, base, mixes")
    for key in ("name", "baseline", "seeds", "base", "mixes"):
        if key not in study:
            raise ConfigError(f"{path}: missing key {key!r} (a study needs name, baseline, seeds, base, mixes)")
    names = [mix.get("name") for mix in study["mixes"]]
    if len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"{path}: mix names must be present and unique; got {names}")
    if study["baseline"] not in names:
        raise ConfigError(f"{path}: baseline {study['baseline']!r} is not one of the mixes {names}")
    if not study["seeds"] or not all(isinstance(seed, int) for seed in study["seeds"]):
        raise ConfigError(f"{path}: seeds must be a non-empty list of integers; got {study['seeds']!r}")
    parsed = {}
    for mix in study["mixes"]:
        try:
            parsed[mix["name"]] = parse_config(values=mix_values(study, mix, study["seeds"][0], "unused"))
        except ConfigError as error:
            raise ConfigError(f"{path}: mix {mix['name']!r}: {error}") from None
    check_distinct_mixes(path, parsed)
    if study.get("masks_for") is not None and study["masks_for"] not in names:
        raise ConfigError(f"{path}: masks_for {study['masks_for']!r} is not one of the mixes {names}")
    suites = (study.get("evaluation") or {}).get("suites", [])
    unknown = [suite for suite in suites if suite not in (*SUITES, "all")]
    if unknown:
        raise ConfigError(f"{path}: evaluation suites {unknown} unknown; expected some of {list(SUITES)} or 'all'")
    return study


def probe_unit_counts(model_args, data_args, scenes=64):
    """{target: maskable units per sample} for `mask_fingerprint`: words of the world's captions (MLM; 3 to 20 for
    caption files) and the patches of one image (MIM)."""
    words = list(range(3, 21))
    if data_args.dataset == "shapes":
        from ...processing.worlds import shapes as shapes_world

        world = shapes_world.WorldConfig(
            num_scenes=scenes,
            seed=data_args.world_seed,
            max_objects=data_args.max_objects,
            zipf_exponent=data_args.zipf_exponent,
            held_out_pairs=tuple(data_args.held_out()),
        )
        words = [
            len(caption.text.split())
            for index in range(scenes)
            for caption in shapes_world.generate_captions(
                shapes_world.sample_scene(world, index), random.Random(index), count=2
            )
        ]
    return {"mlm": words, "mim": [(model_args.image_size // model_args.patch_size) ** 2]}


def check_distinct_mixes(path, parsed):
    """Two mixes that would train alike make a study compare a mix with itself: an error naming both.

    Mixes that differ only in how the masking policy draws (`POLICY_KEYS`) are compared by the masks they would draw
    on a probe of the study's own caption lengths and patch grid (`mask_fingerprint`); any other difference counts.
    """
    flat = {name: to_dict(arguments) for name, arguments in parsed.items()}
    groups = {}
    for name, values in flat.items():
        rest = tuple(
            sorted(
                (key, repr(value)) for key, value in values.items() if key not in POLICY_KEYS and key != "output_dir"
            )
        )
        groups.setdefault(rest, []).append(name)
    for names in groups.values():
        seen = {}
        for name in names:
            model_args, data_args, train_args = parsed[name]
            fingerprint = (
                tuple(sorted(mask_fingerprint(train_args, probe_unit_counts(model_args, data_args)).items()))
                if train_args.masking_policy
                else "no policy masking"
            )
            if fingerprint in seen:
                other = seen[fingerprint]
                differences = (
                    ", ".join(
                        f"{key} {flat[other][key]!r} vs {flat[name][key]!r}"
                        for key in POLICY_KEYS
                        if flat[other][key] != flat[name][key]
                    )
                    or "nothing"
                )
                alike = "draw identical masks" if train_args.masking_policy else "train alike"
                raise ConfigError(
                    f"{path}: mixes {other!r} and {name!r} would {alike} (they differ only in "
                    f"{differences}), so the study would compare a mix with itself; make them differ or drop one"
                )
            seen[fingerprint] = name


def mix_values(study, mix, seed, output_dir):
    return {**study["base"], **(mix.get("overrides") or {}), "seed": seed, "output_dir": output_dir}


# -- running ----------------------------------------------------------------------------------------------------------


def _write_json(path, data):
    """Atomic: a reader sees the old file or the whole new one, never a partial one."""
    strict_json.write_json(path, data, atomic=True, indent=2, sort_keys=True)


def _read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _vlp(args, log_path, env=None):
    """Runs `vlp ARGS` in a subprocess (isolated state and memory), its output appended to `log_path`."""
    command = [sys.executable, "-m", "vlp.training.cli", *args]
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ vlp {' '.join(args)}\n")
        log.flush()
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
    if result.returncode != 0:
        raise RuntimeError(f"`vlp {args[0]}` failed (exit {result.returncode}); see {log_path}")


def run_study(preset_or_file, output_dir, budget_seconds=None, runner=None, jobs=1):
    """Runs (or continues) a study; returns the results dict. `runner(args, log_path, env)` runs one `vlp` command
    (tests replace it); `budget_seconds` stops starting new runs once that much wall time has passed.

    `jobs` > 1 runs that many (mix, seed) runs at once, each in its own processes with cores // jobs threads
    (``OMP_NUM_THREADS``) and its own log (``logs/<mix>-seed<seed>.log``), the costliest runs first (by
    `step_flops` x steps). On a few CPU cores small models use a second thread poorly, so two one-thread runs side by
    side finish sooner than two two-thread runs in a row. Thread counts change the last bits of the arithmetic:
    rerun a study with the same `jobs` on the same kind of machine to reproduce its results.json."""
    path = study_path(preset_or_file)
    study = load_study(path)
    runner = runner or _vlp
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1; got {jobs!r}")
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "study.yaml"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(study, handle, sort_keys=False)
    started = time.time()
    costs_path = os.path.join(output_dir, "costs.json")
    costs = _read_json(costs_path) if os.path.exists(costs_path) else {}
    lock = threading.Lock()
    pairs = [(mix, seed) for seed in study["seeds"] for mix in study["mixes"]]
    env = None
    if jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        pairs.sort(key=lambda pair: -_run_cost(study, pair[0], pair[1], output_dir))

    def one(mix, seed):
        if budget_seconds is not None and time.time() - started > budget_seconds:
            return
        if jobs == 1:
            log_path = os.path.join(output_dir, "study.log")
        else:
            os.makedirs(os.path.join(output_dir, "logs"), exist_ok=True)
            log_path = os.path.join(output_dir, "logs", f"{mix['name']}-seed{seed}.log")
        _run_one(study, mix, seed, output_dir, partial(runner, env=env) if env else runner, log_path, costs, lock)
        with lock:
            _write_json(costs_path, costs)

    if jobs == 1:
        for mix, seed in pairs:
            one(mix, seed)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for future in [pool.submit(one, mix, seed) for mix, seed in pairs]:
                future.result()
    complete = all(os.path.exists(os.path.join(_run_dir(output_dir, m["name"], s), "DONE")) for m, s in pairs)
    results = collect_results(study, output_dir)
    results["complete"] = complete
    baselines = os.path.join(output_dir, "vqa_baselines", "results.json")
    if os.path.exists(baselines):
        results["vqa_baselines"] = {k: v for k, v in _numbers(_read_json(baselines)).items() if not is_wall_time(k)}
    _write_json(os.path.join(output_dir, "results.json"), results)
    write_report(study, results, costs, output_dir)
    return results


def _run_cost(study, mix, seed, output_dir):
    """Estimated model FLOPs of one run's pretraining (for ordering parallel runs)."""
    values = mix_values(study, mix, seed, _run_dir(output_dir, mix["name"], seed))
    return step_flops(values) * parse_config(values=values)[2].max_steps


def _run_one(study, mix, seed, output_dir, runner, log_path, costs, lock):
    """One (mix, seed): pretraining, evaluation and the VQA finetune, each skipped when already done; the study's
    question-only and random-initialisation VQA floors with the baseline's first seed."""
    run_dir = _run_dir(output_dir, mix["name"], seed)
    _pretrain(runner, study, mix, seed, run_dir, log_path, costs, lock)
    evaluation = study.get("evaluation") or {}
    target = os.path.join(run_dir, "evaluation.json")
    if evaluation and not os.path.exists(target):
        suites = ",".join(evaluation.get("suites", ["all"]))
        flags = _flags({k: v for k, v in evaluation.items() if k != "suites"})
        runner(["evaluate", run_dir, "--output", target, "--suite", suites, "--seed", str(seed), *flags], log_path)
    finetune = (study.get("finetune") or {}).get("vqa")
    if not finetune:
        return
    vqa_dir = os.path.join(run_dir, "finetune_vqa")
    if not os.path.exists(os.path.join(vqa_dir, "DONE")):
        variants = ["--variants", "pretrained"]
        runner(["finetune", "vqa", run_dir, "--output_dir", vqa_dir, *variants, *_flags(finetune)], log_path)
        _mark_done(vqa_dir)
    baselines = os.path.join(output_dir, "vqa_baselines")
    first = (mix["name"], seed) == (study["baseline"], study["seeds"][0])
    if first and not os.path.exists(os.path.join(baselines, "DONE")):
        # Once per study: question-only (image blanked) and random-initialisation finetunes, the floors that show
        # what pretraining bought.
        variants = ["--variants", "question_only,random_init"]
        runner(["finetune", "vqa", run_dir, "--output_dir", baselines, *variants, *_flags(finetune)], log_path)
        _mark_done(baselines)


def _run_dir(output_dir, mix, seed):
    return os.path.join(output_dir, "runs", mix, f"seed{seed}")


def _flags(values):
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def _mark_done(folder, record=None):
    os.makedirs(folder, exist_ok=True)
    _write_json(os.path.join(folder, "DONE"), record or {})


def _pretrain(runner, study, mix, seed, run_dir, log_path, costs, lock=None):
    """Pretrains one (mix, seed) unless finished; a stopped run resumes from its newest checkpoint."""
    if os.path.exists(os.path.join(run_dir, "DONE")):
        return
    os.makedirs(run_dir, exist_ok=True)
    config_path = os.path.join(run_dir, "config.yaml")
    with open(config_path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(mix_values(study, mix, seed, run_dir), handle, sort_keys=False)
    began = time.time()
    runner(["pretrain", "--config", config_path, "--progress_bar", "false"], log_path)
    record = {"pretrain_seconds": time.time() - began, **_train_costs(run_dir)}
    with lock or contextlib.nullcontext():
        costs[f"{mix['name']}/seed{seed}"] = record
    _mark_done(run_dir)


def _train_costs(run_dir):
    """Mean step time and throughput from the run's training log."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    records = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    train = [r for r in records if r.get("split") == "train" and "step_time" in r]
    if not train:
        return {}
    step_time = float(np.mean([r["step_time"] for r in train]))
    samples = train[-1].get("samples_seen", 0) / max(1, train[-1]["step"])
    return {"step_time": step_time, "samples_per_second": samples / step_time if step_time else None}


# -- what a study found -----------------------------------------------------------------------------------------------


def step_flops(config_values):
    """Model FLOPs of one optimizer step, estimated: per objective pass, 6 x (non-embedding parameters) x tokens
    plus the attention score and value products (12 x layers x hidden x S^2 per sample, forward and backward).
    An estimate for comparing mixes, not a measurement; guidance passes (no backward) count a third; joint masking's
    MLM and MIM share one pass."""
    model_args, data_args, train_args = parse_config(values=config_values)
    hidden, layers = model_args.hidden_size, model_args.num_hidden_layers
    params = layers * (4 * hidden * hidden + 2 * hidden * model_args.intermediate_size)
    patches = (model_args.image_size // model_args.patch_size) ** 2
    text = data_args.max_length
    batch = train_args.per_device_batch_size * train_args.gradient_accumulation_steps

    def pass_flops(tokens, rows=batch):
        return rows * (6 * params * tokens + 12 * layers * hidden * tokens**2)

    joint = text + 1 + patches
    flops = 0.0
    objectives = train_args.objective_weights()
    # Joint masking trains MLM and MIM in one pass (see training.objectives.JOINT_PASS).
    one_pass = (
        train_args.masking_policy
        and train_args.joint_masking != "independent"
        and {"mlm", "mim"} <= set(objectives)
        and train_args.mixing == "sum"
    )
    for name in objectives:
        if name == "mim" and one_pass:
            continue
        if name in ("mlm", "itm", "wra", "mim"):
            rows = 3 * batch if (name == "itm" and train_args.itm_negatives == "hard") else batch
            flops += pass_flops(joint, rows)
        elif name == "itc":
            flops += pass_flops(text) + pass_flops(1 + patches)
        elif name == "gitm":
            cells = data_args.gitm_rows * data_args.gitm_cols
            canvas = patches * (cells if data_args.gitm_mode == "full" else 1)
            flops += pass_flops(data_args.gitm_max_length + 1 + canvas)
    if train_args.masking_policy and train_args.masking_policy != "random" and train_args.guidance_source != "itm":
        flops += pass_flops(joint) / 3
    if train_args.mixing == "sample":
        flops /= len(objectives)
    return flops


def _is_figure(tree):
    return isinstance(tree, dict) and "value" in tree and set(tree) <= {"value", "low", "high"}


def _numbers(tree, prefix=""):
    """Flattens the scalar figures of a nested results dict: {'foils.colour.acc_r': 0.7, ...}; a figure written as
    {"value", "low", "high"} (the evaluation suite's) counts as its value."""
    flat = {}
    if _is_figure(tree):
        return _numbers(tree["value"], prefix)
    if isinstance(tree, dict):
        for key, value in tree.items():
            flat.update(_numbers(value, f"{prefix}{key}."))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool) and math.isfinite(tree):
        flat[prefix[:-1]] = float(tree)
    return flat


def _item_values(value):
    return (
        isinstance(value, list)
        and len(value) > 1
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def _items(tree, prefix=""):
    """Per-item values, keyed by the flattened name of the figure they average: those a comparison block of
    `vlp evaluate` keeps under "items" (figure name -> values, for its "score" figures), and any saved beside a
    figure as `<figure>_items` (e.g. `accuracy_items`: 1/0 per question). They make paired, item-level intervals
    possible."""
    found = {}
    if isinstance(tree, dict):
        block_items = tree.get("items") if isinstance(tree.get("score"), dict) else None
        for key, value in tree.items():
            if isinstance(block_items, dict) and value is block_items:
                found.update(
                    {
                        f"{prefix}score.{name}": np.asarray(values, dtype=float)
                        for name, values in block_items.items()
                        if _item_values(values)
                    }
                )
            elif key.endswith("_items") and _item_values(value):
                found[f"{prefix}{key[: -len('_items')]}"] = np.asarray(value, dtype=float)
            else:
                found.update(_items(value, f"{prefix}{key}."))
    return found


def _intervals(tree, prefix=""):
    """The item-bootstrap intervals an evaluation saved with its figures: {'foils.colour.acc_r': (low, high)}."""
    found = {}
    if _is_figure(tree):
        low, high = tree.get("low"), tree.get("high")
        if isinstance(low, (int, float)) and isinstance(high, (int, float)):
            found[prefix[:-1]] = (float(low), float(high))
    elif isinstance(tree, dict):
        for key, value in tree.items():
            found.update(_intervals(value, f"{prefix}{key}."))
    return found


def is_wall_time(name):
    """Whether a flattened figure name is a wall time or a rate (`seconds`, `train_seconds`, `train_runtime`,
    `samples_per_second`): those go to costs.json, never into results.json, which holds only what the runs
    determine (and so is the same for an interrupted and an uninterrupted study)."""
    last = name.rsplit(".", 1)[-1]
    return last == "seconds" or last.endswith(("_seconds", "_runtime", "per_second"))


def run_figures(run_dir):
    """Every scalar figure of one run: final validation metrics, evaluation suite, VQA finetune (wall times left
    out); per-item values and the evaluation's own item intervals ride along under the keys '_items' and
    '_intervals'."""
    figures, items, intervals = {}, {}, {}
    sources = (("val", "final_metrics.json"), ("eval", "evaluation.json"), ("vqa", "finetune_vqa/results.json"))
    for prefix, name in sources:
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            data = _read_json(path)
            figures.update({f"{prefix}.{k}": v for k, v in _numbers(data).items() if not is_wall_time(k)})
            items.update({f"{prefix}.{k}": v for k, v in _items(data).items()})
            intervals.update({f"{prefix}.{k}": v for k, v in _intervals(data).items()})
    items["_intervals"] = intervals
    return figures, items


def collect_results(study, output_dir, n_resamples=2000):
    """Per mix and metric: per-seed values, mean and a bootstrap interval over seeds (or, with one seed, over that
    seed's items where the evaluation saved them); differences to the baseline with a paired, hierarchical bootstrap
    (seeds, then items) where items exist, else over seeds; Holm correction across the compared metrics."""
    seeds = study["seeds"]
    per_run = {}
    for mix in study["mixes"]:
        for seed in seeds:
            run_dir = _run_dir(output_dir, mix["name"], seed)
            if os.path.exists(os.path.join(run_dir, "DONE")):
                per_run[(mix["name"], seed)] = run_figures(run_dir)
    primary = list(study.get("primary_metrics") or [])
    results = {
        "format": RESULTS_FORMAT,
        "format_version": RESULTS_VERSION,
        "study": study["name"],
        "baseline": study["baseline"],
        "seeds": seeds,
        "primary_metrics": primary,
        "mixes": {},
        "differences": {},
    }
    for mix in study["mixes"]:
        name = mix["name"]
        runs = [per_run[(name, s)] for s in seeds if (name, s) in per_run]
        metrics = {}
        for metric in sorted(set().union(*(figures for figures, _ in runs)) if runs else ()):
            values = [figures[metric] for figures, _ in runs if metric in figures]
            entry = {"per_seed": values, "mean": float(np.mean(values))}
            if len(values) > 1:
                entry.update(_interval(bootstrap_ci(values, n_resamples=n_resamples), "seeds"))
            else:
                item_values = runs[0][1].get(metric)
                saved = runs[0][1]["_intervals"].get(metric)
                if item_values is not None and len(item_values) > 1:
                    entry.update(_interval(bootstrap_ci(item_values, n_resamples=n_resamples), "items"))
                elif saved is not None:
                    entry.update({"low": saved[0], "high": saved[1], "interval_over": "items"})
            metrics[metric] = entry
        values = mix_values(study, mix, seeds[0], "unused")
        max_steps, flops = parse_config(values=values)[2].max_steps, step_flops(values)
        results["mixes"][name] = {
            "runs": len(runs),
            "overrides": mix.get("overrides") or {},
            "max_steps": max_steps,
            "step_flops": flops,
            "total_flops": flops * max_steps,
            "metrics": metrics,
        }
    results["differences"] = _differences(study, per_run, primary, n_resamples)
    return results


def _interval(interval, over):
    return {"low": interval.low, "high": interval.high, "interval_over": over}


def _differences(study, per_run, primary, n_resamples):
    """Each mix minus the baseline, per metric, with Holm-adjusted p-values across the metrics compared for it."""
    baseline, seeds = study["baseline"], study["seeds"]
    out = {}
    for mix in study["mixes"]:
        name = mix["name"]
        if name == baseline:
            continue
        pairs = [(per_run.get((baseline, s)), per_run.get((name, s))) for s in seeds]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if not pairs:
            continue
        compared = {}
        common = set.intersection(*(set(a[0]) & set(b[0]) for a, b in pairs))
        for metric in sorted(common):
            base_items = [a[1].get(metric) for a, _ in pairs]
            mix_items = [b[1].get(metric) for _, b in pairs]
            if all(x is not None and y is not None and len(x) == len(y) > 1 for x, y in zip(base_items, mix_items)):
                test = hierarchical_bootstrap_difference(base_items, mix_items, n_resamples=n_resamples)
                over = test.resampled
            elif len(pairs) > 1:
                test = hierarchical_bootstrap_difference(
                    [[a[0][metric]] for a, _ in pairs], [[b[0][metric]] for _, b in pairs], n_resamples=n_resamples
                )
                over = "seeds"
            else:
                compared[metric] = {
                    "difference": pairs[0][1][0][metric] - pairs[0][0][0][metric],
                    "interval_over": "none (one seed, no items)",
                }
                continue
            compared[metric] = {
                "difference": test.interval.point,
                "low": test.interval.low,
                "high": test.interval.high,
                "p_value": test.p_value,
                "interval_over": over,
            }
        tested = [m for m in compared if "p_value" in compared[m] and (not primary or is_primary(m, primary))]
        if tested:
            correction = holm_correction([compared[m]["p_value"] for m in tested])
            for metric, adjusted, reject in zip(tested, correction.adjusted, correction.reject):
                compared[metric]["p_holm"] = float(adjusted)
                # A claim about objectives needs training runs to vary: with one seed, an interval over evaluation
                # items says nothing about another run of the same mix, so nothing is significant.
                compared[metric]["significant"] = bool(reject) and len(pairs) >= MIN_SEEDS_FOR_CLAIMS
        out[name] = compared
    return out


# -- command line -----------------------------------------------------------------------------------------------------


@dataclass
class StudyArguments:
    """`vlp study STUDY --output_dir DIR`: the options, parsed by `HfArgumentParser` (STUDY may come first)."""

    study: str = field(metadata={"help": "a preset (quick, standard, gpu, agmm, gitm, budget) or a study YAML file"})
    output_dir: str = field(metadata={"help": "the study's folder; the same command again resumes it"})
    jobs: int = field(default=1, metadata={"help": "runs at once, each with cores // jobs threads (costliest first)"})
    budget_seconds: float | None = field(default=None, metadata={"help": "start no new run after this long"})


def cli(argv):
    description = (
        "Pretrain each objective mix of a study with the same seeds, evaluate every run, and write report.md, "
        "plots and results.json. Resumable: run the same command again."
    )
    args = parse_command(StudyArguments, argv, "vlp study", description, positional=("study",))
    results = run_study(args.study, args.output_dir, args.budget_seconds, jobs=args.jobs)
    print(
        f"study {results['study']}: {'complete' if results['complete'] else 'incomplete'}; "
        f"report: {os.path.join(args.output_dir, 'report.md')}"
    )


__all__ = ["collect_results", "load_study", "run_study", "step_flops", "study_path"]
