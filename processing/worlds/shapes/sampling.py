"""How often each colour-shape pair occurs (a seeded Zipf law), and seeded scene sampling."""

from __future__ import annotations

import functools
import itertools
import random
from collections import Counter
from collections.abc import Sequence

from ...random_streams import WORLD_STREAMS
from .config import WorldConfig
from .scenes import Scene, ShapeObject, _as_scene
from .vocabulary import _SIZE_OF_RADIUS, COLOURS, EDGE_MARGIN, PLACEMENT_MARGIN, SHAPES, SIZE_RADIUS, SIZES


@functools.cache
def pair_ranking(ranking_seed: int = 0) -> tuple[tuple[str, str], ...]:
    """The 64 (colour, shape) pairs, most frequent first, in a fixed order drawn from ``ranking_seed``."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    return tuple(random.Random(ranking_seed).sample(pairs, len(pairs)))


def pair_probabilities(config: WorldConfig, held_out: bool = False) -> dict[tuple[str, str], float]:
    """Probability of each pair per object: Zipf over the ranking (held-out pairs excluded unless asked)."""
    excluded = () if held_out else config.held_out_pairs
    return dict(_zipf(config.zipf_exponent, config.ranking_seed, excluded))


@functools.lru_cache(maxsize=64)
def _zipf(exponent: float, ranking_seed: int, excluded: tuple) -> tuple[tuple[tuple[str, str], float], ...]:
    """(pair, probability) with probability proportional to 1 / rank**exponent over kept pairs."""
    ranking = pair_ranking(ranking_seed)
    weights = [(pair, 1.0 / (rank + 1) ** exponent) for rank, pair in enumerate(ranking) if pair not in excluded]
    total = sum(w for _, w in weights)
    return tuple((pair, w / total) for pair, w in weights)


@functools.lru_cache(maxsize=64)
def _pair_sampler(exponent: float, ranking_seed: int, excluded: tuple):
    """Pairs and cumulative weights for ``random.choices``."""
    table = _zipf(exponent, ranking_seed, excluded)
    return tuple(p for p, _ in table), tuple(itertools.accumulate(w for _, w in table))


def concept_counts(source) -> Counter:
    """Count objects per (colour, shape) pair in a dataset (its ``scene`` column) or scenes."""
    if hasattr(source, "column_names"):
        source = source["scene"]
    counts: Counter = Counter()
    for item in source:
        scene = _as_scene(getattr(item, "scene", item))  # a WorldExample, Scene, dict or JSON string
        counts.update((o.colour, o.shape) for o in scene.objects)
    return counts


# --------------------------------------------------------------------------------------------
# Scene sampling
# --------------------------------------------------------------------------------------------

_SCENE_STREAM, _NOISE_STREAM = WORLD_STREAMS["scene"], WORLD_STREAMS["noise"]


def _stream(seed: int, index: int, purpose: int) -> random.Random:
    """An independent random stream per (seed, scene index, purpose), so nothing depends on batching."""
    return random.Random(((seed << 32) | index) << 2 | purpose)


def _pick(rng: random.Random, items: Sequence):
    """A uniform choice (``random.choice`` without its per-call overhead: this is the hot path)."""
    return items[int(rng.random() * len(items))]


def _pick_two(rng: random.Random, items: Sequence) -> tuple:
    """Two items at distinct positions, in random order."""
    i, j = int(rng.random() * len(items)), int(rng.random() * (len(items) - 1))
    return items[i], items[j + (j >= i)]


def _sample_pairs(rng: random.Random, config: WorldConfig, n: int) -> list[tuple[str, str]]:
    """Draw ``n`` (colour, shape) pairs under the config's Zipf law and held-out policy."""
    excluded = () if config.held_out_policy == "include" else config.held_out_pairs
    pairs, cum = _pair_sampler(config.zipf_exponent, config.ranking_seed, excluded)
    drawn = rng.choices(pairs, cum_weights=cum, k=n)
    if config.held_out_policy == "require":
        drawn[int(rng.random() * n)] = _pick(rng, config.held_out_pairs)
    return drawn


def _place(rng: random.Random, sizes: list[str]) -> list[tuple[float, float, str]]:
    """Free positions (x, y, size) whose boxes are disjoint with margin and inside the image.

    In crowded scenes a large object that finds no room is made small (at most four large
    objects fit); when even that fails the whole placement starts again.
    """
    for _ in range(1000):
        placed: list[tuple[float, float, float]] = []
        for size in sizes:
            spot = _free_spot(rng, SIZE_RADIUS[size], placed)
            if spot is None and size != "small":
                spot = _free_spot(rng, SIZE_RADIUS["small"], placed)
            if spot is None:
                break
            placed.append(spot)
        else:
            return [(x, y, _SIZE_OF_RADIUS[r]) for x, y, r in placed]
    raise RuntimeError(f"could not place {len(sizes)} objects without overlap")


def _free_spot(rng: random.Random, r: float, placed: list) -> tuple[float, float, float] | None:
    """Rejection-sample a centre for a box of half side ``r`` that keeps clear of ``placed``."""
    low, span = (r + EDGE_MARGIN) * 1e4, (1.0 - 2 * (r + EDGE_MARGIN)) * 1e4
    for _ in range(50):
        x, y = int(low + span * rng.random()) / 1e4, int(low + span * rng.random()) / 1e4  # 4 decimals
        for px, py, pr in placed:
            reach = r + pr + PLACEMENT_MARGIN
            if abs(x - px) < reach and abs(y - py) < reach:
                break
        else:
            return x, y, r
    return None


def _sample_objects(rng: random.Random, config: WorldConfig) -> tuple[ShapeObject, ...]:
    """Draw the objects of one scene: how many, their concepts, then non-overlapping positions."""
    n = config.min_objects + int(rng.random() * (config.max_objects - config.min_objects + 1))
    pairs = _sample_pairs(rng, config, n)
    spots = _place(rng, [SIZES[rng.random() < 0.5] for _ in range(n)])
    return tuple(ShapeObject(shape, colour, size, x, y) for (colour, shape), (x, y, size) in zip(pairs, spots))


def sample_scene(config: WorldConfig, index: int) -> Scene:
    """Scene number ``index`` of the world ``config`` (a pure function of seed and index)."""
    return _scene_and_stream(config, index)[0]


def _scene_and_stream(config: WorldConfig, index: int) -> tuple[Scene, random.Random]:
    """The scene and its random stream, which captions continue so that they never change the scene."""
    rng = _stream(config.seed, index, _SCENE_STREAM)
    objects = _sample_objects(rng, config)
    return Scene(objects, rng.getrandbits(31), float(config.background_noise)), rng


def generate_scenes(config: WorldConfig, start: int = 0, stop: int | None = None) -> list[Scene]:
    """Scenes ``start`` .. ``stop`` (default: all ``num_scenes``) of the world ``config``."""
    stop = config.num_scenes if stop is None else stop
    return [sample_scene(config, i) for i in range(start, stop)]
