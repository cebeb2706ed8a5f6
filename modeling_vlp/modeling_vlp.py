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
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .configuration_vlp import VLPConfig


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class VLPModelOutput(ModelOutput):
    """Encoder output. The sequence is `[text tokens][image CLS, patches]`; `text_length` tells where images start.

    `attention_mask` is the mask over the whole sequence (1 = real token or patch), `patch_grid` the (rows, columns)
    of the patch grid, `attentions` one map per chosen layer (eager path only).
    """

    last_hidden_state: torch.FloatTensor = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    attention_mask: torch.LongTensor | None = None
    text_length: int | None = None
    patch_grid: tuple[int, int] | None = None


@dataclass
class VLPForPreTrainingOutput(ModelOutput):
    """Pretraining output: the weighted total and one loss per objective (None when the objective did not run).

    `mlm_logits` holds logits at the masked positions only, in row-major order of `mlm_labels != -100`.
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
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    pooler_output: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


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
        embeddings = self.word_embeddings(input_ids) + self.position_embeddings.weight[:seq_length]
        if token_type_ids is None:
            embeddings = embeddings + self.token_type_embeddings.weight[0]
        else:
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
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

    def forward(self, pixel_values, pixel_mask=None, bool_masked_pos=None):
        """Returns (embeddings (B, 1+P, D), mask (B, 1+P), (rows, cols))."""
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"pixel_values of size {height}x{width} do not divide into {self.patch_size}-pixel patches"
            )
        x = self.projection(pixel_values.to(self.projection.weight.dtype))
        batch, dim, rows, cols = x.shape
        x = x.flatten(2).transpose(1, 2)
        if bool_masked_pos is not None:
            x = torch.where(bool_masked_pos.reshape(batch, -1, 1).bool(), self.mask_token.to(x.dtype), x)

        if pixel_mask is None or bool(pixel_mask.all()):
            patch_mask = torch.ones(batch, rows * cols, dtype=torch.long, device=x.device)
            positions = self.position_grid(rows, cols).unsqueeze(0)
        else:
            patch_mask, positions = self._padded_positions(pixel_mask, rows, cols)
        x = x + positions
        cls = (self.cls_token + self.position_embeddings[:, :1]).expand(batch, -1, -1)
        embeddings = self.dropout(torch.cat([cls, x], dim=1))
        mask = torch.cat([torch.ones(batch, 1, dtype=patch_mask.dtype, device=x.device), patch_mask], dim=1)
        return embeddings, mask, (rows, cols)

    def _padded_positions(self, pixel_mask, rows, cols):
        """For zero-padded images: the grid is stretched over each image's valid patches only (as ViLT)."""
        patch_mask = F.interpolate(pixel_mask[:, None].float(), size=(rows, cols)).long()[:, 0]
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

    def forward(self, hidden_states, attn_mask=None, return_attention=False):
        batch, length, dim = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        dropout = self.attention_dropout if self.training else 0.0
        probs = None
        if return_attention:
            scores = query @ key.transpose(-1, -2) / math.sqrt(self.head_dim)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
            probs = scores.softmax(dim=-1)
            context = F.dropout(probs, dropout, self.training) @ value
        else:
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout)
        context = context.transpose(1, 2).reshape(batch, length, dim)
        return self.dropout(self.out(context)), probs


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

    def forward(self, hidden_states, attn_mask=None, return_attention=False):
        attended, probs = self.attention(self.layernorm_before(hidden_states), attn_mask, return_attention)
        hidden_states = hidden_states + attended
        hidden_states = hidden_states + self.dropout(self.fc2(self.act(self.fc1(self.layernorm_after(hidden_states)))))
        return hidden_states, probs


