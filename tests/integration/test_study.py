"""The study runner: study files, resuming a killed study without redoing finished steps, identical results.json,
the statistics of the differences, the report, and the presets."""

import json
import os
import re
import time

import numpy as np
import pytest
import yaml

from vlp.training.config import ConfigError, parse_config
from vlp.training.statistics import MIN_SEEDS_FOR_CLAIMS
from vlp.training.studies.runner import (
    _run_cost,
    collect_results,
    load_study,
    mix_values,
    run_study,
    step_flops,
    study_path,
)

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "max_steps": 5,
}


def write_study(tmp_path, seeds=(0, 1), evaluation=True, finetune=False):
    study = {
        "name": "toy",
        "baseline": "base",
        "seeds": list(seeds),
        "primary_metrics": ["foils.acc_r"],
        "base": dict(TINY),
        "mixes": [{"name": "base", "overrides": {}}, {"name": "plus", "overrides": {"objectives": "mlm,itm,mim"}}],
    }
    if evaluation:
        study["evaluation"] = {"suites": ["foils"], "items_per_phenomenon": 20}
    if finetune:
        study["finetune"] = {"vqa": {"epochs": 1}}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(study))
    return str(path)


class FakeRunner:
    """Stands in for `vlp pretrain|evaluate`: writes what they write, deterministically from (mix, seed). The mix
    `plus` is better on every item by construction; `fail_at` raises at that call (a killed study)."""

    def __init__(self, fail_at=None):
        self.calls, self.envs, self.logs, self.fail_at = [], [], [], fail_at

    def __call__(self, args, log_path, env=None):
        self.calls.append(args)
        self.envs.append(env)
        self.logs.append(log_path)
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise KeyboardInterrupt("killed")
        if args[0] == "pretrain":
            config = yaml.safe_load(open(args[2]))
            run_dir, seed = config["output_dir"], config["seed"]
            plus = "mim" in config.get("objectives", "")
            os.makedirs(os.path.join(run_dir, "model"), exist_ok=True)
            json.dump(
                {"itm_accuracy": 0.6 + 0.05 * plus + 0.01 * seed, "mlm_loss": 2.0 - 0.1 * plus},
                open(os.path.join(run_dir, "final_metrics.json"), "w"),
            )
            with open(os.path.join(run_dir, "metrics.jsonl"), "w") as handle:
                for step in (1, 2):
                    handle.write(
                        json.dumps(
                            {
                                "step": step,
                                "split": "train",
                                "mlm_loss": 3.0 - step,
                                "step_time": 0.1,
                                "samples_seen": 8 * step,
                            }
                        )
                        + "\n"
                    )
        elif args[0] == "finetune":
            out = args[args.index("--output_dir") + 1]
            os.makedirs(out, exist_ok=True)
            variants = args[args.index("--variants") + 1].split(",")
            # wall times differ from one execution to the next, as in `vlp finetune`'s results
            json.dump(
                {v: {"accuracy": 0.5 + 0.1 * len(v) / 20, "train_seconds": time.perf_counter()} for v in variants},
                open(os.path.join(out, "results.json"), "w"),
            )
        elif args[0] == "evaluate":
            run_dir = args[1]
            plus = "/plus/" in run_dir
            seed = int(run_dir.rsplit("seed", 1)[1])
            rng = np.random.default_rng(seed)
            items = (rng.random(200) < 0.6 + 0.2 * plus).astype(float).tolist()
            # the comparison block of `vlp evaluate`: score figures, floors, differences and per-item values
            value = float(np.mean(items))
            block = {
                "n_items": 200,
                "headline": "acc_r",
                "score": {"acc_r": {"value": value, "low": value - 0.05, "high": value + 0.05}},
                "floors": {"text_only": {"acc_r": {"value": 0.5, "low": 0.45, "high": 0.55}}},
                "differences": {},
                "items": {"acc_r": items},
            }
            frequency = {
                "slope": {"score": {"value": 0.02 + 0.03 * plus, "low": 0.0, "high": 0.05 + 0.03 * plus}},
                "held_out": {"score": {"acc_r": {"value": 0.55, "low": 0.5, "high": 0.6}}},
                "buckets": [
                    {
                        "bucket": b,
                        "count_low": 10.0**b,
                        "count_high": 10.0 ** (b + 1),
                        "score": {"acc_r": {"value": 0.5 + 0.1 * b + 0.05 * plus}},
                    }
                    for b in (1, 2)
                ],
            }
            json.dump(
                {
                    "suites": {"foils": {"phenomena": {"colour": block}}, "frequency": frequency},
                    "seconds": time.perf_counter(),
                },
                open(args[args.index("--output") + 1], "w"),
            )


