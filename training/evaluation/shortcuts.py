"""Text-only floors: how much of a task a model solves without ever looking at an image.

A score means something only above what the text alone gives. For each task VLP trains or judges a model on, a
small classifier that never sees an image (a bag of words and word pairs, logistic regression) is trained on the
task's training items and scored on its evaluation items:

- grouped matching (GITM): is a segment the caption of a cell, or a distractor? (`gitm_segment_items`)
- image-text matching (ITM): is the caption the one of its image, or another image's? (`itm_pair_items`)
- foils: which of a (caption, foil) pair is the true caption? Scored as acc_r, the share of items whose caption
  gets the higher score (chance 0.5) (`foil_acc_r`)
- VQA: the answer from the question alone (`text_only_floor` on question, answer pairs)

`text_only_floor` returns the classifier's accuracy on the evaluation items with a bootstrap interval, and the
accuracy of always answering the training majority: a text-only accuracy near the majority says the text alone
does not tell the answer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from ..statistics import bootstrap_ci

_WORD = re.compile(r"[a-z0-9']+")


def features_of(text: str, ngram: int = 2) -> list[str]:
    """The words of a text (lower case) and its word n-grams up to `ngram`, with the segment bounds."""
    words = ["<s>", *_WORD.findall(text.lower()), "</s>"]
    return [
        " ".join(words[i : i + n])
        for n in range(1, ngram + 1)
        for i in range(len(words) - n + 1)
        if not (n == 1 and words[i] in ("<s>", "</s>"))
    ]


class BagOfWords:
    """Logistic regression over word and word-pair counts (multinomial, L2-penalised, full-batch L-BFGS).

    Deterministic: the vocabulary is sorted and the optimiser starts from zero.
    """

    def __init__(self, ngram: int = 2, l2: float = 1e-2, min_count: int = 1, max_iter: int = 200):
        if ngram < 1:
            raise ValueError(f"ngram must be at least 1, got {ngram}")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.ngram, self.l2, self.min_count, self.max_iter = ngram, l2, min_count, max_iter
        self.vocabulary: dict[str, int] = {}
        self.classes: list = []
        self.weight = self.bias = None

    def _matrix(self, texts: Sequence[str]) -> torch.Tensor:
        rows = torch.zeros((len(texts), len(self.vocabulary)), dtype=torch.float64)
        for i, text in enumerate(texts):
            for feature, count in Counter(features_of(text, self.ngram)).items():
                column = self.vocabulary.get(feature)
                if column is not None:
                    rows[i, column] = count
        return rows

    def fit(self, texts: Sequence[str], labels: Sequence) -> BagOfWords:
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        if not texts:
            raise ValueError("no training items")
        counts = Counter(f for text in texts for f in set(features_of(text, self.ngram)))
        self.vocabulary = {f: i for i, f in enumerate(sorted(f for f, c in counts.items() if c >= self.min_count))}
        self.classes = sorted(set(labels), key=repr)
        index = {label: i for i, label in enumerate(self.classes)}
        x = self._matrix(texts)
        y = torch.tensor([index[label] for label in labels])
        weight = torch.zeros((x.shape[1], len(self.classes)), dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(len(self.classes), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + self.l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        self.weight, self.bias = weight.detach(), bias.detach()
        return self

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities (N, classes), columns in the order of `classes`."""
        if self.weight is None:
            raise RuntimeError("fit the classifier first")
        return torch.softmax(self._matrix(texts) @ self.weight + self.bias, dim=-1).numpy()

    def predict(self, texts: Sequence[str]) -> list:
        return [self.classes[i] for i in self.scores(texts).argmax(axis=1)]


def _majority(labels: Sequence):
    counts = Counter(labels)
    return max(sorted(counts, key=repr), key=lambda label: counts[label])


def text_only_floor(
    train_texts: Sequence[str],
    train_labels: Sequence,
    eval_texts: Sequence[str],
    eval_labels: Sequence,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    **classifier,
) -> dict:
    """Accuracy of a text-only classifier trained on the training items and scored on the evaluation items, with
    a bootstrap interval over items, against answering the training majority every time."""
    model = BagOfWords(**classifier).fit(list(train_texts), list(train_labels))
    correct = np.asarray([p == t for p, t in zip(model.predict(list(eval_texts)), eval_labels)], dtype=float)
    majority = _majority(train_labels)
    majority_correct = np.asarray([t == majority for t in eval_labels], dtype=float)
    interval = bootstrap_ci(correct, "mean", n_resamples=n_resamples, confidence=confidence, seed=seed)
    return {
        "accuracy": float(correct.mean()),
        "ci_low": interval.low,
        "ci_high": interval.high,
        "majority": float(majority_correct.mean()),
        "majority_answer": majority,
        "n_train": len(train_texts),
        "n_eval": len(eval_texts),
    }


def caption_foil_scores(
    train_pairs: Sequence[tuple[str, str]], captions: Sequence[str], foils: Sequence[str], **classifier
) -> tuple[np.ndarray, np.ndarray]:
    """P(true caption) of each of ``captions`` and ``foils`` from a bag of words that never sees an image, trained
    to tell the captions of ``train_pairs`` (1) from their foils (0)."""
    texts = [text for pair in train_pairs for text in pair]
    labels = [label for _ in train_pairs for label in (1, 0)]
    model = BagOfWords(**classifier).fit(texts, labels)
    column = model.classes.index(1)
    return model.scores(list(captions))[:, column], model.scores(list(foils))[:, column]


def foil_acc_r(
    train_pairs: Sequence[tuple[str, str]],
    eval_pairs: Sequence[tuple[str, str]],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    **classifier,
) -> dict:
    """Text-only acc_r on foils: a classifier of true captions (1) against foils (0), trained on the training
    (caption, foil) pairs, scores both texts of each evaluation pair; an item counts as right when the caption
    scores higher, half when they tie. Chance is 0.5."""
    captions, foils = caption_foil_scores(
        train_pairs, [c for c, _ in eval_pairs], [f for _, f in eval_pairs], **classifier
    )
    right = np.where(captions > foils, 1.0, np.where(captions == foils, 0.5, 0.0))
    interval = bootstrap_ci(right, "mean", n_resamples=n_resamples, confidence=confidence, seed=seed)
    return {
        "acc_r": float(right.mean()),
        "ci_low": interval.low,
        "ci_high": interval.high,
        "chance": 0.5,
        "n_train": len(train_pairs),
        "n_eval": len(eval_pairs),
    }


def gitm_segment_items(dataset, indices: Sequence[int]) -> tuple[list[str], list[str]]:
    """The segments of the groups a `GroupedMatchingDataset` draws for `indices` (at its current epoch), each
    labelled "own" (the caption of a cell) or "none" (a distractor)."""
    from ...processing.grouping import NONE

    texts, labels = [], []
    for index in indices:
        group = dataset.draw(int(index))
        for text, target in zip(group.segments, group.segment_targets):
            texts.append(text)
            labels.append("none" if target == NONE else "own")
    return texts, labels


def itm_pair_items(dataset, indices: Sequence[int]) -> tuple[list[str], list[int]]:
    """The ITM captions a `PretrainingDataset` draws for `indices` (at its current epoch) with their labels
    (1: the caption of the sample's image, 0: a negative drawn from another row); skipped rows are left out."""
    texts, labels = [], []
    for index in indices:
        sample = dataset[int(index)]
        if "skipped" not in sample:
            texts.append(sample["itm_caption"])
            labels.append(int(sample["itm_label"]))
    return texts, labels
