"""VLP: a single-stream vision-language transformer and its pretraining heads.

Text tokens (BERT-style embeddings) and image patches (ViT-style embeddings) are concatenated into one sequence
and encoded by pre-LayerNorm blocks, as in ViLT. Attention runs through `scaled_dot_product_attention`; an eager
path returns attention maps from chosen layers only.

Hub-exported: this file is copied into saved checkpoints and imports only torch, transformers and its siblings.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GradientCheckpointingLayer, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from .configuration_vlp import VLPConfig
from .losses_vlp import (
    clamp_logit_scale,
    contrastive_loss,
    grouped_matching_cross_entropy,
    grouped_matching_logits,
    log_scale_bounds,
    mim_loss,
    mim_pixel_targets,
    optimal_transport_distance,
    pool_cells,
    pool_segments,
    similarity_matrix,
    wra_loss,
)

# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class VLPModelOutput(ModelOutput):
    """Encoder output. The sequence is `[text tokens][image CLS, patches]`; `text_length` tells where images start.

    `attention_mask` is the mask over the whole sequence (1 = real token or patch), `patch_grid` the (rows, columns)
    of the patch grid, `attentions` one map per chosen layer (eager path only), `relevance` (B, S) the attention
    each position receives from the query positions given as `relevance_weights`, averaged over heads and over
    `relevance_layers` (computed without gradients, beside the fused attention).
    """

    last_hidden_state: torch.FloatTensor = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    attention_mask: torch.LongTensor | None = None
    text_length: int | None = None
    patch_grid: tuple[int, int] | None = None
    relevance: torch.FloatTensor | None = None


@dataclass
class VLPForPreTrainingOutput(ModelOutput):
    """Pretraining output: the weighted total and one loss per objective (None when the objective did not run).

    `mlm_logits` holds logits at the masked positions only, in row-major order of `mlm_labels != -100`.
    `itc_similarity` (texts, images), detached: entry [t, i] is the scaled cosine of text t and image i.
    `relevance` is the encoder's relevance for `relevance_weights` (see `VLPModel`), when asked for.
    """

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    mim_loss: torch.FloatTensor | None = None
    itc_loss: torch.FloatTensor | None = None
    wra_loss: torch.FloatTensor | None = None
    gitm_loss: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    mim_predictions: torch.FloatTensor | None = None
    itc_similarity: torch.FloatTensor | None = None
    gitm_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    pooler_output: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    relevance: torch.FloatTensor | None = None
    text_length: int | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------------------------


class VLPTextEmbeddings(nn.Module):
    """BERT-style text embeddings: word + position + token type (+ optional segment), LayerNorm, dropout."""

    def __init__(self, config: VLPConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        # Grouped matching tells caption segments apart; the token-type table has only two types.
        self.segment_embeddings = (
            nn.Embedding(config.num_text_segments + 1, config.hidden_size) if config.num_text_segments else None
        )
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.max_positions = config.max_position_embeddings

    def forward(self, input_ids, token_type_ids=None, segment_ids=None):
        seq_length = input_ids.shape[1]
        if seq_length > self.max_positions:
            raise ValueError(
                f"input_ids has {seq_length} tokens; the model has max_position_embeddings={self.max_positions}"
            )
        # Positions and token types are summed at (L, D) or (B, L, D) before the (B, L, D) word embeddings; all-zero
        # token types (VLP's own inputs) add the type-0 row without a lookup.
        positions = self.position_embeddings.weight[:seq_length]
        if token_type_ids is None or not bool(token_type_ids.any()):
            embeddings = self.word_embeddings(input_ids) + (positions + self.token_type_embeddings.weight[0])
        else:
            embeddings = self.word_embeddings(input_ids) + (positions + self.token_type_embeddings(token_type_ids))
        if segment_ids is not None:
            if self.segment_embeddings is None:
                raise ValueError("segment_ids given but the model was built with num_text_segments=0")
            embeddings = embeddings + self.segment_embeddings(segment_ids)
        return self.dropout(self.LayerNorm(embeddings))


class VLPImageEmbeddings(nn.Module):
    """ViT-style patch embeddings with an image [CLS] token and a learned position grid.

    The grid is bilinearly interpolated (align_corners=True, as ViLT) to the patch grid of each image's valid area,
    so other image sizes and non-square canvases work. Masked patches (MIM) are replaced by a learned mask
    embedding before the position embeddings are added.
    """

    def __init__(self, config: VLPConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.grid_size = config.grid_size
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + self.grid_size**2, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def position_grid(self, rows, cols):
        """The patch position embeddings for a `rows` x `cols` grid, shape (rows * cols, hidden)."""
        grid = self.position_embeddings[0, 1:]
        if (rows, cols) == (self.grid_size, self.grid_size):
            return grid
        grid = grid.transpose(0, 1).reshape(1, -1, self.grid_size, self.grid_size)
        grid = F.interpolate(grid, size=(rows, cols), mode="bilinear", align_corners=True)
        return grid.flatten(2)[0].transpose(0, 1)

    def forward(self, pixel_values, pixel_mask=None, bool_masked_pos=None, type_embedding=None):
        """Returns (embeddings (B, 1+P, D), mask (B, 1+P), (rows, cols)); `type_embedding` (D) is added to every
        position."""
        cls, patches, mask, grid = self.parts(pixel_values, pixel_mask, bool_masked_pos, type_embedding)
        return self.dropout(torch.cat([cls, patches], dim=1)), mask, grid

    def parts(self, pixel_values, pixel_mask=None, bool_masked_pos=None, type_embedding=None):
        """(cls (B, 1, D), patches (B, P, D), mask (B, 1+P), (rows, cols)) before dropout, so that a caller can
        concatenate them with other parts in one copy."""
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"pixel_values of size {height}x{width} do not divide into {self.patch_size}-pixel patches"
            )
        x, rows, cols = self.project_patches(pixel_values)
        batch = x.shape[0]
        if bool_masked_pos is not None:
            x = torch.where(bool_masked_pos.reshape(batch, -1, 1).bool(), self.mask_token.to(x.dtype), x)

        # A patch is valid where its top-left pixel is (nearest-neighbour downsampling of the pixel mask).
        patch_mask = None if pixel_mask is None else pixel_mask[:, :: self.patch_size, :: self.patch_size].long()
        if patch_mask is None or bool(patch_mask.all()):
            patch_mask = torch.ones(batch, rows * cols, dtype=torch.long, device=x.device)
            positions = self.position_grid(rows, cols).unsqueeze(0)
        else:
            patch_mask, positions = self._padded_positions(patch_mask, rows, cols)
        cls = self.cls_token + self.position_embeddings[:, :1]
        if type_embedding is not None:  # added to the (1 or B, P, D) positions, not to the (B, P, D) patches
            positions, cls = positions + type_embedding, cls + type_embedding
        x = x + positions
        mask = torch.cat([torch.ones(batch, 1, dtype=patch_mask.dtype, device=x.device), patch_mask], dim=1)
        return cls.expand(batch, -1, -1), x, mask, (rows, cols)

    def project_patches(self, pixel_values):
        """The patch projection as one matrix multiply: (B, C, H, W) -> ((B, rows * cols, D), rows, cols). Equal to
        the stride-`patch_size` convolution with `projection`'s weights (its parameters and checkpoint layout are
        kept), and faster than it on CPU."""
        batch, channels, height, width = pixel_values.shape
        p = self.patch_size
        rows, cols = height // p, width // p
        weight = self.projection.weight
        patches = (
            pixel_values.to(weight.dtype)
            .reshape(batch, channels, rows, p, cols, p)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(batch, rows * cols, channels * p * p)
        )
        return F.linear(patches, weight.reshape(weight.shape[0], -1), self.projection.bias), rows, cols

    def _padded_positions(self, patch_mask, rows, cols):
        """For zero-padded images: the grid is stretched over each image's valid patches only (as ViLT).
        `patch_mask` (B, rows, cols) marks the valid patches."""
        valid_rows = patch_mask[:, :, 0].sum(dim=1).tolist()
        valid_cols = patch_mask[:, 0, :].sum(dim=1).tolist()
        positions = self.position_embeddings.new_zeros(len(valid_rows), rows, cols, self.position_embeddings.shape[-1])
        for size in set(zip(valid_rows, valid_cols)):
            h, w = size
            if h == 0 or w == 0:
                continue
            which = [i for i, s in enumerate(zip(valid_rows, valid_cols)) if s == size]
            positions[which, :h, :w] = self.position_grid(h, w).reshape(h, w, -1)
        return patch_mask.flatten(1), positions.flatten(1, 2)


# ---------------------------------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------------------------------


class VLPAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection.

    The default path calls `scaled_dot_product_attention` and builds no attention matrix; the eager path
    (`return_attention=True`) computes the softmax explicitly and returns it.
    """

    def __init__(self, config: VLPConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_dropout = config.attention_probs_dropout_prob
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def relevance(self, query, key, attn_mask, weights):
        """How much attention each key receives from the query positions that `weights` selects:
        sum_i w_i softmax(q_i K^T / sqrt(d)), averaged over heads. `weights` (B, S) gives (B, S); (B, R, S), R sets of
        query weights at once (for example the patches, or each text token alone), gives (B, R, S). Only the rows
        some set needs are computed (at most the largest number of such positions in a row), never the full map."""
        single = weights.dim() == 2
        weights = weights[:, None] if single else weights
        needed = (weights > 0).any(dim=1)  # (B, S): query positions some set uses
        rows = max(int(needed.sum(dim=1).max()), 1)
        index = needed.to(weights.dtype).topk(rows, dim=1).indices  # (B, M): the needed positions first
        chosen = weights.gather(2, index[:, None].expand(-1, weights.shape[1], -1))  # (B, R, M)
        chosen = chosen / chosen.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(chosen.dtype).tiny)
        selected = query.gather(2, index[:, None, :, None].expand(-1, query.shape[1], -1, query.shape[-1]))
        scores = selected @ key.transpose(-1, -2) / math.sqrt(self.head_dim)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
        probs = scores.float().softmax(dim=-1).mean(dim=1)  # (B, M, S), heads averaged
        relevance = chosen.float() @ probs  # (B, R, S)
        return relevance[:, 0] if single else relevance

    def forward(self, hidden_states, attn_mask=None, return_attention=False, relevance_weights=None):
        batch, length, dim = hidden_states.shape
        # Unbound at dim 2 of the (B, L, 3, H, D) view, then transposed: backward stacks the three gradients straight
        # into the projection's (B, L, 3 * H * D) layout, with no permuted copy.
        query, key, value = (
            part.transpose(1, 2)
            for part in self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim).unbind(2)
        )
        dropout = self.attention_dropout if self.training else 0.0
        probs = None
        relevance = None
        if relevance_weights is not None:
            with torch.no_grad():
                relevance = self.relevance(query, key, attn_mask, relevance_weights)
        if return_attention:
            scores = query @ key.transpose(-1, -2) / math.sqrt(self.head_dim)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
            probs = scores.softmax(dim=-1)
            context = F.dropout(probs, dropout, self.training) @ value
        else:
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout)
        context = context.transpose(1, 2).reshape(batch, length, dim)
        return self.dropout(self.out(context)), probs, relevance