def test_killed_study_resumes_without_redoing_runs_and_gives_the_same_results(tmp_path):
    """Killed at its sixth command and run again: only the killed command and those after it run, and results.json
    is identical to an uninterrupted study's, although every execution writes different wall times."""
    path = write_study(tmp_path, finetune=True)
    whole = FakeRunner()
    uninterrupted = run_study(path, str(tmp_path / "whole"), runner=whole)
    # 2 mixes x 2 seeds x (pretrain, evaluate, finetune), and the VQA baselines once
    assert uninterrupted["complete"] and len(whole.calls) == 13
    killed = FakeRunner(fail_at=6)
    with pytest.raises(KeyboardInterrupt):
        run_study(path, str(tmp_path / "resumed"), runner=killed)
    again = FakeRunner()
    resumed = run_study(path, str(tmp_path / "resumed"), runner=again)
    expected = [
        [str(a).replace(str(tmp_path / "whole"), str(tmp_path / "resumed")) for a in call] for call in whole.calls[5:]
    ]
    assert again.calls == expected, again.calls  # the killed call and what followed it; nothing redone
    first = json.load(open(tmp_path / "whole" / "results.json"))
    second = json.load(open(tmp_path / "resumed" / "results.json"))
    assert first == second == json.loads(json.dumps(resumed))
    assert os.path.exists(tmp_path / "resumed" / "report.md")


