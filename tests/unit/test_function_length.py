"""No function in training/ or processing/ is longer than 80 lines (decorators excluded, docstring included), so
that each reads in one screen; `pretrain`, the training loop, fits in 40."""

import ast
import os

import pytest
from repo_paths import ROOT

MAX_LINES = 80


def _functions(folder):
    for directory, _, names in os.walk(os.path.join(ROOT, folder)):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                        yield os.path.relpath(path, ROOT), node.name, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("folder", ["training", "processing"])
def test_no_function_is_longer_than_a_screen(folder):
    found = list(_functions(folder))
    assert len(found) > 100  # the walk reached the package
    long = [f"{path}:{name} ({lines} lines)" for path, name, lines in found if lines > MAX_LINES]
    assert not long, f"functions over {MAX_LINES} lines: {long}"


def test_the_training_loop_fits_a_screen():
    lines = {name: n for path, name, n in _functions("training") if path.endswith(os.path.join("pretrain", "loop.py"))}
    assert lines["pretrain"] <= 40, lines["pretrain"]
