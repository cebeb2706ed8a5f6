"""The shapes world's vocabulary: shapes, colours, sizes, relations, numbers and concept categories."""

from __future__ import annotations

SHAPES = ("circle", "square", "triangle", "star", "heart", "diamond", "cross", "hexagon")
SHAPE_PLURALS = {shape: shape + ("es" if shape.endswith(("s", "x")) else "s") for shape in SHAPES}

#: Colour name -> RGB. Saturated, well apart from each other and from the grey background.
COLOUR_RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 225),
    "yellow": (240, 220, 50),
    "purple": (150, 50, 200),
    "orange": (250, 130, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS = tuple(COLOUR_RGB)
BACKGROUND_RGB = (128, 128, 128)

SIZES = ("small", "large")
#: Half side of an object's bounding box, as a fraction of the image side.
SIZE_RADIUS = {"small": 0.1, "large": 0.16}
_SIZE_OF_RADIUS = {r: size for size, r in SIZE_RADIUS.items()}

RELATIONS = ("left of", "right of", "above", "below")
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six")
MAX_OBJECTS = len(NUMBER_WORDS)

#: Minimum centre offset (fraction of the image side) for a spatial relation to hold.
RELATION_MARGIN = 0.1
#: Minimum gap between two objects' bounding boxes, and between a box and the image border.
PLACEMENT_MARGIN = 0.04
EDGE_MARGIN = 0.02

GENERIC_NOUN, GENERIC_PLURAL = "object", "objects"
UNINFORMATIVE_CAPTIONS = (
    "a picture",
    "an image",
    "a photo",
    "an illustration",
    "an image of some shapes",
    "a picture of some objects",
    "some shapes",
    "image",
)

CAPTION_KINDS = ("attribute", "count", "relation", "binding", "existence")
NOISE_KINDS = ("clean", "wrong", "partial", "uninformative")
FOIL_KINDS = ("colour", "shape", "size", "count", "relation", "binding_swap", "existence")
HELD_OUT_POLICIES = ("exclude", "include", "require")

#: Bumped whenever sampling, captions or rendering change, so on-disk caches are rebuilt.
WORLD_VERSION = 1

_SINGULAR_OF = {plural: shape for shape, plural in SHAPE_PLURALS.items()}
_RELATION_FIRST_WORDS = {rel.split()[0]: rel for rel in RELATIONS}
_NUMBER_VALUE = {word: i + 1 for i, word in enumerate(NUMBER_WORDS)}
_CATEGORY = {
    **{w: "colour" for w in COLOURS},
    **{w: "shape" for w in SHAPES},
    **{w: "shape" for w in SHAPE_PLURALS.values()},
    **{w: "size" for w in SIZES},
    **{w: "number" for w in NUMBER_WORDS},
    **{w: "relation" for rel in RELATIONS for w in rel.split() if w != "of"},
}


def concept_words() -> frozenset[str]:
    """All concept words (colours, shapes and their plurals, sizes, numbers, relation words)."""
    return frozenset(_CATEGORY)


def concept_category(word: str) -> str | None:
    """The concept category of a word ("colour", "shape", "size", "number", "relation") or None."""
    return _CATEGORY.get(word.lower())


def _article(word: str) -> str:
    """The indefinite article English puts before ``word``."""
    return "an" if word[0] in "aeiou" else "a"