def test_parallel_runs_give_the_same_results_with_their_own_threads_and_logs(tmp_path, monkeypatch):
    """--jobs 2: the same commands as one at a time (in another order), the same results.json, each command with
    cores // 2 threads and the log of its own run; the costlier mix (+MIM: one more pass a step) starts first."""
    path = write_study(tmp_path, finetune=True)
    serial = FakeRunner()
    first = run_study(path, str(tmp_path / "serial"), runner=serial)
    assert all(env is None for env in serial.envs)
    assert set(serial.logs) == {str(tmp_path / "serial" / "study.log")}
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    parallel = FakeRunner()
    second = run_study(path, str(tmp_path / "parallel"), runner=parallel, jobs=2)
    assert first == second
    same = [
        [str(a).replace(str(tmp_path / "parallel"), str(tmp_path / "serial")) for a in call] for call in parallel.calls
    ]
    assert sorted(map(str, same)) == sorted(map(str, serial.calls)) and len(same) == 13
    assert all(env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"} for env in parallel.envs)
    for call, log in zip(parallel.calls, parallel.logs, strict=True):
        run = next(a for a in call if "/runs/" in str(a))
        mix, seed = run.split("/runs/")[1].split("/")[:2]
        assert log == str(tmp_path / "parallel" / "logs" / f"{mix}-{seed}.log")
    assert parallel.calls[0][0] == "pretrain" and "/runs/plus/" in parallel.calls[0][2]
    study = load_study(path)
    base, plus = study["mixes"]
    assert _run_cost(study, plus, 0, str(tmp_path)) > _run_cost(study, base, 0, str(tmp_path)) > 0
    with pytest.raises(ValueError, match="jobs must be an integer >= 1; got 0"):
        run_study(path, str(tmp_path / "none"), runner=FakeRunner(), jobs=0)


def test_mixes_with_their_own_steps_report_steps_and_compute_per_mix(tmp_path):
    """A compute-matched study (the costlier mix trains fewer steps): each mix's steps reach its runs, results hold
    steps and total FLOPs per mix, and the report says the budget differs by mix instead of calling it equal."""
    study = yaml.safe_load(open(write_study(tmp_path)))
    study["mixes"][1]["overrides"]["max_steps"] = 3
    path = tmp_path / "matched.yaml"
    path.write_text(yaml.safe_dump(study))
    runner = FakeRunner()
    results = run_study(str(path), str(tmp_path / "out"), runner=runner)
    configs = {
        call[2].split("/runs/")[1].split("/")[0]: yaml.safe_load(open(call[2]))["max_steps"]
        for call in runner.calls
        if call[0] == "pretrain"
    }
    assert configs == {"base": 5, "plus": 3}
    base, plus = results["mixes"]["base"], results["mixes"]["plus"]
    assert (base["max_steps"], plus["max_steps"]) == (5, 3)
    assert base["total_flops"] == pytest.approx(5 * base["step_flops"])
    assert plus["total_flops"] == pytest.approx(3 * plus["step_flops"])
    report = open(tmp_path / "out" / "report.md").read()
    assert "equal for every mix" not in report
    assert "steps per mix {'base': 5, 'plus': 3}" in report and "about the same compute" in report
    assert f"| {plus['step_flops']:.3g} | {plus['total_flops']:.3g} |" in report


def test_differences_use_items_and_seeds_and_the_report_says_where_a_mix_helps(tmp_path):
    path = write_study(tmp_path)
    results = run_study(path, str(tmp_path / "out"), runner=FakeRunner())
    diff = results["differences"]["plus"]["eval.suites.foils.phenomena.colour.score.acc_r"]
    assert diff["interval_over"] == "seeds, items" and diff["low"] > 0 and diff["significant"]
    assert 0.1 < diff["difference"] < 0.3  # 0.2 by construction, 200 items per seed
    entry = results["mixes"]["plus"]["metrics"]["val.itm_accuracy"]
    assert entry["per_seed"] == pytest.approx([0.65, 0.66]) and entry["interval_over"] == "seeds"
    report = open(tmp_path / "out" / "report.md").read()
    assert "**plus**: higher on eval.suites.foils.phenomena.colour.score.acc_r" in report
    assert "learning_curves.png" in report and os.path.exists(tmp_path / "out" / "learning_curves.png")
    # rare concepts as a plot too: acc_r against the pair's pretraining count, per mix
    assert "![frequency.png](frequency.png)" in report and os.path.exists(tmp_path / "out" / "frequency.png")
    # Every primary score with its floors, next to it
    assert "## Floors of the primary metrics" in report
    # base scores about 0.6, plus about 0.8, on 200 items a seed: both clear the text-only floor of 0.5
    assert (
        "| eval.suites.foils.phenomena.colour.score.acc_r | text_only | 0.500 [0.500, 0.500] | 0.500 [0.500, "
        "0.500] |" in report
    )
    assert results["mixes"]["plus"]["step_flops"] > results["mixes"]["base"]["step_flops"]


def test_the_report_shows_rare_concepts_and_the_power_of_the_design(tmp_path):
    path = write_study(tmp_path)
    results = run_study(path, str(tmp_path / "out"), runner=FakeRunner())
    report = open(tmp_path / "out" / "report.md").read()
    rare = report.split("## Rare concepts", 1)[1].split("\n## ", 1)[0]
    assert "| slope of acc_r per decade of pair count | 0.020 [" in rare  # base; plus 0.050
    assert "| held-out pairs: acc_r | 0.550 [0.550, 0.550] | 0.550 [0.550, 0.550] |" in rare
    assert "| 1 | 10–100 | 0.600 | 0.650 |" in rare and "| 2 | 100–1000 | 0.700 | 0.750 |" in rare
    power = report.split("## Power", 1)[1].split("\n## ", 1)[0]
    difference = results["differences"]["plus"]["eval.suites.foils.phenomena.colour.score.acc_r"]
    from vlp.training.studies.report import minimum_detectable_effect

    effect = minimum_detectable_effect(difference["low"], difference["high"])
    assert f"| eval.suites.foils.phenomena.colour.score.acc_r | {effect:.3f} | seeds, items |" in power
    assert minimum_detectable_effect(-0.196, 0.196) == pytest.approx(0.28, abs=1e-3)  # 2.8 standard errors


def test_a_score_that_does_not_clear_its_floor_is_marked():
    from vlp.training.studies.report import _floor_cell, _uncleared, _words

    metric, floor = "eval.x.score.acc_r", "eval.x.floors.blank.acc_r"
    values = {metric: {"mean": 0.52, "low": 0.48, "high": 0.56}, floor: {"mean": 0.5}}
    assert _uncleared(values, [metric], [metric, floor]) == {metric}
    line = _words("plus", {metric: {"significant": True, "difference": 0.04}}, {metric}, {metric})
    assert "higher on eval.x.score.acc_r (+0.040; a score not above its floors)" in line

    assert _floor_cell({"mean": 0.55, "low": 0.45, "high": 0.65}, {"mean": 0.5}).endswith("(not cleared)")
    assert not _floor_cell({"mean": 0.7, "low": 0.6, "high": 0.8}, {"mean": 0.5}).endswith("(not cleared)")
    assert _floor_cell({"mean": 0.7}, {"mean": 0.7}).endswith("(not cleared)")
    assert _floor_cell(None, None) == "—"


def test_one_seed_intervals_cover_items_only_and_the_report_says_so(tmp_path):
    path = write_study(tmp_path, seeds=(3,))
    results = run_study(path, str(tmp_path / "out"), runner=FakeRunner())
    metric = "eval.suites.foils.phenomena.colour.score.acc_r"
    assert results["mixes"]["base"]["metrics"][metric]["interval_over"] == "items"
    assert results["differences"]["plus"][metric]["interval_over"] == "items"
    # 0.2 better on 200 items by construction, far beyond its item-level interval: still no claim from one seed.
    difference = results["differences"]["plus"][metric]
    assert difference["low"] > 0 and difference["p_holm"] < 0.05 and not difference["significant"]
    report = open(tmp_path / "out" / "report.md").read()
    assert "shows no evidence about training runs" in report.split("\n\n", 3)[1]  # in its first lines
    assert not re.search(r"p_Holm [0-9.]+ \*", report) and "higher on" not in report
    assert "- **plus**: one seed; no claim." in report
    assert "intervals cover the sampling of evaluation items only" in open(tmp_path / "out" / "report.md").read()


def test_study_files_are_checked(tmp_path):
    path = write_study(tmp_path)
    study = yaml.safe_load(open(path))
    study["baseline"] = "nope"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match="baseline 'nope'"):
        load_study(str(tmp_path / "bad.yaml"))
    study["baseline"] = "base"
    study["mixes"][1]["overrides"] = {"objectivs": "mlm"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match="mix 'plus'.*objectivs"):
        load_study(str(tmp_path / "bad.yaml"))
    with pytest.raises(ConfigError, match="presets: .*quick"):
        study_path("no-such-preset")


