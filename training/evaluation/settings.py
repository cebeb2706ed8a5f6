"""What the evaluation suites share: the suite names, the sets each reads, and `Settings` (items, batch size,
bootstrap resamples, seeds)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ...processing.worlds import shapes as sw
from ..config import ConfigError

SUITES = ("foils", "winoground", "probes", "crossmodal", "grounding", "frequency", "itm", "gitm")
#: Real benchmarks and the suite each goes through.
BENCHMARKS = {"valse": "foils", "sugarcrepe": "foils", "aro": "foils", "winoground": "winoground", "probing": "probes"}
REPRESENTATIONS = ("cls", "text_mean", "image_mean")
OCCLUSION_MODES = ("mask", "blank")
CROSSMODAL_CATEGORIES = {"colour": sw.COLOURS, "shape": sw.SHAPES, "size": sw.SIZES}
BLANK = -1  # the image id of the blank image
BLANK_RGB = sw.BACKGROUND_RGB
RESULTS_FORMAT = "vlp-evaluation-results"
RESULTS_VERSION = 1
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_schema.json")
NUM_FREQUENCY_BUCKETS = 5
#: The evaluation sets (processing/worlds/eval_sets.py) each suite reads.
SUITE_SETS = {
    "foils": ("foils",),
    "winoground": ("winoground",),
    "probes": ("probes",),
    "crossmodal": ("grounding",),
    "grounding": ("grounding",),
    "frequency": ("frequency", "held_out"),
    "itm": (),
    "gitm": (),
}
#: The text-only floors train on items of the evaluation world's config with this seed offset (never evaluated).
TEXT_FLOOR_SEED_OFFSET = 7919


@dataclass(frozen=True)
class Settings:
    """How the suite runs; ``seed`` drives the bootstrap, derangements, occlusion and MIM draws and the probes."""

    seed: int = 0
    batch_size: int = 64
    n_resamples: int = 2000
    confidence: float = 0.95
    occlusion: str = "mask"
    relevance_layers: tuple[int, ...] = (-1,)
    mim_probability: float = 0.4
    probe_C: float = 1.0

    def __post_init__(self):
        expect(isinstance(self.seed, int) and self.seed >= 0, "--seed", self.seed, "an integer >= 0")
        expect(
            isinstance(self.batch_size, int) and self.batch_size >= 1,
            "--batch-size",
            self.batch_size,
            "an integer >= 1",
        )
        expect(
            isinstance(self.n_resamples, int) and self.n_resamples >= 1,
            "--n-resamples",
            self.n_resamples,
            "an integer >= 1",
        )
        expect(0.0 < self.confidence < 1.0, "confidence", self.confidence, "a number in (0, 1)")
        expect(self.occlusion in OCCLUSION_MODES, "--occlusion", self.occlusion, f"one of {OCCLUSION_MODES}")
        expect(len(self.relevance_layers) > 0, "--relevance-layers", self.relevance_layers, "at least one layer")
        expect(0.0 < self.mim_probability < 1.0, "mim_probability", self.mim_probability, "a number in (0, 1)")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "relevance_layers": list(self.relevance_layers)}


def expect(ok: bool, name: str, value, expected: str):
    """ConfigError naming the argument, its value and what was expected."""
    if not ok:
        raise ConfigError(f"{name}={value!r}: expected {expected}")
