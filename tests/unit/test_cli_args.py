"""Command options from dataclasses (`training/cli_args.parse_command`) and the `vlp data` / `vlp pretrain`
front ends built on it."""

from dataclasses import dataclass, field

import datasets
import pytest

from vlp.training import cli
from vlp.training.cli_args import parse_command


@dataclass
class Toy:
    run_dir: str = field(metadata={"help": "the run"})
    repo_id: str = field(metadata={"help": "the repo"})
    dry_run: str | None = field(default=None, metadata={"help": "a folder"})
    private: bool = field(default=False, metadata={"help": "a flag"})


@dataclass
class Other:
    num_samples: int = field(default=3, metadata={"help": "how many"})


def test_positionals_spellings_and_several_classes():
    args = parse_command(Toy, ["runs/x", "--repo-id", "me/x", "--dry_run", "out", "--private"], "t", "d", ("run_dir",))
    assert args == Toy("runs/x", "me/x", "out", True)
    toy, other = parse_command((Toy, Other), ["--run_dir", "r", "--repo_id", "i", "--num-samples", "7"], "t", "d")
    assert (toy.run_dir, toy.private, other.num_samples) == ("r", False, 7)


def test_unknown_options_and_missing_ones_exit_2_naming_them(capsys):
    with pytest.raises(SystemExit) as stopped:
        parse_command(Toy, ["r", "--repo-id", "i", "--colour", "red"], "vlp toy", "d", ("run_dir",))
    assert stopped.value.code == 2 and "unrecognized arguments: --colour red" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        parse_command(Toy, ["r"], "vlp toy", "d", ("run_dir",))
    assert stopped.value.code == 2 and "--repo_id" in capsys.readouterr().err


def test_vlp_data_shapes_writes_the_world_with_its_options(tmp_path, monkeypatch):
    monkeypatch.setenv("VLP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "world"
    argv = ["data", "shapes", "--out", str(out), "--num-scenes", "12", "--seed", "3", "--held-out", "red circle"]
    assert cli.main(argv) in (0, None)
    rows = datasets.load_from_disk(str(out))
    assert len(rows) == 12 and not any("red circle" in c for cs in rows["captions"] for c in cs)
    assert cli.main(["data"]) == 2 and cli.main(["data", "tiles", "--out", str(out)]) == 2


def test_vlp_pretrain_reads_the_config_file_and_passes_every_other_option_on(tmp_path, monkeypatch):
    seen = {}

    def fake_parse_config(path, overrides):
        seen.update(path=path, overrides=overrides)
        raise SystemExit(0)

    monkeypatch.setattr("vlp.training.config.parse_config", fake_parse_config)
    with pytest.raises(SystemExit):
        cli._pretrain(["--config", "a.yaml", "--max_steps", "5", "--objectives", "mlm,itm"])
    assert seen == {"path": "a.yaml", "overrides": ["--max_steps", "5", "--objectives", "mlm,itm"]}
