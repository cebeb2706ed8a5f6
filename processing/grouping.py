"""Grouped image-text matching (GITM): k images tiled into one canvas, m captions joined into one text.

The model must say, for every caption segment, which cell of the canvas it describes, or that it describes none.

Grid. Cells are numbered row-major (cell = r * cols + c). Two modes (see :func:`check_grid`):

- ``"resize"``: the canvas keeps the model resolution ``image_size x image_size``; each cell is
  ``image_size / rows x image_size / cols`` pixels (non-square cells for rows != cols).
- ``"full"``: each cell keeps ``image_size x image_size``; the canvas is ``rows * image_size x cols * image_size``
  and the model interpolates its position grid to it.

Each cell must be a whole block of patches, so a cell's patches are exactly the patches it covers.
``gitm_cell_ids`` gives, per patch of the canvas (row-major over the canvas patch grid, the order of the model's
patch embeddings), its cell, or -1 (padding).

Text. ``[CLS] seg_1 [SEP] seg_2 [SEP] ... seg_m [SEP]``. ``segment_ids`` is 0 on [CLS] and padding and j (1-based,
in text order) on the tokens of segment j including its trailing [SEP]; a segment embedding with
``m_max + 1`` rows tells segments apart (the token-type embedding has only two types; ``token_type_ids`` are 0).
A text longer than ``max_length`` loses whole segments from its end (the order is shuffled, so which ones is
random); a segment is never cut. Dropped segments are reported and their cells lose their target segment.

Targets. ``gitm_segment_targets[b, j]`` is the cell that segment j+1 (segment id j+1) describes or ``NONE`` (-1);
padding is -100. ``gitm_cell_targets[b, c]`` is the (0-based) segment describing cell c, or ``NONE``; padding
-100. Truth comes from ``holds_fn`` (the world's ``caption_holds``): a segment's target is the single cell it holds
for. A caption that holds for several cells, an own caption that does not hold (only) for its cell, or a
distractor that holds for any cell is redrawn; after bounded attempts a counted fallback applies (see
:func:`draw_group`).

Randomness: one stream per sample, ``np.random.default_rng([seed, epoch, index, GITM_STREAM])``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from .collator import IGNORE_INDEX
from .pretraining_data import decode_image
from .random_streams import GITM_STREAM
from .row_cache import CACHE_PIXEL_BYTES, CACHE_ROWS, RowCache, rows_within
from .worlds.shapes import Scene, caption_holds, generate_captions, make_foil
from .worlds.text_balance import CaptionFrequencies

GRID_MODES = ("resize", "full")
#: Target of a segment that describes no cell, and of a cell that no segment describes.
NONE = -1
#: Stream id of the group draw (distinct from the caption 0, ITM 1, MLM 2 and MIM 3 streams).
DISTRACTOR_MODES = ("easy", "hard", "mixed")
#: Segment kinds and their codes in ``gitm_segment_kinds``.
SEGMENT_KINDS = ("own", "easy", "hard")
OWN, EASY, HARD = range(3)
#: Foils for hard distractors: one attribute, the count or the relation changes.
HARD_FOIL_KINDS = ("colour", "shape", "size", "count", "relation")
#: Rows whose captions give the word frequencies hard distractors are balanced against.
FREQUENCY_ROWS = 2000


# --------------------------------------------------------------------------------------------------------------------
# Grid
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridSpec:
    """A validated grid: ``rows x cols`` cells of ``cell_height x cell_width`` pixels on one canvas."""

    rows: int
    cols: int
    mode: str
    image_size: int
    patch_size: int

    @property
    def num_cells(self) -> int:
        return self.rows * self.cols

    @property
    def cell_height(self) -> int:
        return self.image_size // self.rows if self.mode == "resize" else self.image_size

    @property
    def cell_width(self) -> int:
        return self.image_size // self.cols if self.mode == "resize" else self.image_size

    @property
    def canvas_height(self) -> int:
        return self.rows * self.cell_height

    @property
    def canvas_width(self) -> int:
        return self.cols * self.cell_width

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, cols) of the canvas patch grid."""
        return self.canvas_height // self.patch_size, self.canvas_width // self.patch_size

    def cell_ids(self) -> torch.Tensor:
        """The cell of every canvas patch, (patch rows * patch cols,), row-major."""
        return cell_id_map(self.rows, self.cols, self.canvas_height, self.canvas_width, self.patch_size)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def working_grids(image_size: int, patch_size: int, mode: str, max_side: int = 4) -> list[tuple[int, int]]:
    """Grids (rows, cols) with at least two cells and sides up to ``max_side`` that ``check_grid`` accepts."""
    found = []
    for rows in range(1, max_side + 1):
        for cols in range(1, max_side + 1):
            if rows * cols >= 2 and _grid_problem(rows, cols, image_size, patch_size, mode) is None:
                found.append((rows, cols))
    return found


