"""Cross-modal use (after Frank et al. 2021): a masked concept word with the true, a blank and a mismatched image;
MIM loss with and without the caption."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ...processing.worlds import shapes as sw
from .figures import comparison, difference, mean_figure
from .runner import ImageBank, Runner, derangement, masked_word_predictions, mim_losses, rng_for
from .settings import BLANK, CROSSMODAL_CATEGORIES, Settings


def single_token_ids(tokenizer, words: Sequence[str]) -> dict[str, int]:
    """The words that are one token of the vocabulary, with their ids."""
    ids = {w: tokenizer.convert_tokens_to_ids(w) for w in words}
    return {w: i for w, i in ids.items() if i is not None and i != tokenizer.unk_token_id}


def masked_concept_items(items: Sequence, tokenizer) -> tuple[list[tuple[int, int, str]], int]:
    """(item, word position, category) per usable grounding item, and how many had no usable word.

    The candidates are the words of the item's referring phrase that are colour, shape or size words, one token,
    and said once in the caption; item k takes candidate k % (number of candidates).
    """
    vocab = {c: single_token_ids(tokenizer, words) for c, words in CROSSMODAL_CATEGORIES.items()}
    chosen, skipped = [], 0
    for k, item in enumerate(items):
        words = item.caption.split()
        start, stop = item.word_span
        candidates = [(j, sw.concept_category(words[j])) for j in range(start, stop)]
        candidates = [
            (j, c) for j, c in candidates if c in vocab and words[j] in vocab[c] and words.count(words[j]) == 1
        ]
        if not candidates:
            skipped += 1
            continue
        j, category = candidates[k % len(candidates)]
        chosen.append((k, j, category))
    return chosen, skipped


def run_crossmodal(runner: Runner, sets: Mapping, settings: Settings, objectives: Sequence[str] | None = None) -> dict:
    """Masked concept-word accuracy with the true, a blank and a mismatched image; MIM loss with and without caption
    (skipped when ``objectives``, the run's pretraining objectives, are known and lack MIM: its head is untrained)."""
    items = list(sets["grounding"])
    bank = ImageBank(scenes=[item.scene for item in items], image_size=runner.image_size)
    tokenizer = runner.processor.tokenizer
    chosen, skipped = masked_concept_items(items, tokenizer)
    result = {"source": "grounding items: one concept word of the referring phrase masked", "skipped": skipped}
    if len(chosen) >= 2:
        vocab = {c: single_token_ids(tokenizer, words) for c, words in CROSSMODAL_CATEGORIES.items()}
        candidate_ids = sorted({i for ids in vocab.values() for i in ids.values()})
        column = {i: p for p, i in enumerate(candidate_ids)}
        texts, targets, categories = [], [], []
        for k, j, category in chosen:
            words = items[k].caption.split()
            targets.append(vocab[category][words[j]])
            words[j] = tokenizer.mask_token
            texts.append(" ".join(words))
            categories.append(category)
        targets = np.asarray(targets)
        allowed = np.zeros((len(chosen), len(candidate_ids)), dtype=bool)
        for row, category in enumerate(categories):
            allowed[row, [column[i] for i in vocab[category].values()]] = True
        image_ids = np.asarray([k for k, _, _ in chosen])
        conditions = {
            "image": image_ids,
            "blank": np.full_like(image_ids, BLANK),
            "mismatched": image_ids[derangement(len(chosen), rng_for(settings, "crossmodal/mismatched"))],
        }
        correct, open_correct = {}, {}
        for name, ids in conditions.items():
            closed, opened = masked_word_predictions(runner, bank, ids, texts, candidate_ids)
            predicted = np.asarray(candidate_ids)[np.where(allowed, closed, -np.inf).argmax(axis=1)]
            correct[name] = (predicted == targets).astype(float)
            open_correct[name] = (opened == targets).astype(float)
        selections = {"all": np.arange(len(chosen))}
        for category in CROSSMODAL_CATEGORIES:
            selections[category] = np.flatnonzero(np.asarray(categories) == category)
        words = {}
        for group, rows in selections.items():
            if rows.size == 0:
                continue
            score = {
                "accuracy": mean_figure(correct["image"][rows], settings),
                "open_accuracy": mean_figure(open_correct["image"][rows], settings),
                "chance": mean_figure(1.0 / allowed[rows].sum(axis=1), settings),
            }
            floors = {
                name: {"accuracy": mean_figure(correct[name][rows], settings)} for name in ("blank", "mismatched")
            }
            differences = {
                name: difference(correct[name][rows], correct["image"][rows], settings, "accuracy") for name in floors
            }
            words[group] = comparison(
                rows.size,
                "accuracy",
                score,
                floors,
                differences,
                {"accuracy": correct["image"][rows], "open_accuracy": open_correct["image"][rows]},
            )
        result["masked_word"] = words
    if objectives is not None and "mim" not in objectives:
        result["mim"] = {"skipped": f"the model was not pretrained with MIM (objectives {','.join(objectives)})"}
    else:
        result["mim"] = run_mim(runner, items, bank, settings)
    return result


def random_patch_masks(n: int, num_patches: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """(n, num_patches) bool: round(share * num_patches) patches (at least one) hidden per row, uniformly drawn."""
    count = max(1, round(share * num_patches))
    order = np.argsort(rng.random((n, num_patches)), axis=1)[:, :count]
    masks = np.zeros((n, num_patches), dtype=bool)
    np.put_along_axis(masks, order, True, axis=1)
    return masks


def run_mim(runner: Runner, items: Sequence, bank: ImageBank, settings: Settings) -> dict:
    """MIM loss on the same hidden patches with the item's caption and with no text."""
    config = runner.model.config
    if getattr(config, "mim_target", "pixel") != "pixel":
        return {"skipped": f"mim_target={config.mim_target!r}: the teacher's targets are not saved with the model"}
    if len(items) < 2:
        return {"skipped": f"{len(items)} items"}
    masks = random_patch_masks(len(items), runner.num_patches, settings.mim_probability, rng_for(settings, "mim"))
    ids = np.arange(len(items))
    with_caption = mim_losses(runner, bank, ids, [item.caption for item in items], masks)
    without = mim_losses(runner, bank, ids, None, masks)
    score = {"loss": mean_figure(with_caption, settings)}
    floors = {"no_caption": {"loss": mean_figure(without, settings)}}
    # Lower is better: the difference is floor - score, positive when the caption helps reconstruct the image.
    differences = {"no_caption": difference(with_caption, without, settings, "loss (no caption - caption)")}
    return comparison(
        len(items), "loss", score, floors, differences, {"loss": with_caption}, mim_probability=settings.mim_probability
    )