class VLPEncoder(nn.Module):
    def __init__(self, config: VLPConfig):
        super().__init__()
        self.layer = nn.ModuleList([VLPLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, hidden_states, attn_mask=None, attention_layers=(), output_hidden_states=False):
        all_hidden = (hidden_states,) if output_hidden_states else None
        maps = []
        for index, layer in enumerate(self.layer):
            hidden_states, probs = layer(hidden_states, attn_mask, index in attention_layers)
            if probs is not None:
                maps.append(probs)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden_states,)
        return hidden_states, all_hidden, tuple(maps) if attention_layers else None


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
        elif isinstance(module, VLPGroupedMatchingHead):
            nn.init.zeros_(module.none_score)


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
    the other layers keep the fused path.
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

    def embed(self, input_ids=None, attention_mask=None, token_type_ids=None, segment_ids=None,
              pixel_values=None, pixel_mask=None, bool_masked_pos=None):
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
            image, image_mask, grid = self.embeddings.image(pixel_values, pixel_mask, bool_masked_pos)
            parts.append(image + modality[1])
            masks.append(image_mask.to(masks[0].dtype) if masks else image_mask)
        embeddings = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
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
        return_dict=None,
        **kwargs,
    ):
        embeddings, mask, text_length, grid = self.embed(
            input_ids, attention_mask, token_type_ids, segment_ids, pixel_values, pixel_mask, bool_masked_pos
        )
        output_attentions = output_attentions or self.config._attn_implementation == "eager" and bool(
            self.config.output_attentions
        )
        layers = ()
        if output_attentions:
            chosen = range(self.config.num_hidden_layers) if attention_layers is None else attention_layers
            layers = {index % self.config.num_hidden_layers for index in chosen}
        # A boolean (B, 1, 1, S) key mask, or None when nothing is padded (lets SDPA pick its fastest kernel).
        attn_mask = None if bool(mask.all()) else mask.bool()[:, None, None, :]
        hidden, all_hidden, maps = self.encoder(embeddings, attn_mask, layers, bool(output_hidden_states))
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
        )


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
    """Linear projections of the text and image [CLS] states and a learnable temperature (ITC)."""

    def __init__(self, config: VLPConfig):
        super().__init__()
        self.text_projection = nn.Linear(config.hidden_size, config.contrastive_dim)
        self.image_projection = nn.Linear(config.hidden_size, config.contrastive_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.contrastive_temperature)))


class VLPGroupedMatchingHead(nn.Module):
    """Scores caption segments against image cells, plus a learned 'none' score (grouped image-text matching)."""

    def __init__(self, config: VLPConfig):
        super().__init__()
        self.segment_projection = nn.Linear(config.hidden_size, config.hidden_size)
        self.cell_projection = nn.Linear(config.hidden_size, config.hidden_size)
        self.none_score = nn.Parameter(torch.zeros(1))


def _normalized_sum(summed, normalizer, count):
    """A summed loss divided by `normalizer` when given (global token count / world size), else by the local count."""
    denominator = normalizer if normalizer is not None else count.clamp(min=1)
    return summed / denominator


class VLPForPreTraining(VLPPreTrainedModel):
    """The encoder with its pretraining heads. Each objective runs when its labels are given:

    - `mlm_labels` (B, T): masked language modeling; logits are computed at masked positions only.
    - `itm_labels` (B,): image-text matching (1 = the caption holds for the image) on the pooled state.

    Rows whose labels are all -100 take no part in that objective, so one forward pass can carry the rows of
    several objectives (for example masked captions for MLM and unmasked ones for ITM, as separate rows).

    `loss_normalizers` maps an objective to the denominator of its summed loss. The training loop passes the
    count summed over processes and accumulation micro-batches divided by the number of processes, so that the
    data-parallel average of the gradients is the gradient of the global mean. Without it each loss is a local mean.
    `loss_weights` scales each objective in the total (default 1).
    """

    _tied_weights_keys = {"mlm_head.decoder.weight": "vlp.embeddings.text.word_embeddings.weight"}

    def __init__(self, config: VLPConfig):
        super().__init__(config)
        self.vlp = VLPModel(config)
        self.mlm_head = VLPMLMHead(config)
        self.itm_head = nn.Linear(config.hidden_size, config.num_itm_labels)
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
        loss_normalizers=None,
        loss_weights=None,
        output_attentions=None,
        attention_layers=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        normalizers = loss_normalizers or {}
        weights = loss_weights or {}
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
        losses = {}
        mlm_logits = itm_logits = None
        if mlm_labels is not None:
            mlm_logits, losses["mlm"] = self.mlm_loss(outputs, mlm_labels, normalizers.get("mlm"))
        if itm_labels is not None:
            itm_logits = self.itm_head(outputs.pooler_output)
            summed = F.cross_entropy(itm_logits.float(), itm_labels, reduction="sum", ignore_index=-100)
            losses["itm"] = _normalized_sum(summed, normalizers.get("itm"), (itm_labels != -100).sum())
        total = sum(weights.get(name, 1.0) * value for name, value in losses.items()) if losses else None
        return VLPForPreTrainingOutput(
            loss=total,
            mlm_loss=losses.get("mlm"),
            itm_loss=losses.get("itm"),
            mlm_logits=mlm_logits,
            itm_logits=itm_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            pooler_output=outputs.pooler_output,
            last_hidden_state=outputs.last_hidden_state,
        )

    def mlm_loss(self, outputs, mlm_labels, normalizer=None):
        """Logits at the masked text positions and their summed cross-entropy over the normalizer."""
        text_states = outputs.last_hidden_state[:, : mlm_labels.shape[1]]
        masked = mlm_labels != -100
        logits = self.mlm_head(text_states[masked])
        targets = mlm_labels[masked]
        summed = F.cross_entropy(logits.float(), targets, reduction="sum")
        return logits, _normalized_sum(summed, normalizer, masked.sum())


VLPModel.register_for_auto_class("AutoModel")
VLPForPreTraining.register_for_auto_class("AutoModelForPreTraining")
