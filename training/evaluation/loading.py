"""The model under evaluation, its run record and the world it was pretrained on."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from ...processing.worlds import shapes as sw
from ..config import ConfigError


@dataclass
class TrainingWorld:
    """The pretraining world: its config, the scene range the training data used, and where the config came from."""

    config: sw.WorldConfig
    training_scenes: tuple[int, int]
    source: str

    def pair_counts(self) -> Counter:
        """Objects per (colour, shape) pair in the training scenes: the pretraining data's actual counts."""
        return sw.concept_counts(sw.generate_scenes(self.config, *self.training_scenes))


def resolve_model_dir(model_dir: str) -> tuple[str, str | None]:
    """(model folder, folder of run.yaml or None) of a run folder (run.yaml, model/) or of a saved model folder."""
    model_dir = os.fspath(model_dir)
    if os.path.isfile(os.path.join(model_dir, "run.yaml")) and os.path.isdir(os.path.join(model_dir, "model")):
        return os.path.join(model_dir, "model"), model_dir
    if os.path.isfile(os.path.join(model_dir, "config.json")):
        for candidate in (model_dir, os.path.dirname(os.path.abspath(model_dir))):
            if os.path.isfile(os.path.join(candidate, "run.yaml")):
                return model_dir, candidate
        return model_dir, None
    raise ConfigError(
        f"MODEL_DIR={model_dir!r}: expected a `vlp pretrain` run folder (run.yaml and model/) or a "
        f"saved model folder (config.json)"
    )


def read_run_record(run_dir: str) -> dict:
    """The run.yaml mapping of a run folder (``config``, ``code_version``, ``seed``...)."""
    import yaml

    path = os.path.join(run_dir, "run.yaml")
    with open(path, encoding="utf-8") as handle:
        record = yaml.safe_load(handle) or {}
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'config' mapping (a `vlp pretrain` run record)")
    return record


_WORLD_FIELDS = {f.name for f in dataclasses.fields(sw.WorldConfig)}
_RUN_WORLD_KEYS = (
    "dataset",
    "num_scenes",
    "val_scenes",
    "world_seed",
    "max_objects",
    "zipf_exponent",
    "noise_rate",
    "background_noise",
    "held_out_pairs",
    "image_size",
)


def world_from_dict(data: Mapping, source: str) -> sw.WorldConfig:
    """A WorldConfig from its fields (``WorldConfig.to_dict`` or a dataset's world_config.json)."""
    unknown = sorted(set(data) - _WORLD_FIELDS - {"world_version"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown WorldConfig field(s) {unknown}; expected names from {sorted(_WORLD_FIELDS)}"
        )
    values = {k: v for k, v in data.items() if k in _WORLD_FIELDS}
    for name in ("caption_kinds", "noise_mix"):
        if name in values:
            values[name] = tuple(values[name])
    if "held_out_pairs" in values:
        pairs = values["held_out_pairs"]
        values["held_out_pairs"] = tuple(tuple(p) if not isinstance(p, str) else p for p in pairs)
    try:
        return sw.WorldConfig(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: {error}") from None


def world_from_run_config(config: Mapping, source: str) -> TrainingWorld:
    """The training world of a run config (the keys ``training/pretrain/data.py`` builds the world from)."""
    dataset = config.get("dataset", "shapes")
    if dataset != "shapes":
        path = os.path.join(str(dataset), "world_config.json")
        if not os.path.isfile(path):
            raise ConfigError(f"{source}: dataset={dataset!r} has no world_config.json; give --world-config FILE")
        with open(path, encoding="utf-8") as handle:
            world = world_from_dict(json.load(handle), path)
        val = int(config.get("val_scenes", 0))
        return TrainingWorld(world, (0, max(1, world.num_scenes - val)), path)
    held = [
        tuple(part.replace(":", " ").split())
        for part in str(config.get("held_out_pairs") or "").split(",")
        if part.strip()
    ]
    try:
        world = sw.WorldConfig(
            num_scenes=int(config.get("num_scenes", 4000)),
            seed=int(config.get("world_seed", 0)),
            image_size=int(config.get("image_size", 64)),
            max_objects=int(config.get("max_objects", 3)),
            zipf_exponent=float(config.get("zipf_exponent", 1.0)),
            held_out_pairs=held,
            background_noise=float(config.get("background_noise", 0.0)),
            noise_rate=float(config.get("noise_rate", 0.0)),
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: {error}") from None
    return TrainingWorld(world, (0, world.num_scenes), source)


def load_world_file(path: str) -> TrainingWorld:
    """``--world-config FILE``: a run.yaml, a flat run config, or WorldConfig fields (YAML or JSON)."""
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"--world-config={path!r}: file not found")
    with open(path, encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ConfigError(f"--world-config={path!r}: not valid YAML/JSON ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--world-config={path!r}: expected a mapping (a run.yaml or WorldConfig fields)")
    if isinstance(data.get("config"), dict):
        return world_from_run_config(data["config"], path)
    if set(data) <= _WORLD_FIELDS | {"world_version"}:
        world = world_from_dict(data, path)
        return TrainingWorld(world, (0, world.num_scenes), path)
    if set(data) & set(_RUN_WORLD_KEYS):
        return world_from_run_config(data, path)
    raise ConfigError(
        f"--world-config={path!r}: expected a run.yaml (with 'config'), a run config (world_seed, "
        f"num_scenes, ...) or WorldConfig fields; got keys {sorted(data)[:10]}"
    )


def load_model(model_path: str, device: str = "cpu"):
    """(VLPForPreTraining in eval mode on ``device``, VLPProcessor) from a saved model folder."""
    from ...modeling_vlp import VLPForPreTraining
    from ...processing.processing_vlp import VLPProcessor

    try:
        model = VLPForPreTraining.from_pretrained(model_path)
        processor = VLPProcessor.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"MODEL_DIR: could not load a VLP model and processor from {model_path!r} ({error})"
        ) from None
    return model.to(device).eval(), processor
