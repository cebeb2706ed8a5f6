"""Foils and distractors that read like true captions.

A foil is a true caption with one word changed. Drawn uniformly among the possible changes, foils name rare
(colour, shape) pairs and numbers the scenes never hold far more often than true captions do, and a classifier
that never sees the image tells them apart from the words alone (acc_r 0.68 on the evaluation foils, 0.93 on
counts). `CaptionFrequencies` is a word-bigram model of true captions. Drawing a foil among the candidates in
proportion to how likely the model finds its text (`choose`, `weighted_order`) gives foils the words of true
captions at close to their corpus rates; proposing it uniformly and accepting the pair with probability
min(1, P(foil) / P(caption)) (`accept`) makes a pair as likely as its mirror image, caption and foil swapped.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> list[str]:
    return ["<s>", *_WORD.findall(text.lower()), "</s>"]


class CaptionFrequencies:
    """Word-bigram frequencies of true captions, add-`smoothing` smoothed; `log_prob` of a text under them."""

    def __init__(self, captions: Iterable[str], smoothing: float = 0.1):
        if smoothing <= 0:
            raise ValueError(f"smoothing must be > 0, got {smoothing}")
        self.smoothing = float(smoothing)
        self.unigrams, self.bigrams = Counter(), Counter()
        self.captions = 0
        for caption in captions:
            words = _words(caption)
            self.unigrams.update(words[:-1])
            self.bigrams.update(zip(words[:-1], words[1:]))
            self.captions += 1
        if not self.captions:
            raise ValueError("CaptionFrequencies needs at least one caption")
        self.vocabulary = len({w for pair in self.bigrams for w in pair}) + 1

    def log_prob(self, text: str) -> float:
        words = _words(text)
        return sum(
            math.log((self.bigrams[(a, b)] + self.smoothing) / (self.unigrams[a] + self.smoothing * self.vocabulary))
            for a, b in zip(words[:-1], words[1:])
        )

    def weighted_order(self, candidates: Sequence[str], rng) -> list[str]:
        """The candidates in a random order where each comes first with probability proportional to its
        `exp(log_prob)` (weighted sampling without replacement): the first of them that passes a check is a draw
        among those that pass, weighted by how likely true captions' words make it. `rng` has `.random()`."""
        if not candidates:
            return []
        logs = [self.log_prob(c) for c in candidates]
        top = max(logs)
        # Efraimidis-Spirakis keys u ** (1 / w), compared as log(u) / w
        keys = [math.log(max(rng.random(), 1e-300)) / math.exp(lp - top) for lp in logs]
        return [candidates[i] for i in sorted(range(len(candidates)), key=lambda i: -keys[i])]

    def accept(self, caption: str, foil: str, rng) -> bool:
        """Metropolis acceptance of a (caption, foil) pair: true with probability min(1, P(foil) / P(caption)).
        With the foil proposed uniformly among the caption's edits, accepted pairs are as likely as the same pair
        with the roles swapped (detailed balance), so no text-only classifier beats chance on them."""
        return math.log(max(rng.random(), 1e-300)) < self.log_prob(foil) - self.log_prob(caption)

    def choose(self, candidates: Sequence[str], rng) -> str | None:
        """One candidate, drawn with probability proportional to `exp(log_prob)`; None when there is none."""
        order = self.weighted_order(candidates, rng)
        return order[0] if order else None
