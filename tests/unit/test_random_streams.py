"""One table of random streams (processing/random_streams.py): distinct ids, and no module with ids of its own."""

import ast
import os

import numpy as np
from repo_paths import ROOT

from vlp.processing import grouping, random_streams
from vlp.training.pretrain import guided_masking

FOLDERS = ("modeling_vlp", "processing", "training")


def test_every_stream_id_is_distinct():
    ids = list(random_streams.NUMPY_STREAMS.values())
    assert len(ids) >= 16 and len(set(ids)) == len(ids), random_streams.NUMPY_STREAMS
    world = list(random_streams.WORLD_STREAMS.values())
    assert len(set(world)) == len(world) and all(0 <= value < 4 for value in world)  # two bits of purpose


def test_grouped_matching_and_word_guidance_draw_different_numbers_for_the_same_sample():
    assert grouping.GITM_STREAM != guided_masking.WORD_STREAM
    seed, epoch, index = 3, 1, 17
    draws = {
        stream: np.random.default_rng([seed, epoch, index, stream]).random(8)
        for stream in (grouping.GITM_STREAM, guided_masking.WORD_STREAM, guided_masking.PATCH_STREAM)
    }
    values = list(draws.values())
    assert not any(np.allclose(values[i], values[j]) for i in range(3) for j in range(i + 1, 3))


def _stream_definitions(path):
    """(line, name) of every module-level NAME_STREAM = <int literal> and of every integer literal as the last
    element of a `default_rng([...])` seed list."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.endswith("_STREAM"):
                    found.append((node.lineno, target.id))
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "default_rng"
            and node.args
            and isinstance(node.args[0], ast.List)
            and node.args[0].elts
            and isinstance(node.args[0].elts[-1], ast.Constant)
        ):
            found.append((node.lineno, f"default_rng([..., {node.args[0].elts[-1].value!r}])"))
    return found


def test_no_module_defines_a_stream_id_outside_the_table():
    offenders = []
    for folder in FOLDERS:
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                path = os.path.join(directory, name)
                if name.endswith(".py") and not path.endswith(os.path.join("processing", "random_streams.py")):
                    offenders += [
                        f"{os.path.relpath(path, ROOT)}:{line}: {what}" for line, what in _stream_definitions(path)
                    ]
    assert not offenders, "stream ids belong in processing/random_streams.py:\n" + "\n".join(offenders)
