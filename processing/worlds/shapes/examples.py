"""World examples: a scene with its captions and their noise."""

from __future__ import annotations

from dataclasses import dataclass, field

from .captions import generate_captions
from .config import WorldConfig
from .foils import _avoided_pairs, _noisy_caption
from .grammar import Caption, caption_refs, parse_caption
from .sampling import _NOISE_STREAM, _scene_and_stream, _stream
from .scenes import Scene


@dataclass(frozen=True, slots=True)
class WorldExample:
    """One dataset row before rendering: the scene, clean captions and what training sees."""

    index: int
    scene: Scene
    clean: tuple[Caption, ...]
    captions: tuple[str, ...]
    noise_kinds: tuple[str, ...]
    refs: tuple[tuple[int | None, ...], ...] = field(repr=False)


def make_example(config: WorldConfig, index: int) -> WorldExample:
    """Example ``index`` of the world: its scene, clean captions and (possibly noisy) training captions."""
    scene, rng = _scene_and_stream(config, index)
    clean = generate_captions(scene, rng, config.captions_per_scene, config.caption_kinds, _avoided_pairs(config))
    texts, kinds, refs = [c.text for c in clean], ["clean"] * len(clean), [c.refs for c in clean]
    if config.noise_rate > 0:
        noise_rng = _stream(config.seed, index, _NOISE_STREAM)
        for k, caption in enumerate(clean):
            if noise_rng.random() < config.noise_rate:
                clause = parse_caption(caption.text)
                texts[k], kinds[k] = _noisy_caption(noise_rng, config, clause, scene.objects)
                refs[k] = tuple(caption_refs(texts[k], scene))
    return WorldExample(index, scene, tuple(clean), tuple(texts), tuple(kinds), tuple(refs))


def generate_examples(config: WorldConfig, start: int = 0, stop: int | None = None) -> list[WorldExample]:
    """Examples ``start`` .. ``stop`` (default: all ``num_scenes``) of the world."""
    stop = config.num_scenes if stop is None else stop
    return [make_example(config, i) for i in range(start, stop)]