def working_image_sizes(rows: int, cols: int, patch_size: int, mode: str, near: int, count: int = 4) -> list[int]:
    """``count`` consecutive image sizes around ``near`` that make whole patch blocks for this grid."""
    unit = patch_size * (math.lcm(rows, cols) if mode == "resize" else 1)
    first = max(1, near // unit - 1)
    return [unit * n for n in range(first, first + count)]


def _grid_problem(rows: int, cols: int, image_size: int, patch_size: int, mode: str) -> str | None:
    """Why the grid does not divide into whole patch blocks, or None."""
    if image_size % patch_size:
        return f"image_size={image_size} is not a multiple of patch_size={patch_size}"
    if mode == "resize":
        for name, parts in (("rows", rows), ("cols", cols)):
            if image_size % (parts * patch_size):
                return (
                    f"{name}={parts} splits {image_size} px into cells of {image_size / parts:g} px, "
                    f"not a whole number of {patch_size}-px patches"
                )
    return None


def check_grid(rows: int, cols: int, image_size: int, patch_size: int, mode: str = "resize") -> GridSpec:
    """Validate a grid and return its :class:`GridSpec`.

    ``resize`` needs ``image_size`` to be a multiple of ``rows * patch_size`` and of ``cols * patch_size``;
    ``full`` needs ``image_size`` to be a multiple of ``patch_size``. A grid that does not divide raises a
    ValueError listing image sizes that work for it and grids that work at this image size.
    """
    rows, cols = _positive_int("rows", rows), _positive_int("cols", cols)
    image_size, patch_size = _positive_int("image_size", image_size), _positive_int("patch_size", patch_size)
    if mode not in GRID_MODES:
        raise ValueError(f"grid mode must be one of {GRID_MODES}, got {mode!r}")
    problem = _grid_problem(rows, cols, image_size, patch_size, mode)
    if problem is not None:
        sizes = ", ".join(str(s) for s in working_image_sizes(rows, cols, patch_size, mode, image_size))
        grids = ", ".join(f"{r}x{c}" for r, c in working_grids(image_size, patch_size, mode)) or "none"
        raise ValueError(
            f"a {rows}x{cols} grid in {mode!r} mode does not divide into whole patch blocks ({problem}). "
            f"Image sizes that work for {rows}x{cols} with {patch_size}-px patches: {sizes}, ...; "
            f"grids that work at image_size={image_size}: {grids}"
        )
    return GridSpec(rows, cols, mode, image_size, patch_size)


def cell_id_map(rows: int, cols: int, canvas_h: int, canvas_w: int, patch_size: int) -> torch.Tensor:
    """The cell (row-major) of every patch of a canvas, (canvas_h / p * canvas_w / p,) long, row-major."""
    rows, cols = _positive_int("rows", rows), _positive_int("cols", cols)
    patch_size = _positive_int("patch_size", patch_size)
    canvas_h, canvas_w = _positive_int("canvas_h", canvas_h), _positive_int("canvas_w", canvas_w)
    patch_rows, patch_cols = canvas_h // patch_size, canvas_w // patch_size
    if canvas_h % patch_size or canvas_w % patch_size or patch_rows % rows or patch_cols % cols:
        raise ValueError(
            f"a {canvas_h}x{canvas_w} canvas with {patch_size}-px patches ({patch_rows}x{patch_cols} patches) does "
            f"not split into {rows}x{cols} cells of whole patches"
        )
    row_of = torch.arange(patch_rows) // (patch_rows // rows)
    col_of = torch.arange(patch_cols) // (patch_cols // cols)
    return (row_of[:, None] * cols + col_of[None, :]).flatten()


def cell_patch_indices(rows: int, cols: int, canvas_h: int, canvas_w: int, patch_size: int) -> list[torch.Tensor]:
    """For each cell (row-major), the flat indices (row-major over the canvas patch grid) of exactly its patches."""
    ids = cell_id_map(rows, cols, canvas_h, canvas_w, patch_size)
    return [torch.nonzero(ids == cell).flatten() for cell in range(rows * cols)]


# --------------------------------------------------------------------------------------------------------------------
# Canvas
# --------------------------------------------------------------------------------------------------------------------


def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a (C, H, W) float image with antialiased bilinear interpolation."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    return F.interpolate(
        image[None].float(), size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )[0].to(image.dtype)


