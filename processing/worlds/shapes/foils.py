"""Foils (minimally edited false captions) and caption noise (wrong, partial, uninformative)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import numpy as np

from .captions import _full_desc, _gen_clause, _mentions
from .config import WorldConfig
from .grammar import Clause, Desc, _evaluate, clause_text, parse_caption
from .sampling import _pick, _sample_objects
from .scenes import Scene, ShapeObject, _as_scene
from .vocabulary import COLOURS, FOIL_KINDS, MAX_OBJECTS, NOISE_KINDS, RELATIONS, SHAPES, SIZES, UNINFORMATIVE_CAPTIONS


def _replace_desc(clause: Clause, k: int, desc: Desc) -> Clause:
    """The clause with its ``k``-th description replaced."""
    descs = list(clause.descs)
    descs[k] = desc
    return clause._replace(descs=tuple(descs))


def _word_swaps(clause: Clause, attribute: str, vocabulary: Sequence[str]) -> list[Clause]:
    """Clauses with one ``attribute`` word (in a description or as the predicate) replaced."""
    out = [
        _replace_desc(clause, k, d._replace(**{attribute: word}))
        for k, d in enumerate(clause.descs)
        if getattr(d, attribute) is not None
        for word in vocabulary
        if word != getattr(d, attribute)
    ]
    if clause.op == "predicate" and clause.arg in vocabulary:
        out += [clause._replace(arg=word) for word in vocabulary if word != clause.arg]
    return out


def _count_swaps(clause: Clause) -> list[Clause]:
    """A count caption with every other number."""
    if clause.op != "count":
        return []
    return [clause._replace(arg=n) for n in range(1, MAX_OBJECTS + 1) if n != clause.arg]


def _relation_swaps(clause: Clause) -> list[Clause]:
    """A relation caption with each other relation, and with its two descriptions swapped."""
    if clause.op != "relation":
        return []
    others = [clause._replace(arg=r) for r in RELATIONS if r != clause.arg]
    return others + [clause._replace(descs=clause.descs[::-1])]


def _binding_swaps(clause: Clause) -> list[Clause]:
    """Swap one attribute (colour, shape or size) between two descriptions of the caption."""
    out = []
    for i, j in itertools.combinations(range(len(clause.descs)), 2):
        a, b = clause.descs[i], clause.descs[j]
        for attribute in ("colour", "shape", "size"):
            va, vb = getattr(a, attribute), getattr(b, attribute)
            if va is not None and vb is not None and va != vb:
                swapped = _replace_desc(clause, i, a._replace(**{attribute: vb}))
                out.append(_replace_desc(swapped, j, b._replace(**{attribute: va})))
    return out


def _existence_flips(clause: Clause) -> list[Clause]:
    """Existential <-> negated captions ("there is a D" <-> "there is no D"; counts -> "there are no")."""
    if clause.op == "exists":
        return [Clause("absent", clause.descs, None, "singular")]
    if clause.op == "absent":
        return [Clause("exists", clause.descs, None, "there is")]
    if clause.op == "count":
        return [Clause("absent", clause.descs, None, "plural")]
    return []


def _foil_candidates(clause: Clause, kind: str) -> list[Clause]:
    """Edited versions of a caption for one foil kind (not yet checked against a scene)."""
    if kind == "colour":
        return _word_swaps(clause, "colour", COLOURS)
    if kind == "shape":
        return _word_swaps(clause, "shape", SHAPES)
    if kind == "size":
        return _word_swaps(clause, "size", SIZES)
    if kind == "count":
        return _count_swaps(clause)
    if kind == "relation":
        return _relation_swaps(clause)
    if kind == "binding_swap":
        return _binding_swaps(clause)
    if kind == "existence":
        return _existence_flips(clause)
    raise ValueError(f"unknown foil kind {kind!r}; expected one of {FOIL_KINDS}")


def _as_random(rng) -> random.Random:
    """A ``random.Random`` from None, an int seed, a Random or a numpy Generator."""
    if isinstance(rng, random.Random):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return random.Random(0 if rng is None else int(rng))
    if hasattr(rng, "integers"):
        return random.Random(int(rng.integers(0, 2**63 - 1)))
    raise TypeError(f"rng must be None, an int, random.Random or numpy Generator, got {type(rng).__name__}")


def _foil_clause(clause: Clause, objects: Sequence[ShapeObject], kind: str, rng: random.Random) -> Clause | None:
    """A random edit of one kind that is false in the scene, or None when there is none."""
    candidates = _foil_candidates(clause, kind)
    rng.shuffle(candidates)
    return next((c for c in candidates if not _evaluate(c, objects)), None)


def make_foil(caption: str, scene: Scene | dict | str, kind: str, rng=None) -> str | None:
    """A minimally edited caption of one ``FOIL_KINDS`` kind that is false for the scene, or None."""
    clause = parse_caption(caption)
    return _maybe_text(_foil_clause(clause, _as_scene(scene).objects, kind, _as_random(rng)))


def make_foils(caption: str, scene: Scene | dict | str, kind: str) -> list[str]:
    """Every distinct minimal edit of one ``FOIL_KINDS`` kind that is false for the scene, in a fixed order.

    The candidates :func:`make_foil` draws from, for callers that filter them (evaluation sets).
    """
    clause, objects = parse_caption(caption), _as_scene(scene).objects
    texts = [clause_text(c) for c in _foil_candidates(clause, kind) if not _evaluate(c, objects)]
    return list(dict.fromkeys(texts))


def _maybe_text(clause: Clause | None) -> str | None:
    """Caption text of a clause, passing None through."""
    return None if clause is None else clause_text(clause)


_PARTIAL_KINDS = ("colour", "shape", "size", "count", "relation", "existence")


def _partial_caption(rng: random.Random, clause: Clause, objects: Sequence[ShapeObject], avoid: tuple) -> Clause | None:
    """The caption with one word (or relation phrase) changed so that it becomes false."""
    kinds = list(_PARTIAL_KINDS)
    rng.shuffle(kinds)
    for kind in kinds:
        candidates = _foil_candidates(clause, kind)
        rng.shuffle(candidates)
        for foil in candidates:
            if not _evaluate(foil, objects) and not (avoid and _mentions(foil, avoid)):
                return foil
    return None


def _wrong_caption(rng: random.Random, config: WorldConfig, objects: Sequence[ShapeObject], avoid: tuple) -> Clause:
    """A caption of another random scene of the world that is false for this one."""
    for _ in range(8):
        other = _sample_objects(rng, config)
        clause = _gen_clause(rng, config.caption_kinds, other, avoid)
        if not _evaluate(clause, objects):
            return clause
    return Clause("absent", (_full_desc(_pick(rng, objects)),), None, "singular")


def _noisy_caption(rng: random.Random, config: WorldConfig, clause: Clause, objects) -> tuple[str, str]:
    """Replace a clean caption by a wrong, partly wrong or uninformative one: (text, noise kind)."""
    kind = rng.choices(NOISE_KINDS[1:], weights=config.noise_mix)[0]
    if kind == "uninformative":
        return _pick(rng, UNINFORMATIVE_CAPTIONS), kind
    avoid = _avoided_pairs(config)
    noisy = _partial_caption(rng, clause, objects, avoid) if kind == "partial" else None
    if noisy is None:
        noisy, kind = _wrong_caption(rng, config, objects, avoid), "wrong"
    return clause_text(noisy), kind


def _avoided_pairs(config: WorldConfig) -> tuple:
    """Pairs that training text must not name: the held-out pairs, unless the world shows them."""
    return config.held_out_pairs if config.held_out_policy == "exclude" else ()
