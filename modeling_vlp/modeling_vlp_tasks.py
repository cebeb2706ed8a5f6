"""VLP task models for finetuning: visual question answering, image-text retrieval and captioning.

Each wraps the single-stream encoder under the attribute `vlp`, as `VLPForPreTraining` does, so `from_pretrained`
on a pretraining checkpoint keeps the encoder weights. The VQA classifier is new and initialised at load time; the
retrieval model reuses the pretraining ITM head and ITC projections (`itm_head`, `contrastive`) and the captioning
model the MLM head (`mlm_head`, tied to the word embeddings) under the same names, so a checkpoint that trained them
brings them along.

Hub-exported: this file is copied into saved checkpoints and imports only torch, transformers and its siblings.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from .configuration_vlp import VLPConfig
from .losses_vlp import contrastive_loss, sample_hard_negatives, similarity_matrix
from .modeling_vlp import VLPContrastiveHead, VLPMLMHead, VLPModel, VLPPreTrainedModel, _masked_mean

# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class VLPQuestionAnsweringOutput(ModelOutput):
    """VQA output: `logits` (B, num_labels) over the answer vocabulary; `loss` when soft-score `labels` are given."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class VLPImageTextRetrievalOutput(ModelOutput):
    """Retrieval output. `logits_per_image` (I, T) and `logits_per_text` (T, I) are the scaled ITC similarities of
    every image to every text of the batch (CLIP's names); with `return_loss`, `loss` = `itc_loss` + `itm_loss` and
    `itm_logits` (3B, 2) are the matching logits of the B matched pairs, then a negative text for each image, then a
    negative image for each text (rows without a candidate negative are left out)."""

    loss: torch.FloatTensor | None = None
    itc_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor = None
    logits_per_text: torch.FloatTensor = None
    itm_logits: torch.FloatTensor | None = None
    itm_labels: torch.LongTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None


@dataclass
class VLPRetrievalScores(ModelOutput):
    """Image x text score matrices (I, T) of `VLPForImageTextRetrieval.similarity`.

    `itc`: the contrastive similarity of every pair. `i2t`: per image (row), its top-k texts by ITC re-scored by ITM
    (log-odds of a match), every other text below them in ITC order. `t2i`: the same per text (column).
    """

    itc: torch.FloatTensor = None
    i2t: torch.FloatTensor = None
    t2i: torch.FloatTensor = None