def compose_canvas(images: Sequence[torch.Tensor], spec: GridSpec) -> torch.Tensor:
    """Tile k processed images (C, H, W) into one (C, canvas_h, canvas_w) canvas, image i in cell i (row-major).

    Images whose size differs from the cell's are resized to it (antialiased bilinear).
    """
    if len(images) != spec.num_cells:
        raise ValueError(f"a {spec.rows}x{spec.cols} grid needs {spec.num_cells} images, got {len(images)}")
    channels = {tuple(image.shape[:-2]) for image in images}
    if any(image.dim() != 3 for image in images) or len(channels) != 1:
        raise ValueError(f"images must be (C, H, W) with one C; got shapes {[tuple(i.shape) for i in images]}")
    height, width = spec.cell_height, spec.cell_width
    canvas = images[0].new_empty((images[0].shape[0], spec.canvas_height, spec.canvas_width))  # cells cover it
    for cell, image in enumerate(images):
        r, c = divmod(cell, spec.cols)
        canvas[:, r * height : (r + 1) * height, c * width : (c + 1) * width] = resize_image(image, height, width)
    return canvas


# --------------------------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComposedText:
    """``[CLS] seg [SEP] seg [SEP] ...``: ids, masks and which input segments were kept (in text order) or dropped."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    segment_ids: torch.Tensor
    kept: tuple[int, ...]
    dropped: tuple[int, ...]


def fit_segments(lengths: Sequence[int], max_length: int) -> int:
    """How many leading segments of these token lengths fit, with [CLS] and one [SEP] each, in ``max_length``."""
    used, count = 1, 0
    for length in lengths:
        used += length + 1
        if used > max_length:
            break
        count += 1
    return count


def compose_text(segments: Sequence[str], tokenizer: Any, max_length: int) -> ComposedText:
    """Tokenize caption segments into one text with segment ids; whole trailing segments are dropped to fit."""
    if max_length < 3:
        raise ValueError(f"max_length must leave room for [CLS], one token and [SEP]; got {max_length}")
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise ValueError("the tokenizer needs a [CLS] and a [SEP] token to compose segments")
    pieces = tokenizer(list(segments), add_special_tokens=False)["input_ids"] if segments else []
    keep = fit_segments([len(p) for p in pieces], max_length)
    ids, seg = [cls_id], [0]
    for position, piece in enumerate(pieces[:keep]):
        ids += [*piece, sep_id]
        seg += [position + 1] * (len(piece) + 1)
    input_ids = torch.tensor(ids, dtype=torch.long)
    return ComposedText(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        token_type_ids=torch.zeros_like(input_ids),
        segment_ids=torch.tensor(seg, dtype=torch.long),
        kept=tuple(range(keep)),
        dropped=tuple(range(keep, len(pieces))),
    )


# --------------------------------------------------------------------------------------------------------------------
# Drawing a group
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupConfig:
    """How a group is drawn.

    own_probability: p, the chance a cell's segment is its own caption (else a distractor).
    distractors: "easy" (a caption of an image outside the grid), "hard" (a foil of the cell's own caption) or
        "mixed" (hard with ``hard_probability``).
    foil_kinds: ``make_foil`` kinds for hard distractors.
    max_attempts: candidate captions tried per segment before the fallback.
    """

    rows: int = 2
    cols: int = 2
    own_probability: float = 0.5
    distractors: str = "easy"
    hard_probability: float = 0.5
    foil_kinds: tuple[str, ...] = HARD_FOIL_KINDS
    max_attempts: int = 20

    def __post_init__(self):
        _positive_int("rows", self.rows), _positive_int("cols", self.cols)
        _positive_int("max_attempts", self.max_attempts)
        for name in ("own_probability", "hard_probability"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"GroupConfig.{name} must be a number in [0, 1], got {value!r}")
        if self.distractors not in DISTRACTOR_MODES:
            raise ValueError(f"GroupConfig.distractors must be one of {DISTRACTOR_MODES}, got {self.distractors!r}")
        object.__setattr__(self, "foil_kinds", tuple(self.foil_kinds))
        if not self.foil_kinds:
            raise ValueError("GroupConfig.foil_kinds must name at least one make_foil kind")

    @property
    def num_cells(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class Group:
    """One drawn group. Segments are in text order; targets are cells (row-major) or ``NONE``.

    ``cells`` gives the dataset row shown in each cell; ``segment_cells`` the cell each segment was drawn for
    (the cell it replaces, for distractors); ``fallbacks`` one note per fallback taken ("cell 3: own->hard", ...);
    ``dropped`` the (text, target) of segments dropped for length.
    """

    cells: tuple[int, ...]
    segments: tuple[str, ...]
    segment_targets: tuple[int, ...]
    segment_cells: tuple[int, ...]
    segment_kinds: tuple[int, ...]
    fallbacks: tuple[str, ...] = ()
    dropped: tuple[tuple[str, int], ...] = field(default=())

    @property
    def cell_targets(self) -> tuple[int, ...]:
        """Per cell, the segment (0-based, text order) whose target it is, or ``NONE``."""
        targets = [NONE] * len(self.cells)
        for position, cell in enumerate(self.segment_targets):
            if cell != NONE:
                targets[cell] = position
        return tuple(targets)


def keep_segments(group: Group, kept: Sequence[int]) -> Group:
    """The group with only the segments at positions ``kept`` (in that order); the others go to ``dropped``."""
    kept = list(kept)
    kept_set = set(kept)
    gone = [p for p in range(len(group.segments)) if p not in kept_set]

    def pick(values):
        return tuple(values[p] for p in kept)

    return replace(
        group,
        segments=pick(group.segments),
        segment_targets=pick(group.segment_targets),
        segment_cells=pick(group.segment_cells),
        segment_kinds=pick(group.segment_kinds),
        dropped=group.dropped + tuple((group.segments[p], group.segment_targets[p]) for p in gone),
    )


HoldsFn = Callable[[str, Any], bool]


class _Drawer:
    """The state of one group draw: cell scenes, texts already used and the random stream."""

    def __init__(self, cells, captions_of, scene_of, config, rng, holds_fn, num_rows, frequencies=None):
        self.cells, self.captions_of, self.config, self.rng = cells, captions_of, config, rng
        self.holds_fn, self.num_rows, self.frequencies = holds_fn, num_rows, frequencies
        self.scenes = [scene_of(row) for row in cells] if holds_fn is not None else None
        self.used: set[str] = set()

    def holds_for(self, caption: str) -> list[int] | None:
        """The cells the caption holds for (None when the caption is outside the world's grammar)."""
        try:
            return [cell for cell, scene in enumerate(self.scenes) if self.holds_fn(caption, scene)]
        except ValueError:
            return None

    def shuffled(self, items: Sequence[str]) -> list[str]:
        items = list(items)
        return [items[i] for i in self.rng.permutation(len(items))]

    def own_candidates(self, cell: int) -> Iterator[str]:
        """The cell row's captions in random order, then (shapes-world scenes) freshly generated true captions,
        generated only when the row's own run out; at most ``max_attempts`` in all."""
        own = self.captions_of(self.cells[cell])
        yield from self.shuffled(own)[: self.config.max_attempts]
        scene = self.scenes[cell] if self.scenes is not None else None
        left = self.config.max_attempts - len(own)
        if isinstance(scene, Scene) and left > 0:
            fresh = generate_captions(scene, random.Random(int(self.rng.integers(2**62))), left)
            yield from (c.text for c in fresh)

    def own(self, cell: int) -> tuple[str, int] | None:
        """A caption of the cell's image that holds for that cell only: (text, target). With `frequencies`, the
        caption of a kept (caption, foil) pair (`pair`), so that own captions and hard distractors are the two
        sides of the same pairs."""
        if self.frequencies is not None:
            found = self.pair(cell, unique=True)
            return None if found is None else (found[0], cell)
        for caption in self.own_candidates(cell):
            if caption not in self.used and (self.holds_fn is None or self.holds_for(caption) == [cell]):
                return caption, cell
        return None

    def easy(self, cell: int) -> tuple[str, int] | None:
        """A caption of a random image outside the grid that holds for no cell: (text, NONE)."""
        inside = set(self.cells)
        outside = [row for row in range(self.num_rows) if row not in inside] if self.num_rows < 64 else None
        for _ in range(self.config.max_attempts):
            if outside is not None:
                if not outside:
                    return None
                row = outside[int(self.rng.integers(len(outside)))]
            else:
                row = int(self.rng.integers(self.num_rows))
                if row in inside:
                    continue
            captions = self.captions_of(row)
            if not captions:
                continue
            caption = captions[int(self.rng.integers(len(captions)))]
            if caption in self.used:
                continue
            if self.holds_fn is None or self.holds_for(caption) == []:
                return caption, NONE
        return None

    def hard(self, cell: int) -> tuple[str, int] | None:
        """A foil of a true caption of the cell (one attribute, count or relation changed) holding for no cell."""
        if self.holds_fn is None:
            return None
        found = self.pair(cell, unique=False)
        return None if found is None else (found[1], NONE)

    def pair(self, cell: int, unique: bool) -> tuple[str, str] | None:
        """(caption, foil): a true caption of the cell (with `unique`, holding for that cell only) and a
        `make_foil` edit of it holding for no cell; None after ``max_attempts`` foils.

        With `frequencies` (the true captions' word frequencies) a pair is kept with probability
        min(1, P(foil) / P(caption)), and a pair turned down moves on to the next caption. Kept pairs are as likely
        as their mirror images (detailed balance), so the captions of kept pairs (own segments) and their foils
        (hard distractors) read alike: no rare pairs or impossible counts for a caption-only classifier to spot."""
        scene, tries = self.scenes[cell], 0
        for caption in self.own_candidates(cell):
            if tries >= self.config.max_attempts:
                break
            holds = self.holds_for(caption)
            if caption in self.used or holds is None or (holds != [cell] if unique else cell not in holds):
                continue
            for kind in self.shuffled(self.config.foil_kinds):
                tries += 1
                foil = make_foil(caption, scene, kind, self.rng)
                if foil is None or foil in self.used or self.holds_for(foil) != []:
                    continue
                if self.frequencies is None or self.frequencies.accept(caption, foil, self.rng):
                    return caption, foil
                break
        return None

    def draw(self, cell: int, kind: int) -> tuple[str, int, int, list[str]]:
        """(text, target, kind actually drawn, fallback notes) for one cell; text None when every kind failed."""
        if kind == OWN:
            order = [OWN, HARD, EASY] if self.config.distractors == "hard" else [OWN, EASY, HARD]
        else:
            order = [kind, EASY + HARD - kind]
        notes = []
        for attempt in order:
            found = (self.own, self.easy, self.hard)[attempt](cell)
            if found is not None:
                self.used.add(found[0])
                return found[0], found[1], attempt, notes
            notes.append(f"cell {cell}: no {SEGMENT_KINDS[attempt]} caption")
        return None, NONE, kind, notes


def draw_group(
    index: int,
    num_rows: int,
    captions_of: Callable[[int], list[str]],
    scene_of: Callable[[int], Any],
    config: GroupConfig,
    rng: np.random.Generator,
    holds_fn: HoldsFn | None = caption_holds,
    frequencies: CaptionFrequencies | None = None,
) -> Group:
    """Draw the group of dataset row ``index``: its image plus k-1 other rows, one segment per cell, shuffled.

    Per cell, with probability p its own caption (one of the row's captions, or a freshly generated true caption
    for shapes-world scenes, that holds for this cell only), else a distractor holding for no cell: ``easy``, a
    caption of a row outside the grid, or ``hard``, a ``make_foil`` edit of one of the cell's true captions.
    Each kind tries ``max_attempts`` candidates. Fallbacks, each noted in ``Group.fallbacks``: an own caption
    that cannot be found becomes a distractor of the configured kind (easy for "mixed"); a distractor kind that
    fails gives way to the other kind; when every kind fails the cell gets no segment. ``holds_fn=None`` trusts
    construction (own caption -> its cell, easy distractor -> none) and cannot draw hard distractors.
    ``frequencies`` (true captions' word frequencies) keeps hard distractors to foils that read like true captions
    (`_Drawer.hard`).
    """
    k = config.num_cells
    if num_rows < k:
        raise ValueError(f"a {config.rows}x{config.cols} group needs at least {k} rows; the dataset has {num_rows}")
    if holds_fn is None and config.distractors != "easy":
        raise ValueError("hard distractors need holds_fn (the world's caption_holds) to check foils")
    others = rng.choice(num_rows - 1, size=k - 1, replace=False) if k > 1 else np.zeros(0, dtype=np.int64)
    others = [int(o) + (int(o) >= index) for o in others]
    cells = tuple(int(row) for row in rng.permutation([index, *others]))
    own_flags = rng.random(k) < config.own_probability
    hard_flags = rng.random(k) < (
        config.hard_probability if config.distractors == "mixed" else float(config.distractors == "hard")
    )
    drawer = _Drawer(cells, captions_of, scene_of, config, rng, holds_fn, num_rows, frequencies)
    drawn, fallbacks = [], []
    for cell in range(k):
        kind = OWN if own_flags[cell] else (HARD if hard_flags[cell] else EASY)
        text, target, got, notes = drawer.draw(cell, kind)
        fallbacks += notes
        if text is not None:
            drawn.append((text, target, cell, got))
    order = rng.permutation(len(drawn))
    drawn = [drawn[i] for i in order]
    return Group(
        cells=cells,
        segments=tuple(d[0] for d in drawn),
        segment_targets=tuple(d[1] for d in drawn),
        segment_cells=tuple(d[2] for d in drawn),
        segment_kinds=tuple(d[3] for d in drawn),
        fallbacks=tuple(fallbacks),
    )


# --------------------------------------------------------------------------------------------------------------------
# Dataset and collate
# --------------------------------------------------------------------------------------------------------------------


def _caption_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [caption for caption in value if isinstance(caption, str) and caption.strip()]


class GroupedMatchingDataset(torch.utils.data.Dataset):
    r"""
    GITM samples from the rows `PretrainingDataset` reads (columns `image`, `captions`, and `scene` for the truth).

    Args:
        hf_dataset: the rows; images are decoded one row at a time (an unreadable cell image skips the sample).
        processor: a `VLPProcessor`, or pass `tokenizer` and `image_processor`.
        config: a :class:`GroupConfig` (grid, p, distractors).
        mode: "resize" or "full" (see :func:`check_grid`).
        patch_size: the model's patch size. image_size: the model resolution (default: the image processor's square
            size).
        seed, max_length: random seed and text length in tokens (the model's `max_position_embeddings` at most).
        holds_fn: `(caption, scene) -> bool`; default the world's `caption_holds` (scenes are parsed once per
            group). None trusts construction (easy distractors only, no `scene` column needed).
        strict: raise `ValueError` for unreadable rows instead of returning `{"index": i, "skipped": reason}`.

    A sample holds the canvas `pixel_values` (3, H, W) and `pixel_mask` (H, W), the composed text (`input_ids`,
    `attention_mask`, `token_type_ids`, `segment_ids`), `gitm_segment_targets` (m,), `gitm_cell_targets` (k,),
    `gitm_segment_kinds` (m,) (codes of `SEGMENT_KINDS`), `gitm_cell_ids` (patches,), the `group` and the grid.
    """

    def __init__(
        self,
        hf_dataset: datasets.Dataset,
        processor: Any = None,
        config: GroupConfig | None = None,
        mode: str = "resize",
        patch_size: int = 8,
        image_size: int | None = None,
        seed: int = 0,
        max_length: int = 64,
        holds_fn: HoldsFn | None = caption_holds,
        strict: bool = False,
        *,
        tokenizer: Any = None,
        image_processor: Any = None,
    ):
        if processor is not None:
            tokenizer = processor.tokenizer if tokenizer is None else tokenizer
            image_processor = processor.image_processor if image_processor is None else image_processor
        if tokenizer is None or image_processor is None:
            raise ValueError("GroupedMatchingDataset needs a processor, or both a tokenizer and an image_processor")
        for column in ("image", "captions") + (("scene",) if holds_fn is not None else ()):
            if column not in hf_dataset.column_names:
                raise ValueError(f"dataset has no {column!r} column; columns: {hf_dataset.column_names}")
        self.config = config or GroupConfig()
        if image_size is None:
            size = getattr(image_processor, "size", None)
            if not size or size["height"] != size["width"]:
                raise ValueError(f"pass image_size: the image processor's size {size!r} is not one square size")
            image_size = size["height"]
        self.spec = check_grid(self.config.rows, self.config.cols, image_size, patch_size, mode)
        needed = self.config.num_cells + (self.config.distractors != "hard")
        if len(hf_dataset) < needed:
            raise ValueError(
                f"a {self.config.rows}x{self.config.cols} group with {self.config.distractors} "
                f"distractors needs at least {needed} rows; the dataset has {len(hf_dataset)}"
            )
        if max_length < 3:
            raise ValueError(f"max_length must leave room for [CLS], one token and [SEP]; got {max_length}")
        features = hf_dataset.features
        if isinstance(features.get("image"), datasets.Image) and features["image"].decode:
            hf_dataset = hf_dataset.cast_column("image", datasets.Image(decode=False))
        self.rows = hf_dataset
        text_columns = [name for name in ("captions", "scene") if name in hf_dataset.column_names]
        self.texts = hf_dataset.select_columns(text_columns)
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.seed, self.epoch, self.max_length = int(seed), 0, int(max_length)
        self.holds_fn, self.strict = holds_fn, bool(strict)
        self.parse_scenes = holds_fn is caption_holds
        self.cell_ids = self.spec.cell_ids()
        # Hard distractors read like true captions: the word frequencies of the first rows' captions.
        sample = self.texts.select(range(min(len(self.texts), FREQUENCY_ROWS)))["captions"]
        self.frequencies = (
            CaptionFrequencies(c for cs in sample for c in _caption_list(cs))
            if holds_fn is not None and self.config.distractors != "easy"
            else None
        )
        self.pixel_mask = torch.ones((self.spec.canvas_height, self.spec.canvas_width), dtype=torch.long)  # shared
        # Rows are pure functions of their index (no augmentation), so what a row gives is cached: the caption list,
        # the parsed scene and the cell-size image, bounded (`CACHE_ROWS`, `CACHE_PIXEL_BYTES`).
        cell_bytes = 4 * 3 * self.spec.cell_height * self.spec.cell_width
        self._captions = RowCache(self._read_captions, CACHE_ROWS)
        self._scenes = RowCache(self._read_scene, CACHE_ROWS)
        self._pixels = RowCache(self._read_pixels, rows_within(CACHE_PIXEL_BYTES, cell_bytes))

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose groups `__getitem__` draws."""
        self.epoch = int(epoch)

    def captions_of(self, row: int) -> list[str]:
        return list(self._captions(row))

    def scene_of(self, row: int) -> Any:
        return self._scenes(row)

    def cell_pixels(self, row: int) -> torch.Tensor:
        """Row ``row``'s image processed at the cell size (C, cell_h, cell_w); shared, never write into it."""
        return self._pixels(row)

    def _read_captions(self, row: int) -> tuple[str, ...]:
        return tuple(_caption_list(self.texts[row]["captions"]))

    def _read_scene(self, row: int) -> Any:
        scene = self.texts[row]["scene"]
        if scene is None:
            raise ValueError(f"row {row} has no scene to judge captions against")
        return Scene.from_dict(scene) if self.parse_scenes else scene

    def _read_pixels(self, row: int) -> torch.Tensor:
        image = decode_image(self.rows[row]["image"])
        size = (self.spec.cell_height, self.spec.cell_width)
        return self.image_processor(image, do_resize=True, size=size, return_tensors="pt")["pixel_values"][0]

    def draw(self, index: int) -> Group:
        """The group of row ``index`` at the current epoch, before segments are dropped for length."""
        rng = np.random.default_rng([self.seed, self.epoch, int(index), GITM_STREAM])
        return draw_group(
            int(index), len(self), self.captions_of, self.scene_of, self.config, rng, self.holds_fn, self.frequencies
        )

    def _skip(self, index: int, reason: str) -> dict[str, Any]:
        if self.strict:
            raise ValueError(f"row {index}: {reason}")
        return {"index": index, "skipped": reason}

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for a dataset of {len(self)} rows")
        try:
            group = self.draw(index)
            images = [self.cell_pixels(row) for row in group.cells]
        except (ValueError, TypeError) as error:
            return self._skip(index, str(error))
        canvas = compose_canvas(images, self.spec)
        text = compose_text(group.segments, self.tokenizer, self.max_length)
        group = keep_segments(group, text.kept)
        return {
            "index": index,
            "epoch": self.epoch,
            "pixel_values": canvas,
            "pixel_mask": self.pixel_mask,
            "input_ids": text.input_ids,
            "attention_mask": text.attention_mask,
            "token_type_ids": text.token_type_ids,
            "segment_ids": text.segment_ids,
            "gitm_segment_targets": torch.tensor(group.segment_targets, dtype=torch.long),
            "gitm_cell_targets": torch.tensor(group.cell_targets, dtype=torch.long),
            "gitm_segment_kinds": torch.tensor(group.segment_kinds, dtype=torch.long),
            "gitm_cell_ids": self.cell_ids,
            "gitm_grid": (self.spec.rows, self.spec.cols),
            "gitm_patch_size": self.spec.patch_size,
            "group": group,
        }

    @property
    def collate_fn(self) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """`collate_grouped` with this tokenizer's pad id."""
        return partial(collate_grouped, pad_token_id=int(self.tokenizer.pad_token_id or 0))


def _pad_stack(values: list[torch.Tensor], fill: int) -> torch.Tensor:
    """1-d long tensors -> (B, max length), padded with ``fill``."""
    out = torch.full((len(values), max((len(v) for v in values), default=0)), fill, dtype=torch.long)
    for row, value in enumerate(values):
        out[row, : len(value)] = value
    return out


def _empty_batch(skipped: list[tuple[int, str]]) -> dict[str, Any]:
    """Every key with batch size 0, for a batch whose samples were all unreadable."""
    empty = torch.zeros((0, 0), dtype=torch.long)
    text_keys = (
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "segment_ids",
        "gitm_segment_targets",
        "gitm_segment_kinds",
        "gitm_cell_targets",
        "gitm_cell_ids",
    )
    return {
        "pixel_values": torch.zeros((0, 3, 0, 0)),
        "pixel_mask": torch.zeros((0, 0, 0), dtype=torch.long),
        **{key: empty.clone() for key in text_keys},
        "gitm_cell_mask": torch.zeros((0, 0), dtype=torch.bool),
        "gitm_grid": torch.zeros((0, 2), dtype=torch.long),
        "gitm_num_cells": 0,
        "gitm_dropped": 0,
        "gitm_fallbacks": 0,
        "index": torch.zeros((0,), dtype=torch.long),
        "groups": [],
        "skipped": skipped,
    }


def collate_grouped(samples: list[dict[str, Any]], pad_token_id: int = 0) -> dict[str, Any]:
    r"""
    Batch `GroupedMatchingDataset` samples; unreadable ones are dropped and listed in `skipped` (all unreadable:
    every key with batch size 0).

    Returns `pixel_values` (B, 3, H, W) and `pixel_mask` (B, H, W) (canvases zero-padded to the largest),
    `input_ids`, `attention_mask`, `token_type_ids`, `segment_ids` (B, L) (padding: pad id, 0, 0, 0),
    `gitm_segment_targets` and `gitm_segment_kinds` (B, m_max) and `gitm_cell_targets` (B, k_max), padded with -100,
    `gitm_cell_ids` (B, patches of the padded canvas) with -1 on padding, `gitm_cell_mask` (B, k_max) bool,
    `gitm_grid` (B, 2) (rows, cols), `gitm_num_cells` = k_max, `index` (B,), `gitm_dropped` and `gitm_fallbacks`
    (totals over the batch), `groups` and `skipped`.
    """
    skipped = [(int(s["index"]), str(s["skipped"])) for s in samples if "skipped" in s]
    kept = [s for s in samples if "skipped" not in s]
    if not kept:
        return _empty_batch(skipped)
    height = max(s["pixel_values"].shape[-2] for s in kept)
    width = max(s["pixel_values"].shape[-1] for s in kept)
    batch = len(kept)
    pixel_values = torch.zeros((batch, kept[0]["pixel_values"].shape[0], height, width), dtype=torch.float32)
    pixel_mask = torch.zeros((batch, height, width), dtype=torch.long)
    patch_sizes = {int(s["gitm_patch_size"]) for s in kept}
    if len(patch_sizes) != 1:
        raise ValueError(f"samples disagree on the patch size: {sorted(patch_sizes)}")
    patch = patch_sizes.pop()
    cell_ids = torch.full((batch, height // patch, width // patch), NONE, dtype=torch.long)
    num_cells = max(s["gitm_grid"][0] * s["gitm_grid"][1] for s in kept)
    cell_mask = torch.zeros((batch, num_cells), dtype=torch.bool)
    for row, s in enumerate(kept):
        h, w = s["pixel_values"].shape[-2:]
        pixel_values[row, :, :h, :w] = s["pixel_values"]
        pixel_mask[row, :h, :w] = s["pixel_mask"]
        cell_ids[row, : h // patch, : w // patch] = s["gitm_cell_ids"].reshape(h // patch, w // patch)
        cell_mask[row, : s["gitm_grid"][0] * s["gitm_grid"][1]] = True
    return {
        "pixel_values": pixel_values,
        "pixel_mask": pixel_mask,
        "input_ids": _pad_stack([s["input_ids"] for s in kept], pad_token_id),
        "attention_mask": _pad_stack([s["attention_mask"] for s in kept], 0),
        "token_type_ids": _pad_stack([s["token_type_ids"] for s in kept], 0),
        "segment_ids": _pad_stack([s["segment_ids"] for s in kept], 0),
        "gitm_segment_targets": _pad_stack([s["gitm_segment_targets"] for s in kept], IGNORE_INDEX),
        "gitm_segment_kinds": _pad_stack([s["gitm_segment_kinds"] for s in kept], IGNORE_INDEX),
        "gitm_cell_targets": _pad_stack([s["gitm_cell_targets"] for s in kept], IGNORE_INDEX),
        "gitm_cell_ids": cell_ids.flatten(1),
        "gitm_cell_mask": cell_mask,
        "gitm_grid": torch.tensor([s["gitm_grid"] for s in kept], dtype=torch.long),
        "gitm_num_cells": num_cells,
        "gitm_dropped": sum(len(s["group"].dropped) for s in kept),
        "gitm_fallbacks": sum(len(s["group"].fallbacks) for s in kept),
        "index": torch.tensor([int(s["index"]) for s in kept], dtype=torch.long),
        "groups": [s["group"] for s in kept],
        "skipped": skipped,
    }


__all__ = [
    "DISTRACTOR_MODES",
    "GITM_STREAM",
    "GRID_MODES",
    "HARD_FOIL_KINDS",
    "NONE",
    "SEGMENT_KINDS",
    "ComposedText",
    "GridSpec",
    "Group",
    "GroupConfig",
    "GroupedMatchingDataset",
    "cell_id_map",
    "cell_patch_indices",
    "check_grid",
    "collate_grouped",
    "compose_canvas",
    "compose_text",
    "draw_group",
    "fit_segments",
    "keep_segments",
    "working_grids",
    "working_image_sizes",
]
