"""Every JSON file VLP writes is strict JSON: undefined figures are null, never NaN or Infinity."""

import ast
import glob
import json
import math
import os

import numpy as np
import pytest
from repo_paths import ROOT

from vlp.processing import strict_json

PROJECT_FOLDERS = ("modeling_vlp", "processing", "training", "model_cards")


def test_non_finite_numbers_become_null_and_numpy_values_plain_ones(tmp_path):
    value = {
        "acc": float("nan"),
        "low": -math.inf,
        "n": np.int64(3),
        "x": np.float32(0.5),
        "arr": np.array([1.0, np.nan]),
        "pair": (np.bool_(True), math.inf),
        7: "key",
    }
    assert strict_json.finite(value) == {
        "acc": None,
        "low": None,
        "n": 3,
        "x": 0.5,
        "arr": [1.0, None],
        "pair": [True, None],
        "7": "key",
    }
    path = tmp_path / "out.json"
    strict_json.write_json(path, value, atomic=True, indent=1)
    assert strict_json.loads_strict(path.read_text())["acc"] is None
    assert not os.path.exists(f"{path}.tmp")
    with pytest.raises(ValueError, match="not strict JSON: NaN"):
        strict_json.loads_strict('{"a": NaN}')


class _Refusing(ValueError):
    pass


def _refuse(constant):
    raise _Refusing(constant)


def test_the_run_folder_of_a_pretraining_run_holds_only_strict_json(pretrained_run):
    files = [
        path
        for pattern in ("**/*.json", "**/*.jsonl")
        for path in glob.glob(os.path.join(pretrained_run, pattern), recursive=True)
    ]
    names = {os.path.basename(path) for path in files}
    assert {"final_metrics.json", "metrics.jsonl", "config.json"} <= names, names
    for path in files:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        lines = text.splitlines() if path.endswith(".jsonl") else [text]
        for line in filter(str.strip, lines):
            json.loads(line, parse_constant=_refuse)  # raises on NaN / Infinity
    with open(os.path.join(pretrained_run, "final_metrics.json"), encoding="utf-8") as handle:
        final = json.load(handle)
    assert all(value is None or math.isfinite(value) for value in final.values() if not isinstance(value, str))


def test_project_code_writes_json_only_through_strict_json():
    """json.dump / json.dumps would write NaN for an undefined figure; strict_json converts it to null first."""
    offenders = []
    for folder in PROJECT_FOLDERS:
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
            if os.path.basename(path) == "strict_json.py":
                continue
            tree = ast.parse(open(path, encoding="utf-8").read())
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("dump", "dumps")
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "json"
                ):
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert not offenders, f"use vlp.processing.strict_json: {offenders}"