class VLPLayer(GradientCheckpointingLayer):
    """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, config: VLPConfig):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = VLPAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, attn_mask=None, return_attention=False, relevance_weights=None):
        attended, probs, relevance = self.attention(
            self.layernorm_before(hidden_states), attn_mask, return_attention, relevance_weights
        )
        hidden_states = hidden_states + attended
        hidden_states = hidden_states + self.dropout(self.fc2(self.act(self.fc1(self.layernorm_after(hidden_states)))))
        return hidden_states, probs, relevance


class VLPEncoder(nn.Module):
    def __init__(self, config: VLPConfig):
        super().__init__()
        self.layer = nn.ModuleList([VLPLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states,
        attn_mask=None,
        attention_layers=(),
        output_hidden_states=False,
        relevance_weights=None,
        relevance_layers=(),
    ):
        all_hidden = (hidden_states,) if output_hidden_states else None
        maps, relevances = [], []
        for index, layer in enumerate(self.layer):
            weights = relevance_weights if index in relevance_layers else None
            hidden_states, probs, relevance = layer(hidden_states, attn_mask, index in attention_layers, weights)
            if probs is not None:
                maps.append(probs)
            if relevance is not None:
                relevances.append(relevance)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden_states,)
        relevance = torch.stack(relevances).mean(dim=0) if relevances else None
        return hidden_states, all_hidden, tuple(maps) if attention_layers else None, relevance


class VLPPooler(nn.Module):
    """tanh(W h_0): the first token's final state ([CLS] of the text, or of the image in an image-only pass)."""

    def __init__(self, config: VLPConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states):
        return torch.tanh(self.dense(hidden_states[:, 0]))


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


