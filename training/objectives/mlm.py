"""MLM: the image with its own caption, whole words masked; cross-entropy at the masked positions
(`VLPForPreTraining`'s MLM head, tied to the word embeddings).

Masks: the collator draws whole-word masks in the DataLoader workers (`processing/collator.py`, from
`processing/masking.py`; processing never imports training, so they stay there), or the step replaces them by
attention-guided ones (`training/pretrain/guided_masking.py`).

Validation: loss and accuracy at the masked positions, and at the masked concept words (`validation_sums`); masked
colour-word accuracy, a word the image alone decides (`masked_word_accuracy`)."""

import json

import datasets
import torch

from ...processing.pretraining_data import decode_image
from ._inputs import images, text


def inputs(batch, context):
    """Masked own captions (matched pairs) with their images."""
    return {**text(batch), **images(batch), "mlm_labels": batch["mlm_labels"]}


def count(batches, hard_negatives=False):
    """Masked tokens: the units the MLM loss averages over."""
    return sum(int((b["mlm_labels"] != -100).sum()) for b in batches)


VALIDATION_SUMS = ("loss_sum", "masked", "correct", "concept", "concept_correct")


@torch.no_grad()
def validation_sums(model, batch):
    """One validation batch's `VALIDATION_SUMS`: loss x masked tokens, masked tokens, correct predictions, masked
    concept words (`concept_mask`: colour, shape and size words) and correct ones among them."""
    labels = batch["mlm_labels"]
    out = model(**inputs(batch, {}))
    masked = labels != -100
    n_masked = int(masked.sum())
    hits = out.mlm_logits.argmax(-1) == labels[masked]
    concept = batch["concept_mask"][masked]
    return [
        float(out.mlm_loss) * n_masked,
        n_masked,
        float(hits.sum()),
        float(concept.sum()),
        float((hits & concept).sum()),
    ]


def _masked_word_items(rows, word_ids, limit):
    """(image, caption, word id) of each row's first caption holding one of the words once, naming an object."""
    items = []
    rows = rows.cast_column("image", datasets.Image(decode=False))
    for row in range(min(limit, len(rows))):
        record = rows[row]
        try:
            image = decode_image(record["image"])
        except ValueError:
            continue  # unreadable images are counted by the data loader, not here
        refs = json.loads(record["caption_refs"]) if "caption_refs" in record else None
        for number, caption in enumerate(record["captions"]):
            words = caption.split()
            # Only words that name an object in the image (not "there is no red star"), so the image decides.
            # A word said twice would be given away by its other occurrence.
            found = [
                w
                for position, w in enumerate(words)
                if w in word_ids and words.count(w) == 1 and (refs is None or refs[number][position] is not None)
            ]
            if found:
                items.append((image, caption, word_ids[found[0]]))
                break
    return items


@torch.no_grad()
def masked_word_accuracy(model, processor, rows, words, limit=256, batch_size=64):
    """Accuracy of predicting one masked word of `words` (e.g. the colours) that names an object in the image.

    Each row contributes at most one item: its first caption containing such a word, with that word replaced by
    [MASK]. The closed prediction is the argmax over `words` (chance 1 / len(words)): it asks which colour, and
    is not blurred by the grammar, where "a [MASK] star" may also take a size. The open prediction is the argmax
    over the whole vocabulary. Returns (closed correct, open correct, items).
    """
    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    word_ids = {w: tokenizer.convert_tokens_to_ids(w) for w in words}
    word_ids = {w: i for w, i in word_ids.items() if i != tokenizer.unk_token_id}
    items = _masked_word_items(rows, word_ids, limit)
    candidates = torch.tensor(sorted(word_ids.values()))
    closed = opened = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        pictures = [image for image, _, _ in chunk]
        encoded = processor(images=pictures, text=[c for _, c, _ in chunk], padding=True, return_tensors="pt")
        ids = encoded["input_ids"]
        labels = torch.full_like(ids, -100)
        for i, (_, _, target) in enumerate(chunk):
            position = int((ids[i] == target).nonzero()[0, 0])
            labels[i, position] = target
            ids[i, position] = tokenizer.mask_token_id
        inputs = {
            k: v.to(device)
            for k, v in encoded.items()
            if k in ("attention_mask", "token_type_ids", "pixel_values", "pixel_mask")
        }
        logits = model(input_ids=ids.to(device), mlm_labels=labels.to(device), **inputs).mlm_logits.cpu()
        targets = labels[labels != -100]
        opened += int((logits.argmax(-1) == targets).sum())
        closed += int((candidates[logits[:, candidates].argmax(-1)] == targets).sum())
    return closed, opened, len(items)