@dataclass
class VLPCaptioningOutput(ModelOutput):
    """Captioning output: `logits` (B, T, vocab) at every text position predict the next token; `loss` when `labels`
    (B, T) are given (the token at position t + 1 is the target of position t; -100 is ignored)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Losses and masks (small pure functions, tested on their own)
# ---------------------------------------------------------------------------------------------------------------------


def vqa_loss(logits, targets):
    """Binary cross-entropy on soft scores, summed over answers and averaged over questions (ViLT's VQA loss:
    the element mean times the number of answers). `logits`, `targets`: (B, num_labels)."""
    if logits.shape != targets.shape:
        raise ValueError(f"VQA labels have shape {tuple(targets.shape)}; expected soft scores {tuple(logits.shape)}")
    summed = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum")
    return summed / max(logits.shape[0], 1)


def next_token_loss(logits, labels):
    """Cross-entropy of the logits at position t against the label at t + 1, averaged over labels that are not -100."""
    shifted_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shifted_labels = labels[:, 1:].reshape(-1)
    if not bool((shifted_labels != -100).any()):
        return shifted_logits.sum() * 0.0
    return F.cross_entropy(shifted_logits, shifted_labels, ignore_index=-100)


def prefix_lm_mask(text_length, sequence_length, prefix_length=1, device=None):
    """(S, S) bool, True where query i may attend to key j, for the sequence `[text tokens][image CLS, patches]`.

    The image and the first `prefix_length` text tokens are visible to every position; a text token after the prefix
    is visible only to itself and to later text tokens (causal). Image positions thus never see the caption beyond
    the prefix, so the state of text position t depends on the text up to t and on the image only.
    """
    if not 0 <= text_length <= sequence_length:
        raise ValueError(f"text_length={text_length} must lie in [0, sequence_length={sequence_length}]")
    positions = torch.arange(sequence_length, device=device)
    query, key = positions[:, None], positions[None, :]
    key_visible_to_all = (key >= text_length) | (key < prefix_length)
    causal_text = (query < text_length) & (key <= query)
    return key_visible_to_all | causal_text


def _image_sequence_length(pixel_values, patch_size):
    """Tokens the image adds to the sequence: its [CLS] and one per patch."""
    if pixel_values is None:
        return 0
    height, width = pixel_values.shape[-2:]
    return 1 + (height // patch_size) * (width // patch_size)


def _same_rows(input_ids, attention_mask=None):
    """(B, B) bool, True where two rows hold the same tokens (padding ignored): the same caption twice."""
    ids = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, -1)
    return (ids[:, None, :] == ids[None, :, :]).all(dim=-1)


def draw_negatives(similarity, exclude, hard=True, generator=None):
    """For each row of `similarity`, a column that `exclude` allows: drawn ∝ softmax(row) (`hard`, ALBEF) or
    uniformly (`hard=False`). Returns (rows, columns) index tensors; rows with no allowed column are left out."""
    usable = ~exclude.all(dim=1)
    rows = usable.nonzero().flatten()
    if rows.numel() == 0:
        return rows, rows
    scores = similarity[rows] if hard else torch.zeros_like(similarity[rows])
    return rows, sample_hard_negatives(scores, generator=generator, exclude=exclude[rows])


# ---------------------------------------------------------------------------------------------------------------------
# Visual question answering
# ---------------------------------------------------------------------------------------------------------------------


class VLPAnswerHead(nn.Module):
    """ViLT's VQA classifier: dense (hidden -> 2 hidden), LayerNorm, activation, dense (2 hidden -> answers)."""

    def __init__(self, config: VLPConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        self.LayerNorm = nn.LayerNorm(2 * config.hidden_size, eps=config.layer_norm_eps)
        self.act = ACT2FN[config.hidden_act]
        self.classifier = nn.Linear(2 * config.hidden_size, config.num_labels)

    def forward(self, pooled):
        return self.classifier(self.act(self.LayerNorm(self.dense(pooled))))


class VLPForQuestionAnswering(VLPPreTrainedModel):
    """The encoder with an answer classifier on the pooled state ([CLS] of the question, which attends to the image).

    The answer vocabulary is the config's `id2label` / `label2id` (so `num_labels` is its size); pass them to
    `from_pretrained` to finetune a pretraining checkpoint. `labels` (B, num_labels) are soft scores in [0, 1] (the
    VQA accuracy each answer would get); the loss is binary cross-entropy with logits, summed over answers and
    averaged over questions. The prediction is the argmax of `logits`.
    """

    accepts_loss_kwargs = False

    def __init__(self, config: VLPConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vlp = VLPModel(config)
        self.vqa_head = VLPAnswerHead(config)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        pixel_values=None,
        pixel_mask=None,
        labels=None,
        output_attentions=None,
        attention_layers=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        outputs = self.vlp(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            output_attentions=output_attentions,
            attention_layers=attention_layers,
            output_hidden_states=output_hidden_states,
        )
        logits = self.vqa_head(outputs.pooler_output)
        loss = vqa_loss(logits, labels) if labels is not None else None
        return VLPQuestionAnsweringOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Image-text retrieval
# ---------------------------------------------------------------------------------------------------------------------


class VLPForImageTextRetrieval(VLPPreTrainedModel):
    """ITC pre-ranking, then ITM re-ranking of the top k (ALBEF, BLIP).

    Training (`return_loss=True`, B matched pairs): `itc_loss`, the symmetric InfoNCE of the text-only and image-only
    passes (features as `VLPForPreTraining.contrastive_features`), plus `itm_loss`, the cross-entropy of the ITM head
    on the B pairs and 2B in-batch negatives: for each image a text and for each text an image, drawn ∝ softmax of
    the ITC similarity (`config.retrieval_negatives="hard"`, as ALBEF and VLPForPreTraining's hard negatives) or
    uniformly (`"random"`). The same caption twice in a batch is never a negative, nor is any pair marked in
    `itm_exclude` (B, B) (True where text j must not be a negative for image i, e.g. it holds for that image too).

    Without `return_loss` it returns the ITC logits of every image and text of the batch (`logits_per_image`, CLIP's
    convention). Evaluation over a gallery goes through `similarity`.
    """

    accepts_loss_kwargs = False

    def __init__(self, config: VLPConfig):
        super().__init__(config)
        self.vlp = VLPModel(config)
        self.itm_head = nn.Linear(config.hidden_size, config.num_itm_labels)
        self.contrastive = VLPContrastiveHead(config)
        self.post_init()

    def text_features(self, input_ids, attention_mask=None, token_type_ids=None):
        """L2-normalized ITC features of a text-only pass, mean-pooled over the valid tokens: (T, contrastive_dim)."""
        out = self.vlp(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return F.normalize(self.contrastive.text_projection(_masked_mean(out)), dim=-1)

    def image_features(self, pixel_values, pixel_mask=None):
        """L2-normalized ITC features of an image-only pass, mean-pooled over valid patches: (I, contrastive_dim)."""
        out = self.vlp(pixel_values=pixel_values, pixel_mask=pixel_mask)
        return F.normalize(self.contrastive.image_projection(_masked_mean(out)), dim=-1)

    def itm_scores(self, input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, token_type_ids=None):
        """ITM logits (B, 2) of joint passes of row-aligned texts and images."""
        out = self.vlp(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
        )
        return self.itm_head(out.pooler_output)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        pixel_values=None,
        pixel_mask=None,
        itm_exclude=None,
        return_loss=None,
        return_dict=None,
        **kwargs,
    ):
        if input_ids is None or pixel_values is None:
            raise ValueError("VLPForImageTextRetrieval needs input_ids and pixel_values")
        text = self.text_features(input_ids, attention_mask, token_type_ids)
        image = self.image_features(pixel_values, pixel_mask)
        scale = self.contrastive.logit_scale()
        logits_per_text = similarity_matrix(text, image, scale)
        losses = {}
        if return_loss:
            if text.shape[0] != image.shape[0]:
                raise ValueError(
                    f"return_loss needs matched pairs; got {text.shape[0]} texts and {image.shape[0]} images"
                )
            summed, count = contrastive_loss(text, image, scale)
            itc = summed / count.clamp(min=1)
            itm_logits, itm_labels = self.matching_logits(
                input_ids,
                attention_mask,
                token_type_ids,
                pixel_values,
                pixel_mask,
                logits_per_text.detach(),
                itm_exclude,
            )
            itm = F.cross_entropy(itm_logits.float(), itm_labels)
            losses = dict(loss=itc + itm, itc_loss=itc, itm_loss=itm, itm_logits=itm_logits, itm_labels=itm_labels)
        return VLPImageTextRetrievalOutput(
            logits_per_image=logits_per_text.T,
            logits_per_text=logits_per_text,
            text_embeds=text,
            image_embeds=image,
            **losses,
        )

    def matching_logits(
        self, input_ids, attention_mask, token_type_ids, pixel_values, pixel_mask, logits_per_text, itm_exclude=None
    ):
        """ITM logits and labels of the matched pairs and the in-batch negatives drawn from the ITC similarity."""
        batch = input_ids.shape[0]
        exclude = _same_rows(input_ids, attention_mask) | torch.eye(batch, dtype=torch.bool, device=input_ids.device)
        if itm_exclude is not None:
            if tuple(itm_exclude.shape) != (batch, batch):
                raise ValueError(f"itm_exclude has shape {tuple(itm_exclude.shape)}; expected {(batch, batch)}")
            exclude = exclude | itm_exclude.bool()
        hard = self.config.retrieval_negatives == "hard"
        # exclude[i, j]: text j is no negative for image i. Rows of logits_per_text are texts, columns images.
        image_rows, negative_texts = draw_negatives(logits_per_text.T, exclude, hard)
        text_rows, negative_images = draw_negatives(logits_per_text, exclude.T, hard)
        text_index = torch.cat([torch.arange(batch, device=input_ids.device), negative_texts, text_rows])
        image_index = torch.cat([torch.arange(batch, device=input_ids.device), image_rows, negative_images])
        logits = self.itm_scores(
            input_ids[text_index],
            attention_mask[text_index] if attention_mask is not None else None,
            pixel_values[image_index],
            pixel_mask[image_index] if pixel_mask is not None else None,
            token_type_ids[text_index] if token_type_ids is not None else None,
        )
        labels = torch.zeros(text_index.shape[0], dtype=torch.long, device=input_ids.device)
        labels[:batch] = 1
        return logits, labels

    @torch.no_grad()
    def similarity(self, input_ids, pixel_values, attention_mask=None, pixel_mask=None, top_k=None, batch_size=64):
        """Score matrices (I, T) of a gallery of I images and T texts (`VLPRetrievalScores`).

        ITC scores every pair; then, per image, its `top_k` texts (default `config.retrieval_top_k`) and, per text, its
        `top_k` images are re-scored by the ITM head (logit of "match" minus "no match"), the rest ranked below them
        in ITC order. Cost: I + T unimodal passes and (I + T) x top_k joint passes, in chunks of `batch_size`.
        """
        top_k = self.config.retrieval_top_k if top_k is None else int(top_k)
        if top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k}")
        texts = torch.cat(
            [
                self.text_features(
                    input_ids[i : i + batch_size],
                    attention_mask[i : i + batch_size] if attention_mask is not None else None,
                )
                for i in range(0, input_ids.shape[0], batch_size)
            ]
        )
        images = torch.cat(
            [
                self.image_features(
                    pixel_values[i : i + batch_size], pixel_mask[i : i + batch_size] if pixel_mask is not None else None
                )
                for i in range(0, pixel_values.shape[0], batch_size)
            ]
        )
        itc = similarity_matrix(images, texts, self.contrastive.logit_scale())  # (I, T)

        def rerank(scores, query_is_image):
            """scores (Q, C): ITM for each query's top_k candidates, the others shifted below them."""
            k = min(top_k, scores.shape[1])
            candidates = scores.topk(k, dim=1).indices  # (Q, k)
            queries = torch.arange(scores.shape[0], device=scores.device)[:, None].expand(-1, k).reshape(-1)
            flat = candidates.reshape(-1)
            image_index, text_index = (queries, flat) if query_is_image else (flat, queries)
            itm = []
            for start in range(0, flat.shape[0], batch_size):
                t, i = text_index[start : start + batch_size], image_index[start : start + batch_size]
                logits = self.itm_scores(
                    input_ids[t],
                    attention_mask[t] if attention_mask is not None else None,
                    pixel_values[i],
                    pixel_mask[i] if pixel_mask is not None else None,
                ).float()
                itm.append(logits[:, 1] - logits[:, 0])
            itm = torch.cat(itm).view(-1, k)
            floor = itm.min(dim=1, keepdim=True).values - 1.0
            ranked = scores - scores.max(dim=1, keepdim=True).values + floor  # every other candidate below the top k
            return ranked.scatter(1, candidates, itm)

        return VLPRetrievalScores(itc=itc, i2t=rerank(itc, True), t2i=rerank(itc.T, False).T)


# ---------------------------------------------------------------------------------------------------------------------
# Captioning
# ---------------------------------------------------------------------------------------------------------------------


class VLPForConditionalGeneration(VLPPreTrainedModel, GenerationMixin):
    """Captioning with the same encoder under a prefix-LM attention pattern (`prefix_lm_mask`): the image and the
    first `prefix_length` text tokens (default `config.caption_prefix_length`, the [CLS] that starts a caption) are
    visible to every position, the caption tokens are causal among themselves. The head is the MLM head (transform
    and decoder tied to the word embeddings, loaded from a pretraining checkpoint under its name `mlm_head`); the
    logits at text position t predict token t + 1 (`labels` aligned with `input_ids`, shifted inside).

    `generate(pixel_values=...)` works with greedy and beam search. There is no key/value cache: every step re-encodes
    the image and the text so far (generation_config.use_cache is False), so n new tokens cost n full passes of
    (text + 1 + patches) positions instead of one pass plus n single-token steps. Prompts in one batch must have one
    length (the default prompt is [CLS] alone, from `bos_token_id`).
    """

    _tied_weights_keys = {"mlm_head.decoder.weight": "vlp.embeddings.text.word_embeddings.weight"}
    accepts_loss_kwargs = False

    def __init__(self, config: VLPConfig):
        super().__init__(config)
        self.vlp = VLPModel(config)
        self.mlm_head = VLPMLMHead(config)
        self.post_init()
        if self.generation_config is not None:
            self.generation_config.use_cache = False

    def get_output_embeddings(self):
        return self.mlm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.mlm_head.decoder = new_embeddings

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        pixel_values=None,
        pixel_mask=None,
        labels=None,
        prefix_length=None,
        output_attentions=None,
        attention_layers=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        if input_ids is None:
            raise ValueError("VLPForConditionalGeneration needs input_ids (at least the [CLS] that starts a caption)")
        prefix_length = self.config.caption_prefix_length if prefix_length is None else int(prefix_length)
        text_length = input_ids.shape[1]
        length = text_length + _image_sequence_length(pixel_values, self.config.patch_size)
        pattern = prefix_lm_mask(text_length, length, prefix_length, input_ids.device)
        outputs = self.vlp(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            output_attentions=output_attentions,
            attention_layers=attention_layers,
            output_hidden_states=output_hidden_states,
            self_attention_mask=pattern.expand(input_ids.shape[0], -1, -1),
        )
        logits = self.mlm_head(outputs.last_hidden_state[:, :text_length])
        loss = next_token_loss(logits, labels) if labels is not None else None
        return VLPCaptioningOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def prepare_inputs_for_generation(
        self, input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, prefix_length=None, **kwargs
    ):
        """Every step gets the whole text so far and the image (no cache); token types are left at their default."""
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            "prefix_length": prefix_length,
        }


VLPForQuestionAnswering.register_for_auto_class("AutoModelForVisualQuestionAnswering")
VLPForImageTextRetrieval.register_for_auto_class("AutoModelForZeroShotImageClassification")
VLPForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