def _policy_study(tmp_path, mixes):
    study = {
        "name": "masks",
        "baseline": mixes[0]["name"],
        "seeds": [0],
        "primary_metrics": ["foils.acc_r"],
        "base": dict(TINY, objectives="mlm,itm,mim"),
        "mixes": mixes,
    }
    path = tmp_path / "masks.yaml"
    path.write_text(yaml.safe_dump(study))
    return str(path)


def test_a_study_whose_arms_would_draw_identical_masks_is_rejected_naming_them(tmp_path):
    # hint with hint_share 0 reveals nothing: it is high under another name.
    path = _policy_study(
        tmp_path,
        [
            {"name": "high", "overrides": {"masking_policy": "high", "masking_targets": "mlm"}},
            {"name": "hint-off", "overrides": {"masking_policy": "hint", "masking_targets": "mlm", "hint_share": 0.0}},
        ],
    )
    with pytest.raises(
        ConfigError,
        match=r"mixes 'high' and 'hint-off' would draw identical masks .*"
        r"masking_policy 'high' vs 'hint', hint_share 0.1 vs 0.0",
    ):
        load_study(path)
    # Every unit drawn at random: high and low draw the same masks.
    path = _policy_study(
        tmp_path,
        [
            {"name": "high", "overrides": {"masking_policy": "high", "masking_random_share": 1.0}},
            {"name": "low", "overrides": {"masking_policy": "low", "masking_random_share": 1.0}},
        ],
    )
    with pytest.raises(ConfigError, match="mixes 'high' and 'low' would draw identical masks"):
        load_study(path)
    # Two mixes with the same overrides under two names.
    path = _policy_study(tmp_path, [{"name": "a", "overrides": {}}, {"name": "b", "overrides": {"hint_share": 0.2}}])
    with pytest.raises(ConfigError, match="mixes 'a' and 'b' would train alike .*hint_share 0.1 vs 0.2"):
        load_study(path)
    # hint at the default share on the world's short captions differs from high (it reveals one of two or more).
    load_study(
        _policy_study(
            tmp_path,
            [
                {"name": "high", "overrides": {"masking_policy": "high", "masking_targets": "mlm,mim"}},
                {"name": "hint", "overrides": {"masking_policy": "hint", "masking_targets": "mlm,mim"}},
            ],
        )
    )


