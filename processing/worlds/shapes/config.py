"""WorldConfig: every parameter of a shapes world, checked."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

from ... import strict_json
from .vocabulary import (
    CAPTION_KINDS,
    COLOUR_RGB,
    COLOURS,
    HELD_OUT_POLICIES,
    MAX_OBJECTS,
    SHAPE_PLURALS,
    SHAPES,
    WORLD_VERSION,
)


@dataclass
class WorldConfig:
    """Everything that determines a shapes-world dataset; equal configs give identical datasets."""

    num_scenes: int = 1000
    seed: int = 0
    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 3
    captions_per_scene: int = 4
    caption_kinds: tuple[str, ...] = CAPTION_KINDS
    zipf_exponent: float = 1.0
    ranking_seed: int = 0
    held_out_pairs: tuple = ()
    held_out_policy: str = "exclude"
    noise_rate: float = 0.0
    noise_mix: tuple[float, float, float] = (1.0, 1.0, 1.0)
    background_noise: float = 0.0

    def __post_init__(self):
        self.caption_kinds = tuple(self.caption_kinds)
        self.held_out_pairs = _normalise_pairs(self.held_out_pairs)
        self.noise_mix = tuple(float(w) for w in self.noise_mix)
        _check_int("num_scenes", self.num_scenes, 1, 2**32 - 1)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("image_size", self.image_size, 16, 1024)
        _check_int("min_objects", self.min_objects, 1, MAX_OBJECTS)
        _check_int("max_objects", self.max_objects, self.min_objects, MAX_OBJECTS)
        _check_int("captions_per_scene", self.captions_per_scene, 1, 64)
        _check_int("ranking_seed", self.ranking_seed, 0, 2**63 - 1)
        _check_float("zipf_exponent", self.zipf_exponent, 0.0, 5.0)
        _check_float("noise_rate", self.noise_rate, 0.0, 1.0)
        _check_float("background_noise", self.background_noise, 0.0, 0.5)
        self._check_choices()
        # plain Python types, so that equal configs give equal cache keys
        for name in (
            "num_scenes",
            "seed",
            "image_size",
            "min_objects",
            "max_objects",
            "captions_per_scene",
            "ranking_seed",
        ):
            setattr(self, name, int(getattr(self, name)))
        for name in ("zipf_exponent", "noise_rate", "background_noise"):
            setattr(self, name, float(getattr(self, name)))

    def _check_choices(self):
        """Validate the fields that take words from a fixed set."""
        if not self.caption_kinds or any(k not in CAPTION_KINDS for k in self.caption_kinds):
            raise ValueError(
                f"WorldConfig.caption_kinds must be a non-empty subset of {CAPTION_KINDS}, got {self.caption_kinds}"
            )
        if self.held_out_policy not in HELD_OUT_POLICIES:
            raise ValueError(
                f"WorldConfig.held_out_policy must be one of {HELD_OUT_POLICIES}, got {self.held_out_policy!r}"
            )
        if len(self.held_out_pairs) >= len(COLOURS) * len(SHAPES):
            raise ValueError("WorldConfig.held_out_pairs must leave at least one colour-shape pair for training scenes")
        if self.held_out_policy == "require" and not self.held_out_pairs:
            raise ValueError("WorldConfig.held_out_pairs must be non-empty when held_out_policy='require'")
        if len(self.noise_mix) != 3 or min(self.noise_mix) < 0 or sum(self.noise_mix) <= 0:
            raise ValueError(
                "WorldConfig.noise_mix must be 3 non-negative weights (wrong, partial, uninformative) "
                f"with a positive sum, got {self.noise_mix}"
            )

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of the fields."""
        data = dataclasses.asdict(self)
        data["held_out_pairs"] = [list(pair) for pair in self.held_out_pairs]
        return data

    def cache_key(self) -> str:
        """A short hash of the config and ``WORLD_VERSION``, naming its on-disk cache."""
        text = strict_json.dumps({"world_version": WORLD_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_int(name: str, value, low: int, high: int):
    """Raise a ValueError naming ``name`` unless ``value`` is an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"WorldConfig.{name} must be an integer in [{low}, {high}], got {value!r}")


def _check_float(name: str, value, low: float, high: float):
    """Raise a ValueError naming ``name`` unless ``value`` is a number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not low <= value <= high:
        raise ValueError(f"WorldConfig.{name} must be a number in [{low}, {high}], got {value!r}")


def _normalise_pairs(pairs) -> tuple[tuple[str, str], ...]:
    """Held-out pairs as sorted (colour, shape) tuples; accepts "red circle" strings or 2-sequences."""
    result = set()
    for pair in pairs or ():
        words = tuple(pair.split() if isinstance(pair, str) else pair)
        if len(words) != 2 or words[0] not in COLOUR_RGB or words[1] not in SHAPE_PLURALS:
            raise ValueError(f"WorldConfig.held_out_pairs: {pair!r} is not a (colour, shape) pair")
        result.add(words)
    return tuple(sorted(result))
