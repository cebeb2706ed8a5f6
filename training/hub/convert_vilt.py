"""`vlp convert-vilt SRC DST`: a transformers ViLT checkpoint (ViltModel, ViltForMaskedLM, ...) as a
`VLPForPreTraining` checkpoint with the same behaviour, so pretraining can continue from published weights.

The architectures match: BERT-style text embeddings, ViT patch embeddings with an image [CLS] and a learned position
grid interpolated with align_corners=True, modality-type embeddings, pre-LayerNorm blocks, a final LayerNorm and a
tanh pooler; ViLT's separate query/key/value projections become VLP's fused one, and ViLT's MLM head (transform,
decoder tied to the word embeddings, bias) becomes VLP's. Heads that SRC lacks (ITM, MIM, ITC) start fresh. With
full images ViLT visits the patches in a random order (its patch sampling), which does not change any output at the
text positions: attention does not depend on the order of tokens whose positions are in their embeddings.

The processor: ViLT's tokenizer is kept as it is; the image processor becomes a `VLPImageProcessor` with ViLT's
mean and std at the model's square resolution (ViLT itself resizes the shorter side and keeps the aspect ratio;
VLP's model accepts either, through its interpolated position grid and `pixel_mask`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from ..cli_args import parse_command

CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "modality_type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "image_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
)

RENAMES = {
    "embeddings.text_embeddings.word_embeddings.weight": "vlp.embeddings.text.word_embeddings.weight",
    "embeddings.text_embeddings.position_embeddings.weight": "vlp.embeddings.text.position_embeddings.weight",
    "embeddings.text_embeddings.token_type_embeddings.weight": "vlp.embeddings.text.token_type_embeddings.weight",
    "embeddings.text_embeddings.LayerNorm.weight": "vlp.embeddings.text.LayerNorm.weight",
    "embeddings.text_embeddings.LayerNorm.bias": "vlp.embeddings.text.LayerNorm.bias",
    "embeddings.cls_token": "vlp.embeddings.image.cls_token",
    "embeddings.position_embeddings": "vlp.embeddings.image.position_embeddings",
    "embeddings.patch_embeddings.projection.weight": "vlp.embeddings.image.projection.weight",
    "embeddings.patch_embeddings.projection.bias": "vlp.embeddings.image.projection.bias",
    "embeddings.token_type_embeddings.weight": "vlp.embeddings.modality_embeddings.weight",
    "layernorm.weight": "vlp.layernorm.weight",
    "layernorm.bias": "vlp.layernorm.bias",
    "pooler.dense.weight": "vlp.pooler.dense.weight",
    "pooler.dense.bias": "vlp.pooler.dense.bias",
}
LAYER_RENAMES = {
    "attention.output.dense": "attention.out",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "layernorm_before": "layernorm_before",
    "layernorm_after": "layernorm_after",
}
MLM_RENAMES = {
    "mlm_score.transform.dense.weight": "mlm_head.dense.weight",
    "mlm_score.transform.dense.bias": "mlm_head.dense.bias",
    "mlm_score.transform.LayerNorm.weight": "mlm_head.LayerNorm.weight",
    "mlm_score.transform.LayerNorm.bias": "mlm_head.LayerNorm.bias",
    "mlm_score.decoder.bias": "mlm_head.bias",
}


def vlp_config_from_vilt(vilt_config):
    """A VLPConfig with ViLT's sizes; refuses settings VLP does not reproduce."""
    from ...modeling_vlp import VLPConfig

    if getattr(vilt_config, "max_image_length", -1) not in (-1, None):
        raise ValueError(
            f"ViLT max_image_length={vilt_config.max_image_length}: VLP keeps every patch; convert a "
            "checkpoint configured with max_image_length=-1 (set it in its config.json)"
        )
    values = {key: getattr(vilt_config, key) for key in CONFIG_KEYS if hasattr(vilt_config, key)}
    return VLPConfig(pad_token_id=getattr(vilt_config, "pad_token_id", None) or 0, **values)


