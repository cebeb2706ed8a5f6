"""Attention-guided masked multimodal modeling: relevance from a guidance pass decides what MLM and MIM hide.

AttMask (Kakogeorgiou et al., 2022) hides the patches a teacher attends to most. Carried to vision and language:
words are ranked by the attention they receive from the image patches (or from [CLS]), patches by the attention they
receive from the caption's words (or from [CLS]), on the unmasked, matched pair. The ranking goes through the pure
policies of `processing.masking` (random, high, low, hint). Where the relevance comes from:

- `model`: the model itself, one extra forward pass without gradients (eval mode);
- `ema`: an EMA teacher, one extra forward pass of the teacher;
- `itm`: the image-text matching pass the step already runs: its matched rows (all B of them with hard negatives,
  the rows whose ITM caption is their own caption with random negatives) give the relevance at no extra pass; the
  other rows are masked by the `random` policy at the same ratio, and `guided_share` in the log says how many.

Randomness: the step's ratio comes from (seed, global step) and is the same on every process; each sample's coin
and mask from (seed, epoch, dataset index), so masks do not depend on the batch, the number of processes or workers.
During `guidance_warmup_steps` every policy is `random` (attention is still meaningless), at the same ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...processing.collator import IGNORE_INDEX, mask_tokens
from ...processing.masking import batch_policy_masks, policy_mask, sample_ratio
from ...processing.random_streams import MASK_PROBE_STREAM, PATCH_STREAM, RATIO_STREAM, WORD_REPLACE_STREAM, WORD_STREAM

SOURCES = ("model", "ema", "itm")
WORD_QUERIES = ("patches", "cls")
PATCH_QUERIES = ("text", "cls")
JOINT_MODES = ("independent", "together", "complementary")
LAYER_CHOICES = ("last", "mean")
RELEVANCE_DECIMALS = 5  # scores are rounded to 1e-5 before ranking
SCORINGS = ("attention", "lift")


@dataclass
class GuidedMasking:
    """What to mask and how; `apply` turns a batch's relevance into MLM inputs/labels and MIM masks."""

    policy: str
    targets: tuple[str, ...]
    source: str = "model"
    layers: str = "last"
    word_query: str = "patches"
    patch_query: str = "text"
    joint: str = "independent"
    scoring: str = "lift"
    ratio: float | None = None
    ratio_range: tuple[float, float] = (0.1, 0.5)
    probability: float = 0.5
    random_share: float = 0.0
    hint_share: float = 0.1
    warmup_steps: int = 0
    seed: int = 0
    mask_token_id: int = 0
    replacement_ids: np.ndarray | None = None
    never_masked_ids: np.ndarray | None = None
    patch_size: int = 16

    @classmethod
    def from_args(cls, args, tokenizer, patch_size):
        """From the `masking_*` / `guidance_*` fields of `PretrainArguments` (None when masking_policy is '')."""
        if not args.masking_policy:
            return None
        special = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
        structural = [
            i for i in (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id) if i is not None
        ]
        return cls(
            policy=args.masking_policy,
            targets=args.masking_target_list(),
            source=args.guidance_source,
            layers=args.guidance_layers,
            word_query=args.word_relevance_from,
            patch_query=args.patch_relevance_from,
            joint=args.joint_masking,
            scoring=args.relevance_scoring,
            ratio=args.masking_ratio or None,
            ratio_range=(args.masking_ratio_min, args.masking_ratio_max),
            probability=args.masking_probability,
            random_share=args.masking_random_share,
            hint_share=args.hint_share,
            warmup_steps=args.guidance_warmup_steps,
            seed=args.seed,
            mask_token_id=int(tokenizer.mask_token_id),
            replacement_ids=np.setdiff1d(np.arange(len(tokenizer), dtype=np.int64), special),
            never_masked_ids=np.array(structural, dtype=np.int64),
            patch_size=patch_size,
        )

    # -- what the guidance pass is asked for --------------------------------------------------------------------------

    def needs_guidance(self, step):
        """False during warm-up and for the `random` policy: no relevance is needed, no pass is run."""
        return self.policy != "random" and step >= self.warmup_steps

    def relevance_layers(self, num_layers):
        return (-1,) if self.layers == "last" else tuple(range(num_layers))

    def _token_sets_start(self):
        return 3 if self.scoring == "lift" else 2

    def request(self, inputs):
        """Relevance weights (B, R, S) for a pass over `inputs` (input_ids, attention_mask, pixel_values, pixel_mask).

        Set 0: the queries that rank words (the valid patches, or [CLS]); set 1: the queries that rank patches (the
        caption's words, [CLS] and [SEP] excluded, or [CLS]); with `scoring="lift"`, set 2: every valid position (the
        attention a token receives on average, which the lift divides by); in joint modes, the last L sets are each
        text position alone, so that the patches each word points at are known. Layout of S: text (L) | image [CLS]
        | patches (P).
        """
        text_mask = inputs["attention_mask"].bool()
        batch, length = text_mask.shape
        patches = patch_validity(inputs["pixel_values"], inputs.get("pixel_mask"), self.patch_size)
        total = length + 1 + patches.shape[1]
        words = caption_words(text_mask)
        start = self._token_sets_start()
        sets = start + (length if self.joint != "independent" else 0)
        weights = torch.zeros(batch, sets, total, device=text_mask.device)
        if self.word_query == "patches":
            weights[:, 0, length + 1 :] = patches.float()
        else:
            weights[:, 0, 0] = 1.0
        if self.patch_query == "text":
            weights[:, 1, :length] = words.float()
        else:
            weights[:, 1, 0] = 1.0
        if self.scoring == "lift":
            weights[:, 2, :length] = text_mask.float()
            weights[:, 2, length] = 1.0
            weights[:, 2, length + 1 :] = patches.float()
        if sets > start:
            positions = torch.arange(length, device=text_mask.device)
            weights[:, start + positions, positions] = words.float()
        return weights

    def scores(self, relevance):
        """(word-ranking, patch-ranking) scores (B, S) from the relevance sets: the attention itself, or its lift
        over the attention the token receives from every position (which discounts tokens that everything attends
        to, such as [SEP] or frequent function words that serve as attention sinks)."""
        words, patches = relevance[:, 0], relevance[:, 1]
        if self.scoring == "lift":
            average = np.maximum(relevance[:, 2], 1e-12)
            return words / average, patches / average
        return words, patches

    # -- from relevance to masks --------------------------------------------------------------------------------------

    def step_ratio(self, step):
        """The masking ratio of optimizer step `step`, shared by every policy, micro-batch and process."""
        return sample_ratio(np.random.default_rng([self.seed, step, RATIO_STREAM]), self.ratio, *self.ratio_range)

    def _rngs(self, batch, stream, rows):
        epochs, indices = batch["epoch"].tolist(), batch["index"].tolist()
        return [np.random.default_rng([self.seed, int(epochs[i]), int(indices[i]), stream]) for i in rows]

    def apply(self, batch, step, relevance=None, guided_rows=None):
        """Writes this step's masks into `batch` (MLM: input_ids, mlm_labels; MIM: mim_mask); returns diagnostics.

        `relevance` (B', R, S'): the guidance pass's output for the rows `guided_rows` (ascending; default: every row)
        of the batch, laid out as in `request` over that pass's text length. Rows without relevance use `random`.
        """
        size = len(batch["index"])
        ratio = self.step_ratio(step)
        guided = np.zeros(size, dtype=bool)
        if relevance is not None:
            guided[np.arange(size) if guided_rows is None else np.asarray(guided_rows.cpu())] = True
        word_scores = patch_scores = token_patches = None
        if relevance is not None:
            # Rounded so that float noise (which differs with the batch's padding and shapes) does not reorder
            # near-equal scores: those become ties, broken by the sample's own generator.
            relevance = relevance.float().cpu().numpy()
            pass_length = relevance.shape[-1] - 1 - batch_patches(batch, self.patch_size)
            words, patches = (np.round(x, RELEVANCE_DECIMALS) for x in self.scores(relevance))
            word_scores = _fit(words[:, :pass_length], batch["input_ids"].shape[1])
            patch_scores = patches[:, pass_length + 1 :]
            start = self._token_sets_start()
            if relevance.shape[1] > start:
                rows = np.round(relevance[:, start:, pass_length + 1 :], RELEVANCE_DECIMALS)
                token_patches = _fit(rows.transpose(0, 2, 1), batch["input_ids"].shape[1]).transpose(0, 2, 1)
        stats = {"guided_rows": float(guided.sum()), "rows": float(size)}
        word_masks = None
        if "mlm" in self.targets:
            word_masks = self._word_masks(batch, ratio, guided, word_scores)
            self._write_mlm(batch, word_masks)
        if "mim" in self.targets:
            patch_masks = self._patch_masks(batch, ratio, guided, patch_scores, token_patches, word_masks)
            batch["mim_mask"] = torch.from_numpy(patch_masks).to(batch["pixel_values"].device)
        stats.update(mask_diagnostics(batch, self.targets))
        return stats

    def _word_masks(self, batch, ratio, guided, scores):
        word_ids = batch["word_ids"].cpu().numpy()
        plain = batch["plain_input_ids"].cpu().numpy()
        valid = (word_ids >= 0) & ~np.isin(plain, self.never_masked_ids)
        masks = np.zeros(word_ids.shape, dtype=bool)
        kwargs = dict(
            ratio=ratio, mask_probability=self.probability, random_share=self.random_share, hint_share=self.hint_share
        )
        for rows, policy, row_scores in self._groups(guided, scores, word_ids.shape):
            masks[rows], _ = batch_policy_masks(
                row_scores,
                valid[rows],
                policy,
                None,
                word_ids=word_ids[rows],
                sample_rngs=self._rngs(batch, WORD_STREAM, rows),
                **kwargs,
            )
        return masks

    def _groups(self, guided, scores, shape):
        """(rows, policy, scores) for the guided rows and for the rows that fall back to `random`."""
        groups = []
        guided_rows, other_rows = np.flatnonzero(guided), np.flatnonzero(~guided)
        if len(guided_rows):
            groups.append((guided_rows, self.policy, scores))
        if len(other_rows):
            groups.append((other_rows, "random", np.zeros((len(other_rows), shape[1]))))
        return groups

    def _write_mlm(self, batch, masks):
        plain = batch["plain_input_ids"].cpu().numpy()
        masked_ids = plain.copy()
        labels = np.full(plain.shape, IGNORE_INDEX, dtype=np.int64)
        # BERT's 80/10/10, from a generator of the sample's own (a stream apart from its mask draws).
        # Drawn over the sample's own tokens (not its padding), so the draws do not depend on the batch.
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        for row, rng in enumerate(self._rngs(batch, WORD_REPLACE_STREAM, range(len(plain)))):
            n = int(lengths[row])
            if masks[row].any():
                masked_ids[row, :n], labels[row, :n] = mask_tokens(
                    plain[row, :n], masks[row, :n], self.mask_token_id, self.replacement_ids, rng
                )
        device = batch["input_ids"].device
        batch["input_ids"] = torch.from_numpy(masked_ids).to(device)
        batch["mlm_labels"] = torch.from_numpy(labels).to(device)

    def _patch_masks(self, batch, ratio, guided, scores, token_patches, word_masks):
        valid = patch_validity(batch["pixel_values"], batch.get("pixel_mask"), self.patch_size).cpu().numpy()
        if self.joint == "independent" or word_masks is None:
            masks = np.zeros(valid.shape, dtype=bool)
            kwargs = dict(
                ratio=ratio,
                mask_probability=self.probability,
                random_share=self.random_share,
                hint_share=self.hint_share,
            )
            for rows, policy, row_scores in self._groups(guided, scores, valid.shape):
                masks[rows], _ = batch_policy_masks(
                    row_scores, valid[rows], policy, None, sample_rngs=self._rngs(batch, PATCH_STREAM, rows), **kwargs
                )
            return masks
        # Joint modes: the samples whose words were masked; patches ranked by what the masked words point at
        # (`together`) or by what the visible words point at and the masked ones do not (`complementary`).
        masks = np.zeros(valid.shape, dtype=bool)
        rngs = self._rngs(batch, PATCH_STREAM, range(len(valid)))
        guided_index = np.cumsum(guided) - 1
        words = batch["word_ids"].cpu().numpy() >= 0
        for row in np.flatnonzero(word_masks.any(axis=1)):
            if guided[row]:
                rows_of = token_patches[guided_index[row]]  # (L, P)
                hidden, shown = word_masks[row], words[row] & ~word_masks[row]
                pointed = rows_of[hidden].mean(axis=0)
                row_scores = (
                    pointed
                    if self.joint == "together"
                    else ((rows_of[shown].mean(axis=0) if shown.any() else 0.0) - pointed)
                )
                policy = self.policy
            else:
                row_scores, policy = np.zeros(valid.shape[1]), "random"
            masks[row] = policy_mask(
                row_scores,
                valid[row],
                ratio,
                policy,
                rngs[row],
                hint_share=self.hint_share,
                random_share=self.random_share,
            )
        return masks