class VLPPreTrainedModel(PreTrainedModel):
    config_class = VLPConfig
    config: VLPConfig
    base_model_prefix = "vlp"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["VLPLayer", "VLPEmbeddings"]

    def clamp_temperature_(self):
        """Hold every learnt ITC temperature in its range by clamping the parameter in place; call after each
        optimizer step (VLP's pretraining loop and its finetuning Trainer callback do)."""
        for module in self.modules():
            if isinstance(module, VLPContrastiveHead):
                module.clamp_()

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, VLPImageEmbeddings):
            for parameter in (module.cls_token, module.mask_token, module.position_embeddings):
                nn.init.trunc_normal_(parameter, std=std)
        elif isinstance(module, VLPMLMHead):
            nn.init.zeros_(module.bias)
        elif isinstance(module, VLPContrastiveHead):
            nn.init.constant_(module.log_scale, math.log(1.0 / self.config.contrastive_temperature))


class VLPEmbeddings(nn.Module):
    """Text and image embeddings plus a modality-type embedding (0 = text, 1 = image)."""

    def __init__(self, config: VLPConfig):
        super().__init__()
        self.text = VLPTextEmbeddings(config)
        self.image = VLPImageEmbeddings(config)
        self.modality_embeddings = nn.Embedding(config.modality_type_vocab_size, config.hidden_size)