def convert_state_dict(vilt_state, num_layers):
    """ViLT parameter names and shapes -> VLP's; returns (state dict, ViLT keys that have no VLP counterpart)."""
    state, used = {}, set()
    prefix = "vilt." if any(key.startswith("vilt.") for key in vilt_state) else ""
    for source, target in RENAMES.items():
        if prefix + source in vilt_state:
            state[target] = vilt_state[prefix + source]
            used.add(prefix + source)
    for index in range(num_layers):
        layer = f"{prefix}encoder.layer.{index}."
        for kind in ("weight", "bias"):
            parts = [f"{layer}attention.attention.{name}.{kind}" for name in ("query", "key", "value")]
            if all(part in vilt_state for part in parts):
                state[f"vlp.encoder.layer.{index}.attention.qkv.{kind}"] = torch.cat([vilt_state[p] for p in parts])
                used.update(parts)
            for source, target in LAYER_RENAMES.items():
                key = f"{layer}{source}.{kind}"
                if key in vilt_state:
                    state[f"vlp.encoder.layer.{index}.{target}.{kind}"] = vilt_state[key]
                    used.add(key)
    for source, target in MLM_RENAMES.items():
        if source in vilt_state:
            state[target] = vilt_state[source]
            used.add(source)
    tied = "mlm_score.decoder.weight"
    if tied in vilt_state:
        word = state.get("vlp.embeddings.text.word_embeddings.weight")
        if word is None or not torch.equal(vilt_state[tied], word):
            raise ValueError("ViLT's MLM decoder is not tied to its word embeddings; VLP's is: cannot convert exactly")
        used.add(tied)
    ignored = sorted(key for key in vilt_state if key not in used and not key.endswith("position_ids"))
    return state, ignored


def convert_vilt(source, destination):
    """Converts the ViLT checkpoint folder `source` into a VLP folder `destination`; returns the ViLT keys left
    behind (heads VLP does not have, such as a VQA classifier)."""
    from transformers import AutoModel, ViltConfig, ViltForMaskedLM

    from ...modeling_vlp import VLPForPreTraining
    from ...processing import VLPImageProcessor, VLPProcessor

    config = ViltConfig.from_pretrained(source)
    architectures = config.architectures or []
    loader = ViltForMaskedLM if "ViltForMaskedLM" in architectures else AutoModel
    vilt = loader.from_pretrained(source).eval()
    vlp_config = vlp_config_from_vilt(config)
    model = VLPForPreTraining(vlp_config).eval()
    state, ignored = convert_state_dict(vilt.state_dict(), vlp_config.num_hidden_layers)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"converted keys unknown to VLP: {unexpected}")
    model.tie_weights()
    os.makedirs(destination, exist_ok=True)
    model.save_pretrained(destination)
    tokenizer_files = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    if any(os.path.exists(os.path.join(source, name)) for name in tokenizer_files):
        from transformers import AutoImageProcessor, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source)
        try:
            vilt_images = AutoImageProcessor.from_pretrained(source)
            mean, std = vilt_images.image_mean, vilt_images.image_std
        except (OSError, ValueError):
            mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
        images = VLPImageProcessor(
            size={"height": vlp_config.image_size, "width": vlp_config.image_size}, image_mean=mean, image_std=std
        )
        VLPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(destination)
    return ignored


@dataclass
class ConvertArguments:
    """`vlp convert-vilt SOURCE DESTINATION`."""

    source: str = field(metadata={"help": "folder with a ViLT config.json and weights"})
    destination: str = field(metadata={"help": "output folder"})


def cli(argv):
    description = (
        "Convert a transformers ViLT checkpoint folder (e.g. a local copy of dandelin/vilt-b32-mlm) to a "
        "VLPForPreTraining one."
    )
    positional = ("source", "destination")
    args = parse_command(ConvertArguments, argv, "vlp convert-vilt", description, positional=positional)
    if not os.path.isfile(os.path.join(args.source, "config.json")):
        raise SystemExit(f"vlp convert-vilt: {args.source} has no config.json: expected a ViLT checkpoint folder")
    ignored = convert_vilt(args.source, args.destination)
    print(
        f"wrote {args.destination}"
        + (f"; ViLT weights without a VLP counterpart: {', '.join(ignored)}" if ignored else "")
    )


__all__ = ["convert_state_dict", "convert_vilt", "vlp_config_from_vilt"]