def test_presets_load_with_two_seeds_or_more_and_every_mix_parses():
    for preset in ("quick", "standard", "gpu", "agmm", "gitm", "budget"):
        study = load_study(study_path(preset))
        names = [mix["name"] for mix in study["mixes"]]
        assert study["baseline"] in names and len(names) >= 2, preset
        # every preset that compares objectives on the evaluation suites can star a difference: claims need
        # seed-level evidence (budget, a search for the size at which the baseline learns, compares no objectives)
        assert preset == "budget" or len(study["seeds"]) >= MIN_SEEDS_FOR_CLAIMS, preset
        assert study["primary_metrics"], preset
        for mix in study["mixes"]:
            _, _, train_args = parse_config(values=mix_values(study, mix, study["seeds"][0], "unused"))
            wanted = (mix.get("overrides") or {}).get("objectives", study["base"]["objectives"])
            assert list(train_args.objective_weights()) == wanted.split(","), (preset, mix["name"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"masks_for": "nope"}, "masks_for 'nope' is not one of the mixes"),
        ({"evaluation": {"suites": ["foils", "foil"]}}, "evaluation suites ['foil'] unknown"),
    ],
)
def test_a_study_naming_an_unknown_mix_or_suite_is_refused_at_load(tmp_path, change, message):
    study = dict(yaml.safe_load(open(write_study(tmp_path))), **change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_study(str(path))


def test_step_flops_counts_the_passes_of_each_objective():
    base = dict(TINY, objectives="mlm,itm")
    one = step_flops(dict(TINY, objectives="mlm"))
    assert step_flops(base) == pytest.approx(2 * one)
    assert step_flops(dict(base, itm_negatives="hard")) == pytest.approx(4 * one)
    assert step_flops(dict(base, masking_policy="high")) == pytest.approx(2 * one + one / 3)
    assert step_flops(dict(base, mixing="sample")) == pytest.approx(one)
    # Joint masking: MLM and MIM in one pass
    guided = dict(TINY, objectives="mlm,mim", masking_policy="high", masking_targets="mlm,mim")
    assert step_flops(dict(guided, joint_masking="together")) == pytest.approx(step_flops(guided) - one)


def test_collect_results_on_an_empty_study_folder(tmp_path):
    study = load_study(write_study(tmp_path))
    results = collect_results(study, str(tmp_path / "empty"))
    assert results["mixes"]["base"]["runs"] == 0 and results["differences"] == {}


def test_vqa_finetune_per_run_and_baselines_once_per_study(tmp_path):
    study = yaml.safe_load(open(write_study(tmp_path, evaluation=False)))
    study["finetune"] = {"vqa": {"epochs": 1}}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(study))
    runner = FakeRunner()
    results = run_study(str(tmp_path / "ft.yaml"), str(tmp_path / "out"), runner=runner)
    finetunes = [call for call in runner.calls if call[0] == "finetune"]
    variants = sorted(call[call.index("--variants") + 1] for call in finetunes)
    assert variants == ["pretrained"] * 4 + ["question_only,random_init"]
    assert "vqa.pretrained.accuracy" in results["mixes"]["plus"]["metrics"]
    assert set(results["vqa_baselines"]) == {"question_only.accuracy", "random_init.accuracy"}
    again = FakeRunner()
    run_study(str(tmp_path / "ft.yaml"), str(tmp_path / "out"), runner=again)
    assert again.calls == []


