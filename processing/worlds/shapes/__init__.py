"""The synthetic shapes world: VLP's embedded default dataset.

Seeded scenes of coloured shapes, rendered as small anti-aliased RGB images and captioned from a
small grammar. The world decides truth: :func:`caption_holds` parses any caption of the grammar
and evaluates it on a scene, so ITM negatives, foils, grouped-matching targets and evaluation items
never rely on "a different image is a mismatch".

Caption grammar (lowercase words, an optional trailing period)::

    caption    := uninformative                              kind
                | np                                         attribute   "a small red circle"
                | "there is" np                              attribute   "there is a blue square"
                | "the" desc "is" adjective                  attribute   "the circle is red"
                | "there is one" desc                        count       "there is one red star"
                | "there are" number desc-plural             count       "there are two green stars"
                | "the" desc "is" relation "the" desc        relation    "the red circle is left of the blue square"
                | ["there is"] np "and" np {"and" np}        binding     "a red circle and a blue square"
                | "there is no" desc | "there are no" desc-plural   existence   "there is no yellow heart"
    np         := ("a" | "an") desc
    desc       := [size] [colour] noun        noun: a shape, or "object" which matches any shape
    adjective  := colour | size
    relation   := "left of" | "right of" | "above" | "below"
    number     := "two" .. "six"

Truth (objects are matched by every attribute a description names):

- ``a D`` / ``there is a D``: at least one object matches D.
- ``the D is A``: exactly one object matches D, and it has attribute A.
- ``there is one D`` / ``there are N Ds``: exactly N objects match D.
- ``the D1 is R the D2``: D1 and D2 each match exactly one object, they are different objects and
  relation R holds between their centres (image coordinates, y grows downwards) by at least
  ``RELATION_MARGIN`` of the image side: left of ``x2 - x1 >= m``; right of ``x1 - x2 >= m``;
  above ``y2 - y1 >= m``; below ``y1 - y2 >= m``. Left/right (and above/below) are exclusive and
  both may be false; a definite description that does not pick out exactly one object makes the
  caption false.
- ``a D1 and a D2 ...``: distinct objects match the conjuncts (an injective assignment exists).
- ``there is no D`` / ``there are no Ds``: no object matches D.
- uninformative captions (``UNINFORMATIVE_CAPTIONS``, web alt-text like "a picture") hold for
  every scene: they say nothing false.

Caption refs: a description's words (with a count's number word and a predicated adjective) refer
to object i when the description matches exactly object i in the scene; every other word, and the
words of a description matching no or several objects, refer to nothing (None).

Scenes: 1..6 objects (``min_objects``/``max_objects``) at free positions with disjoint bounding
boxes; each object's (colour, shape) pair is drawn from a Zipf law over a fixed seeded ranking of
the 64 pairs, ``held_out_pairs`` excluded (or required, for evaluation). All randomness is a
function of (seed, scene index), so results do not depend on batching or workers. Rendering uses
analytic signed-distance coverage, vectorised over a batch (see ``tests/benchmarks/bench_data.py``).
"""

from .captions import generate_captions
from .config import WorldConfig
from .dataset import build_dataset, dataset_features, example_rows, write_shapes_dataset
from .examples import WorldExample, generate_examples, make_example
from .foils import make_foil, make_foils
from .grammar import (
    Caption,
    Clause,
    Desc,
    caption_holds,
    caption_kind,
    caption_refs,
    clause_text,
    is_uninformative,
    parse_caption,
)
from .rendering import object_masks, render_batch, render_scene
from .sampling import concept_counts, generate_scenes, pair_probabilities, pair_ranking, sample_scene
from .scenes import Scene, ShapeObject, boxes_overlap, relation_holds
from .vocabulary import (
    BACKGROUND_RGB,
    CAPTION_KINDS,
    COLOUR_RGB,
    COLOURS,
    EDGE_MARGIN,
    FOIL_KINDS,
    GENERIC_NOUN,
    GENERIC_PLURAL,
    HELD_OUT_POLICIES,
    MAX_OBJECTS,
    NOISE_KINDS,
    NUMBER_WORDS,
    PLACEMENT_MARGIN,
    RELATION_MARGIN,
    RELATIONS,
    SHAPE_PLURALS,
    SHAPES,
    SIZE_RADIUS,
    SIZES,
    UNINFORMATIVE_CAPTIONS,
    WORLD_VERSION,
    concept_category,
    concept_words,
)

__all__ = [
    "BACKGROUND_RGB",
    "CAPTION_KINDS",
    "COLOURS",
    "COLOUR_RGB",
    "Caption",
    "Clause",
    "Desc",
    "EDGE_MARGIN",
    "FOIL_KINDS",
    "GENERIC_NOUN",
    "GENERIC_PLURAL",
    "HELD_OUT_POLICIES",
    "MAX_OBJECTS",
    "NOISE_KINDS",
    "NUMBER_WORDS",
    "PLACEMENT_MARGIN",
    "RELATIONS",
    "RELATION_MARGIN",
    "SHAPES",
    "SHAPE_PLURALS",
    "SIZES",
    "SIZE_RADIUS",
    "Scene",
    "ShapeObject",
    "UNINFORMATIVE_CAPTIONS",
    "WORLD_VERSION",
    "WorldConfig",
    "WorldExample",
    "boxes_overlap",
    "build_dataset",
    "caption_holds",
    "caption_kind",
    "caption_refs",
    "clause_text",
    "concept_category",
    "concept_counts",
    "concept_words",
    "dataset_features",
    "example_rows",
    "generate_captions",
    "generate_examples",
    "generate_scenes",
    "is_uninformative",
    "make_example",
    "make_foil",
    "make_foils",
    "object_masks",
    "pair_probabilities",
    "pair_ranking",
    "parse_caption",
    "relation_holds",
    "render_batch",
    "render_scene",
    "sample_scene",
    "write_shapes_dataset",
]
