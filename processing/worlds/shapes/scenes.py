"""Objects and scenes of the shapes world, and the geometry of their relations."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .vocabulary import (
    COLOUR_RGB,
    COLOURS,
    PLACEMENT_MARGIN,
    RELATION_MARGIN,
    RELATIONS,
    SHAPE_PLURALS,
    SHAPES,
    SIZE_RADIUS,
    SIZES,
)


@dataclass(frozen=True, slots=True)
class ShapeObject:
    """One object: its concepts and its centre (x, y) in [0, 1] image coordinates (y downwards)."""

    shape: str
    colour: str
    size: str
    x: float
    y: float

    def __post_init__(self):
        if self.shape not in SHAPE_PLURALS or self.colour not in COLOUR_RGB or self.size not in SIZE_RADIUS:
            raise ValueError(f"unknown concept in {self!r}: shapes {SHAPES}, colours {COLOURS}, sizes {SIZES}")
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0):
            raise ValueError(f"object centre must lie in [0, 1]^2, got ({self.x}, {self.y})")

    @property
    def radius(self) -> float:
        """Half side of the bounding box as a fraction of the image side."""
        return SIZE_RADIUS[self.size]

    def box(self, image_size: int = 64) -> tuple[float, float, float, float]:
        """Bounding box (x0, y0, x1, y1) in pixels of an ``image_size`` image (floats, not rounded)."""
        r = self.radius
        x0, y0, x1, y1 = self.x - r, self.y - r, self.x + r, self.y + r
        return (x0 * image_size, y0 * image_size, x1 * image_size, y1 * image_size)


@dataclass(frozen=True, slots=True)
class Scene:
    """A scene: its objects, and the seed and strength of its background noise."""

    objects: tuple[ShapeObject, ...]
    background_seed: int = 0
    background_noise: float = 0.0

    def to_dict(self) -> dict:
        """A JSON-serialisable dict; :meth:`from_dict` rebuilds an equal scene."""
        return {
            "objects": [
                {"shape": o.shape, "colour": o.colour, "size": o.size, "x": o.x, "y": o.y} for o in self.objects
            ],
            "background_seed": self.background_seed,
            "background_noise": self.background_noise,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        """Rebuild a scene from :meth:`to_dict` output (or its JSON string)."""
        if isinstance(data, str):
            data = json.loads(data)
        objects = tuple(ShapeObject(**obj) for obj in data["objects"])
        return cls(objects, int(data.get("background_seed", 0)), float(data.get("background_noise", 0.0)))


def _as_scene(scene: Scene | dict | str) -> Scene:
    """Accept a Scene, its dict or its JSON string."""
    return scene if isinstance(scene, Scene) else Scene.from_dict(scene)


def boxes_overlap(a: ShapeObject, b: ShapeObject, margin: float = PLACEMENT_MARGIN) -> bool:
    """Whether the bounding boxes of two objects come closer than ``margin`` (image fraction)."""
    reach = a.radius + b.radius + margin
    return abs(a.x - b.x) < reach and abs(a.y - b.y) < reach


def relation_holds(a: ShapeObject, relation: str, b: ShapeObject) -> bool:
    """Whether ``a`` is ``relation`` ``b``, on centres with the ``RELATION_MARGIN`` dead zone."""
    if relation == "left of":
        return b.x - a.x >= RELATION_MARGIN
    if relation == "right of":
        return a.x - b.x >= RELATION_MARGIN
    if relation == "above":
        return b.y - a.y >= RELATION_MARGIN
    if relation == "below":
        return a.y - b.y >= RELATION_MARGIN
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")