def caption_words(text_mask):
    """(B, L) bool: the caption's word positions, i.e. valid tokens except [CLS] (first) and [SEP] (last valid)."""
    lengths = text_mask.long().sum(dim=1)
    positions = torch.arange(text_mask.shape[1], device=text_mask.device)[None]
    return text_mask & (positions > 0) & (positions < (lengths - 1)[:, None])


def patch_validity(pixel_values, pixel_mask, patch_size):
    """(B, P) bool: the patches that cover image, not padding (the same rule as the model's patch embedding)."""
    rows, cols = (side // patch_size for side in pixel_values.shape[-2:])
    if pixel_mask is None:
        return torch.ones(pixel_values.shape[0], rows * cols, dtype=torch.bool, device=pixel_values.device)
    return F.interpolate(pixel_mask[:, None].float(), size=(rows, cols)).bool()[:, 0].flatten(1)


def batch_patches(batch, patch_size):
    rows, cols = (side // patch_size for side in batch["pixel_values"].shape[-2:])
    return rows * cols


def _fit(array, length):
    """Crop or zero-pad the last axis to `length` (a pass's text length to the batch's own caption length)."""
    if array.shape[-1] >= length:
        return array[..., :length]
    return np.concatenate([array, np.zeros((*array.shape[:-1], length - array.shape[-1]))], axis=-1)


def mask_diagnostics(batch, targets=("mlm", "mim")):
    """Sums for the log: masked tokens and how many are concept words; masked patches and how many lie on objects;
    and the base rates (all caption words / all patches) to compare against."""
    stats = {}
    if "mlm" in targets and "mlm_labels" in batch:
        masked = batch["mlm_labels"] != IGNORE_INDEX
        words = batch["word_ids"] >= 0
        stats["masked_words"] = float(masked.sum())
        stats["caption_words"] = float(words.sum())
        if "concept_mask" in batch:
            concept = batch["concept_mask"].bool()
            stats["masked_concept_words"] = float((masked & concept).sum())
            stats["caption_concept_words"] = float((words & concept).sum())
    if "mim" in targets and "mim_mask" in batch:
        mask = batch["mim_mask"].bool()
        stats["masked_patches"] = float(mask.sum())
        stats["patches"] = float(mask.numel())
        if "object_patches" in batch:
            on_object = batch["object_patches"].bool().to(mask.device)
            stats["masked_object_patches"] = float((mask & on_object).sum())
            stats["object_patches"] = float(on_object.sum())
    return stats


def share_metrics(totals):
    """Shares from summed diagnostics: concept_word_share (of masked words), object_patch_share (of masked patches),
    their base rates over all words / patches, and guided_share (rows whose masks came from relevance)."""
    out = {}
    pairs = (
        ("concept_word_share", "masked_concept_words", "masked_words"),
        ("concept_word_base", "caption_concept_words", "caption_words"),
        ("object_patch_share", "masked_object_patches", "masked_patches"),
        ("object_patch_base", "object_patches", "patches"),
        ("guided_share", "guided_rows", "rows"),
        ("masked_word_share", "masked_words", "caption_words"),
        ("masked_patch_share", "masked_patches", "patches"),
    )
    for name, top, bottom in pairs:
        if top in totals and totals.get(bottom, 0) > 0:
            out[name] = totals[top] / totals[bottom]
    return out


@torch.no_grad()
def guidance_relevance(model, inputs, guide):
    """The relevance (B, R, S) of a separate pass of `model` (the model itself or its EMA teacher) over the unmasked,
    matched `inputs`, in eval mode and without gradients."""
    encoder = model.vlp if hasattr(model, "vlp") else model
    was_training = encoder.training
    encoder.eval()
    try:
        out = encoder(
            **inputs,
            relevance_weights=guide.request(inputs),
            relevance_layers=guide.relevance_layers(encoder.config.num_hidden_layers),
        )
    finally:
        encoder.train(was_training)
    return out.relevance


# The keys that decide only how a policy draws its masks; arms of a study that differ in nothing else are compared by
# the masks they would draw (`mask_fingerprint`).
POLICY_KEYS = (
    "masking_policy",
    "masking_ratio",
    "masking_ratio_min",
    "masking_ratio_max",
    "masking_probability",
    "masking_random_share",
    "hint_share",
)
MASKING_TARGET_CODES = {"mlm": 1, "mim": 2}


def mask_fingerprint(args, unit_counts, draws=64):
    """The masks a policy configuration (`PretrainArguments`) draws on a fixed probe, as bytes per target.

    `unit_counts` {target: [numbers of maskable units]} (words per caption for `mlm`, valid patches for `mim`). Draw d
    masks a sample of unit_counts[target][d % len] units with distinct scores, with its own generator seeded by
    (d, target), at a ratio and coin drawn as in training; two configurations with equal fingerprints draw the same
    masks from the same relevance (e.g. `hint` that reveals nothing is `high`).
    """
    out = {}
    for target in sorted(args.masking_target_list()):
        counts = list(unit_counts[target])
        bits = []
        for d in range(draws):
            rng = np.random.default_rng([d, MASKING_TARGET_CODES[target], MASK_PROBE_STREAM])
            n = int(counts[d % len(counts)])
            scores = rng.permutation(n).astype(float)
            ratio = sample_ratio(rng, args.masking_ratio or None, args.masking_ratio_min, args.masking_ratio_max)
            if rng.random() >= args.masking_probability:
                bits.append(np.zeros(n, dtype=bool))
                continue
            bits.append(
                policy_mask(
                    scores,
                    np.ones(n, dtype=bool),
                    ratio,
                    args.masking_policy,
                    rng,
                    hint_share=args.hint_share,
                    random_share=args.masking_random_share,
                )
            )
        out[target] = np.packbits(np.concatenate(bits)).tobytes()
    return out


__all__ = [
    "POLICY_KEYS",
    "GuidedMasking",
    "caption_words",
    "guidance_relevance",
    "mask_diagnostics",
    "mask_fingerprint",
    "patch_validity",
    "share_metrics",
]
