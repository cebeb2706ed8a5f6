"""The shapes world as a Hugging Face dataset (built in memory or cached on disk)."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ... import strict_json
from .config import WorldConfig
from .examples import WorldExample, generate_examples
from .rendering import render_batch
from .vocabulary import WORLD_VERSION

_CHUNK = 1024


def dataset_features():
    """The ``datasets.Features`` of a shapes-world dataset."""
    import datasets

    strings = datasets.List(datasets.Value("string"))
    return datasets.Features(
        {
            "image": datasets.Image(),
            "captions": strings,
            "clean_captions": strings,
            "caption_kinds": strings,
            "noise_kinds": strings,
            "caption_refs": datasets.Value("string"),
            "clean_caption_refs": datasets.Value("string"),
            "scene": datasets.Value("string"),
            "index": datasets.Value("int64"),
        }
    )


def _png(pixels: np.ndarray) -> dict:
    """A PNG-encoded image in the form the ``datasets.Image`` feature stores."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return {"bytes": buffer.getvalue(), "path": None}


def example_rows(examples: Sequence[WorldExample], image_size: int) -> dict[str, list]:
    """Columns of dataset rows for a list of examples (renders their images)."""
    images = render_batch([e.scene for e in examples], image_size)
    return {
        "image": [_png(img) for img in images],
        "captions": [list(e.captions) for e in examples],
        "clean_captions": [[c.text for c in e.clean] for e in examples],
        "caption_kinds": [[c.kind for c in e.clean] for e in examples],
        "noise_kinds": [list(e.noise_kinds) for e in examples],
        "caption_refs": [strict_json.dumps([list(r) for r in e.refs]) for e in examples],
        "clean_caption_refs": [strict_json.dumps([list(c.refs) for c in e.clean]) for e in examples],
        "scene": [strict_json.dumps(e.scene.to_dict(), sort_keys=True) for e in examples],
        "index": [e.index for e in examples],
    }


def _build_in_memory(config: WorldConfig):
    """Generate, render and encode every example, in chunks."""
    import datasets

    features, parts = dataset_features(), []
    for start in range(0, config.num_scenes, _CHUNK):
        examples = generate_examples(config, start, min(start + _CHUNK, config.num_scenes))
        parts.append(datasets.Dataset.from_dict(example_rows(examples, config.image_size), features=features))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def build_dataset(config: WorldConfig, cache_dir: str | os.PathLike | None = None):
    """The world as a ``datasets.Dataset``; with ``cache_dir``, saved under cache_dir/<config key> and reused."""
    import datasets

    if cache_dir is None:
        return _build_in_memory(config)
    path = os.path.join(os.fspath(cache_dir), f"shapes-{config.cache_key()}")
    if not os.path.exists(os.path.join(path, "state.json")):
        tmp = f"{path}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _build_in_memory(config).save_to_disk(tmp)
        _write_config(tmp, config)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    return datasets.load_from_disk(path)


def _write_config(directory: str, config: WorldConfig):
    """Record the generating config beside the saved dataset."""
    with open(os.path.join(directory, "world_config.json"), "w", encoding="utf-8") as f:
        strict_json.dump({"world_version": WORLD_VERSION, **config.to_dict()}, f, indent=2, sort_keys=True)


def write_shapes_dataset(out_dir: str | os.PathLike, **config):
    """Build the world from ``WorldConfig`` fields and save it to ``out_dir`` (``vlp data shapes``)."""
    world = WorldConfig(**config)
    dataset = _build_in_memory(world)
    dataset.save_to_disk(os.fspath(out_dir))
    _write_config(os.fspath(out_dir), world)
    return dataset