class VLPModel(VLPPreTrainedModel):
    """The single-stream encoder. Text-only, image-only and joint passes all work.

    `attention_layers` (with `output_attentions=True`) picks which layers return attention maps (default: all);
    the other layers keep the fused path. `relevance_weights` (B, S), non-negative weights over query positions
    (for example the text tokens, or [CLS] alone), asks for the attention that every position receives from them
    in `relevance_layers` (default: the last), the relevance scores of attention-guided masking and grounding.
    `self_attention_mask` (B, S, S) bool, True where query position i may attend to key position j over the whole
    sequence (for example the prefix-LM pattern of captioning), is combined with the padding mask.
    """

    def __init__(self, config: VLPConfig, add_pooling_layer=True):
        super().__init__(config)
        self.embeddings = VLPEmbeddings(config)
        self.encoder = VLPEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = VLPPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.text.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.text.word_embeddings = value

    def embed(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        segment_ids=None,
        pixel_values=None,
        pixel_mask=None,
        bool_masked_pos=None,
    ):
        """Embeds the text and/or the image; returns (embeddings, sequence mask, text length, patch grid)."""
        if input_ids is None and pixel_values is None:
            raise ValueError("VLPModel needs input_ids, pixel_values or both")
        parts, masks, text_length, grid = [], [], 0, None
        modality = self.embeddings.modality_embeddings.weight
        if input_ids is not None:
            text = self.embeddings.text(input_ids, token_type_ids, segment_ids) + modality[0]
            parts.append(text)
            masks.append(attention_mask if attention_mask is not None else torch.ones_like(input_ids))
            text_length = input_ids.shape[1]
        if pixel_values is not None:
            image = self.embeddings.image
            cls, patches, image_mask, grid = image.parts(pixel_values, pixel_mask, bool_masked_pos, modality[1])
            parts += [image.dropout(cls), image.dropout(patches)]
            masks.append(image_mask.to(masks[0].dtype) if masks else image_mask)
        embeddings = torch.cat(parts, dim=1)
        mask = torch.cat(masks, dim=1) if len(masks) > 1 else masks[0]
        return embeddings, mask, text_length, grid

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        segment_ids=None,
        pixel_values=None,
        pixel_mask=None,
        bool_masked_pos=None,
        output_attentions=None,
        attention_layers=None,
        output_hidden_states=None,
        relevance_weights=None,
        relevance_layers=(-1,),
        return_dict=None,
        self_attention_mask=None,
        **kwargs,
    ):
        embeddings, mask, text_length, grid = self.embed(
            input_ids, attention_mask, token_type_ids, segment_ids, pixel_values, pixel_mask, bool_masked_pos
        )
        output_attentions = output_attentions or bool(self.config.output_attentions)
        layers = ()
        if output_attentions:
            chosen = range(self.config.num_hidden_layers) if attention_layers is None else attention_layers
            layers = {index % self.config.num_hidden_layers for index in chosen}
        # A boolean (B, 1, 1, S) key mask, or None when nothing is padded (lets SDPA pick its fastest kernel).
        attn_mask = None if bool(mask.all()) else mask.bool()[:, None, None, :]
        if self_attention_mask is not None:
            attn_mask = self._combine_attention_mask(self_attention_mask, attn_mask, mask, relevance_weights)
        relevance_at = {index % self.config.num_hidden_layers for index in relevance_layers}
        hidden, all_hidden, maps, relevance = self.encoder(
            embeddings, attn_mask, layers, bool(output_hidden_states), relevance_weights, relevance_at
        )
        hidden = self.layernorm(hidden)
        pooled = self.pooler(hidden) if self.pooler is not None else None
        return VLPModelOutput(
            last_hidden_state=hidden,
            pooler_output=pooled,
            hidden_states=all_hidden,
            attentions=maps,
            attention_mask=mask,
            text_length=text_length,
            patch_grid=grid,
            relevance=relevance,
        )

    @staticmethod
    def _combine_attention_mask(self_attention_mask, key_mask, sequence_mask, relevance_weights):
        """A (B, S, S) query-key pattern AND the (B, 1, 1, S) key padding mask, as a (B, 1, S, S) boolean mask."""
        batch, length = sequence_mask.shape
        if tuple(self_attention_mask.shape) != (batch, length, length):
            raise ValueError(
                f"self_attention_mask has shape {tuple(self_attention_mask.shape)}; expected "
                f"(batch, sequence, sequence) = {(batch, length, length)}"
            )
        if relevance_weights is not None:
            raise ValueError("relevance_weights cannot be combined with a self_attention_mask")
        pattern = self_attention_mask.bool()[:, None]
        return pattern if key_mask is None else pattern & key_mask