def test_figures_with_intervals_from_the_evaluation_are_read_as_such(tmp_path):
    from vlp.training.studies.runner import run_figures

    run = tmp_path / "run"
    run.mkdir()
    json.dump(
        {"suites": {"foils": {"colour": {"score": {"acc_r": {"value": 0.7, "low": 0.6, "high": 0.8}}}}}},
        open(run / "evaluation.json", "w"),
    )
    figures, items = run_figures(str(run))
    assert figures == {"eval.suites.foils.colour.score.acc_r": 0.7}
    assert items["_intervals"] == {"eval.suites.foils.colour.score.acc_r": (0.6, 0.8)}


def test_learning_curves_draw_validation_accuracy_only_where_a_run_logged_it_more_than_once():
    from vlp.training.studies.report import curve_panels

    train = {"a": [{"step": 1, "mlm_loss": 3.0, "itm_loss": 0.7}], "b": [{"step": 1, "mlm_loss": 2.0}]}
    once = {"a": [{"step": 10, "itm_accuracy": 0.5}], "b": []}
    assert curve_panels(train, once) == [("train", "itm_loss"), ("train", "mlm_loss")]
    twice = {"a": [{"step": 0, "itm_accuracy": 0.5}, {"step": 10, "itm_accuracy": 0.8, "mlm_accuracy": 0.4}]}
    assert curve_panels(train, twice) == [("train", "itm_loss"), ("train", "mlm_loss"), ("val", "itm_accuracy")]


def test_the_command_line_reads_its_options_from_the_dataclass(monkeypatch, capsys):
    """`vlp study STUDY --output_dir DIR --jobs N --budget-seconds S` (STUDY first, dashes or underscores) reaches
    run_study; an unknown option stops with argparse's message."""
    from vlp.training.studies import runner as study_module

    calls = []

    def fake_run_study(preset, output_dir, budget_seconds, jobs):
        calls.append((preset, output_dir, budget_seconds, jobs))
        return {"study": preset, "complete": True}

    monkeypatch.setattr(study_module, "run_study", fake_run_study)
    study_module.cli(["quick", "--output_dir", "out", "--jobs", "2", "--budget-seconds", "5"])
    study_module.cli(["--study", "gitm", "--output_dir", "o2", "--budget_seconds", "7.5"])
    assert calls == [("quick", "out", 5.0, 2), ("gitm", "o2", 7.5, 1)]
    assert "study quick: complete; report: out/report.md" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        study_module.cli(["quick", "--output_dir", "out", "--workers", "2"])
    assert "unrecognized arguments: --workers 2" in capsys.readouterr().err


def test_learning_curves_keep_one_colour_per_mix_in_every_panel(tmp_path, monkeypatch):
    """A mix missing from a panel (only `b` trains GITM) does not shift the other mixes' colours; one legend names
    every mix."""
    import matplotlib.figure

    from vlp.training.studies.report import write_plots

    records = {
        "a": [{"split": "train", "step": s, "mlm_loss": 3.0 - s} for s in (1, 2)],
        "b": [{"split": "train", "step": s, "mlm_loss": 2.0 - s, "gitm_loss": 1.5 - s / 10} for s in (1, 2)],
    }
    for mix, lines in records.items():
        folder = tmp_path / "runs" / mix / "seed0"
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda figure, *a, **k: figures.append(figure))
    write_plots({}, {"seeds": [0], "mixes": {"a": {"metrics": {}}, "b": {"metrics": {}}}}, str(tmp_path))
    curves = figures[0]
    panels = {axis.get_title(): axis for axis in curves.axes if axis.get_title()}
    assert set(panels) == {"train gitm_loss", "train mlm_loss"}
    colour = {}
    for axis in panels.values():
        for line in axis.get_lines():
            ys = tuple(line.get_ydata())
            mix = "a" if ys == (2.0, 1.0) else "b"
            colour.setdefault(mix, set()).add(line.get_color())
    assert len(colour["a"]) == len(colour["b"]) == 1 and colour["a"] != colour["b"]  # b: one colour in both panels
    legend = [text.get_text() for legend in curves.legends for text in legend.get_texts()]
    assert legend == ["a", "b"]  # no chance line drawn, none in the legend