class VLPMLMHead(nn.Module):
    """Transform (dense, activation, LayerNorm) then a decoder tied to the word embeddings."""

    def __init__(self, config: VLPConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states):
        return self.decoder(self.LayerNorm(self.act(self.dense(hidden_states)))) + self.bias


class VLPContrastiveHead(nn.Module):
    """Linear projections of the text and image [CLS] states and a learnable temperature (ITC).

    The logit scale 1 / temperature is learnt in log space and held in `contrastive_temperature_range`: `clamp_`
    clamps the parameter in place (call it after every optimizer step, as CLIP does; VLP's pretraining loop and
    finetuning Trainer do), so the gradient reaches it at the bounds and it can learn back.
    """

    def __init__(self, config: VLPConfig):
        super().__init__()
        self.text_projection = nn.Linear(config.hidden_size, config.contrastive_dim)
        self.image_projection = nn.Linear(config.hidden_size, config.contrastive_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.contrastive_temperature)))
        self.temperature_range = tuple(config.contrastive_temperature_range)

    def logit_scale(self):
        return clamp_logit_scale(self.log_scale, *self.temperature_range)

    @torch.no_grad()
    def clamp_(self):
        """Clamp the log logit scale parameter in place into the temperature range."""
        self.log_scale.clamp_(*log_scale_bounds(*self.temperature_range))


def _masked_mean(outputs):
    """Mean of the final states over the real tokens of each row (padding excluded)."""
    mask = outputs.attention_mask.to(outputs.last_hidden_state.dtype).unsqueeze(-1)
    return (outputs.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)


def _normalized_sum(summed, normalizer, count):
    """A summed loss divided by `normalizer` when given (global token count / world size), else by the local count."""
    denominator = normalizer if normalizer is not None else count.clamp(min=1)
    return summed / denominator


class VLPForPreTraining(VLPPreTrainedModel):
    """The encoder with its pretraining heads. Each objective runs when its inputs are given:

    - `mlm_labels` (B, T): masked language modeling; logits are computed at masked positions only.
    - `itm_labels` (B,): image-text matching (1 = the caption holds for the image) on the pooled state.
    - `wra_labels` (B,): word-region alignment (UNITER): the optimal-transport distance between the words and the
      patches of each row, pulled down for matched rows (1) and pushed up for mismatched ones (0).
    - `mim_mask` (B, P): masked image modeling; the masked patches get the mask embedding and the loss covers them
      only. Targets are the normalized pixels of each patch (`mim_target="pixel"`), or `mim_targets` (B, P, D),
      the patch states of an EMA teacher on the unmasked input (`mim_target="teacher"`).
    - `itc_input_ids` with `itc_pixel_values`: image-text contrast between text-only and image-only passes of
      matched pairs, gathered over processes (symmetric InfoNCE with a learnt, clamped temperature). Optional
      `itc_matches` (B, B) bool, texts x images: other pairs known to hold, which are then no negatives; under
      torch.distributed it may span the gathered batch, (world * B, world * B) in rank order.

    - `gitm_segment_targets` (B, M) with `segment_ids`, `gitm_cell_ids` (B, P) and `gitm_cell_mask` (B, K): grouped
      image-text matching on a canvas of K cells and a text of M caption segments. Each segment (mean of its tokens)
      is scored against each cell (mean of its patches) and a learnt 'none' score; cross-entropy over the cells and
      'none' (target -1), -100 on padding. Needs `num_text_segments` >= M in the config.

    Called without any labels, it returns the ITM logits (does the caption hold for the image?) and no loss.
    Rows whose labels are all -100 (or whose `mim_mask` is all False) take no part in that objective, so one
    forward pass can carry the rows of several objectives (for example masked captions for MLM and unmasked ones
    for ITM). `loss_normalizers` maps an objective to the denominator of its summed loss; the training loop passes
    the count summed over processes and accumulation micro-batches divided by the number of processes, so that the
    data-parallel average of the gradients is the gradient of the global mean. Without it each loss is a local
    mean. `loss_weights` scales each objective in the total (default 1).
    """

    _tied_weights_keys = {"mlm_head.decoder.weight": "vlp.embeddings.text.word_embeddings.weight"}

    def __init__(self, config: VLPConfig):
        super().__init__(config)
        self.vlp = VLPModel(config)
        self.mlm_head = VLPMLMHead(config)
        self.itm_head = nn.Linear(config.hidden_size, config.num_itm_labels)
        # MIM: a light linear decoder to per-patch pixels (MAE style) or to the teacher's patch states (iBOT style).
        pixels_per_patch = config.patch_size**2 * config.num_channels
        self.mim_head = nn.Linear(
            config.hidden_size, pixels_per_patch if config.mim_target == "pixel" else config.hidden_size
        )
        self.contrastive = VLPContrastiveHead(config)
        if config.num_text_segments:
            # Grouped matching: projections of pooled segments and cells, and a per-segment 'none' score.
            self.gitm_text_projection = nn.Linear(config.hidden_size, config.hidden_size)
            self.gitm_cell_projection = nn.Linear(config.hidden_size, config.hidden_size)
            self.gitm_none_head = nn.Linear(config.hidden_size, 1)
        self.post_init()

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
        mlm_labels=None,
        itm_labels=None,
        wra_labels=None,
        mim_mask=None,
        mim_targets=None,
        itc_input_ids=None,
        itc_attention_mask=None,
        itc_pixel_values=None,
        itc_pixel_mask=None,
        itc_matches=None,
        segment_ids=None,
        gitm_segment_targets=None,
        gitm_cell_ids=None,
        gitm_cell_mask=None,
        loss_normalizers=None,
        loss_weights=None,
        output_attentions=None,
        attention_layers=None,
        output_hidden_states=None,
        relevance_weights=None,
        relevance_layers=(-1,),
        return_dict=None,
        **kwargs,
    ):
        normalizers = loss_normalizers or {}
        weights = loss_weights or {}
        losses, extra = {}, {}
        outputs = None
        if input_ids is not None or pixel_values is not None:
            outputs = self.vlp(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                segment_ids=segment_ids,
                pixel_values=pixel_values,
                pixel_mask=pixel_mask,
                bool_masked_pos=mim_mask,
                output_attentions=output_attentions,
                attention_layers=attention_layers,
                output_hidden_states=output_hidden_states,
                relevance_weights=relevance_weights,
                relevance_layers=relevance_layers,
            )
        if mlm_labels is not None:
            extra["mlm_logits"], losses["mlm"] = self.mlm_loss(outputs, mlm_labels, normalizers.get("mlm"))
        if itm_labels is not None or (
            outputs is not None
            and not any(
                value is not None for value in (mlm_labels, wra_labels, mim_mask, itc_input_ids, gitm_segment_targets)
            )
        ):
            # Matching scores are also what a call without any labels returns (inference).
            extra["itm_logits"] = self.itm_head(outputs.pooler_output)
        if itm_labels is not None:
            summed = F.cross_entropy(extra["itm_logits"].float(), itm_labels, reduction="sum", ignore_index=-100)
            losses["itm"] = _normalized_sum(summed, normalizers.get("itm"), (itm_labels != -100).sum())
        if wra_labels is not None:
            losses["wra"] = self.wra_loss(outputs, attention_mask, wra_labels, normalizers.get("wra"))
        if mim_mask is not None:
            extra["mim_predictions"], losses["mim"] = self.mim_loss(
                outputs, pixel_values, mim_mask, mim_targets, normalizers.get("mim")
            )
        if itc_input_ids is not None:
            extra["itc_similarity"], losses["itc"] = self.itc_loss(
                itc_input_ids,
                itc_attention_mask,
                itc_pixel_values,
                itc_pixel_mask,
                normalizers.get("itc"),
                matches=itc_matches,
            )
        if gitm_segment_targets is not None:
            extra["gitm_logits"], losses["gitm"] = self.gitm_loss(
                outputs, segment_ids, gitm_segment_targets, gitm_cell_ids, gitm_cell_mask, normalizers.get("gitm")
            )
        total = sum(weights.get(name, 1.0) * value for name, value in losses.items()) if losses else None
        return VLPForPreTrainingOutput(
            loss=total,
            mlm_loss=losses.get("mlm"),
            itm_loss=losses.get("itm"),
            mim_loss=losses.get("mim"),
            itc_loss=losses.get("itc"),
            wra_loss=losses.get("wra"),
            gitm_loss=losses.get("gitm"),
            hidden_states=outputs.hidden_states if outputs is not None else None,
            attentions=outputs.attentions if outputs is not None else None,
            pooler_output=outputs.pooler_output if outputs is not None else None,
            last_hidden_state=outputs.last_hidden_state if outputs is not None else None,
            relevance=outputs.relevance if outputs is not None else None,
            text_length=outputs.text_length if outputs is not None else None,
            **extra,
        )

    def mlm_loss(self, outputs, mlm_labels, normalizer=None):
        """Logits at the masked text positions and their summed cross-entropy over the normalizer."""
        text_states = outputs.last_hidden_state[:, : mlm_labels.shape[1]]
        masked = mlm_labels != -100
        logits = self.mlm_head(text_states[masked])
        targets = mlm_labels[masked]
        summed = F.cross_entropy(logits.float(), targets, reduction="sum")
        return logits, _normalized_sum(summed, normalizer, masked.sum())

    def gitm_loss(self, outputs, segment_ids, targets, cell_ids, cell_mask, normalizer=None):
        """Grouped matching logits (B, M, K + 1), the last column 'none', and the summed cross-entropy."""
        if not self.config.num_text_segments:
            raise ValueError("grouped matching needs a model built with num_text_segments > 0")
        if segment_ids is None or cell_ids is None or cell_mask is None:
            raise ValueError("grouped matching needs segment_ids, gitm_cell_ids and gitm_cell_mask")
        segments = pool_segments(outputs.last_hidden_state[:, : outputs.text_length], segment_ids, targets.shape[1])
        cells = pool_cells(self.patch_states(outputs), cell_ids, cell_mask.shape[1])
        logits = grouped_matching_logits(
            self.gitm_text_projection(segments),
            self.gitm_cell_projection(cells),
            self.gitm_none_head(segments)[..., 0],
            cell_mask,
            scale=self.config.hidden_size**-0.5,
        )
        summed, count = grouped_matching_cross_entropy(logits, targets)
        return logits, _normalized_sum(summed, normalizer, count)

    def patch_states(self, outputs):
        """The final states of the image patches (image [CLS] excluded), (B, P, D)."""
        return outputs.last_hidden_state[:, outputs.text_length + 1 :]

    def mim_loss(self, outputs, pixel_values, mim_mask, mim_targets=None, normalizer=None):
        """Predictions at the masked patches and the loss over masked patches only."""
        mim_mask = mim_mask.bool()
        predictions = self.mim_head(self.patch_states(outputs)[mim_mask])
        if self.config.mim_target == "pixel":
            targets = mim_pixel_targets(pixel_values, self.config.patch_size, self.config.mim_norm_pix_loss)
        elif mim_targets is None:
            raise ValueError("mim_target='teacher' needs mim_targets: the teacher's patch states (B, P, D)")
        else:
            targets = mim_targets
        summed, count = mim_loss(predictions, targets, mim_mask, kind=self.config.mim_loss)
        return predictions, _normalized_sum(summed, normalizer, count)

    def wra_loss(self, outputs, attention_mask, wra_labels, normalizer=None):
        """UNITER's word-region alignment on the rows with a label (IPOT in float32, plan held constant)."""
        rows = wra_labels != -100
        text_length = outputs.text_length
        text_states = outputs.last_hidden_state[rows, 1:text_length]  # words, without [CLS]
        text_mask = (
            attention_mask[rows, 1:]
            if attention_mask is not None
            else torch.ones(text_states.shape[:2], device=text_states.device)
        )
        # Text-side [SEP] and padding carry no word: drop the last valid token of each row ([SEP]).
        lengths = text_mask.sum(dim=1, keepdim=True)
        positions = torch.arange(text_mask.shape[1], device=text_mask.device)[None]
        text_mask = text_mask * (positions < lengths - 1)
        image_mask = outputs.attention_mask[rows, text_length + 1 :]
        distance = optimal_transport_distance(
            text_states,
            self.patch_states(outputs)[rows],
            text_mask,
            image_mask,
            beta=self.config.wra_weight_beta,
            iterations=self.config.wra_iterations,
        )
        summed, count = wra_loss(distance, wra_labels[rows])
        return _normalized_sum(summed, normalizer, count)

    def contrastive_features(self, input_ids=None, attention_mask=None, pixel_values=None, pixel_mask=None):
        """L2-normalized projections of the text-only and image-only passes, each mean-pooled over its valid
        tokens: trained from scratch, the [CLS] states start nearly identical across samples and the contrastive
        loss stalls at log(batch size); the mean keeps each sample's content from the first step."""
        text = image = None
        if input_ids is not None:
            out = self.vlp(input_ids=input_ids, attention_mask=attention_mask)
            text = F.normalize(self.contrastive.text_projection(_masked_mean(out)), dim=-1)
        if pixel_values is not None:
            out = self.vlp(pixel_values=pixel_values, pixel_mask=pixel_mask)
            image = F.normalize(self.contrastive.image_projection(_masked_mean(out)), dim=-1)
        return text, image

    def itc_loss(self, input_ids, attention_mask, pixel_values, pixel_mask=None, normalizer=None, matches=None):
        """The local texts x images similarity (detached, for hard-negative sampling) and the contrastive loss."""
        if pixel_values is None:
            raise ValueError("itc_input_ids needs itc_pixel_values: the images of the same matched pairs")
        text, image = self.contrastive_features(input_ids, attention_mask, pixel_values, pixel_mask)
        scale = self.contrastive.logit_scale()
        summed, count = contrastive_loss(text, image, scale, matches=matches)
        return similarity_matrix(text, image, scale).detach(), _normalized_sum(summed, normalizer, count)


VLPModel.register_for_auto_class("AutoModel")
VLPForPreTraining.register_for_auto_class("AutoModelForPreTraining")

# The task models (VQA, retrieval, captioning) build on the classes above and live in modeling_vlp_tasks.py. This
# import makes `save_pretrained` copy that file into every checkpoint (it copies a model file's relative imports), so
# the task entries of the saved auto_map load from any VLP checkpoint. When the task file is imported first, it
# imports this one, whose classes are all defined by then; nothing from it is needed here.
try:
    from .modeling_vlp_tasks import VLPForQuestionAnswering  # noqa: E402, F401
except ImportError:
    import sys

    if f"{__package__}.modeling_vlp_tasks" not in sys.modules:  # a real failure, not the task file importing this one
        raise
