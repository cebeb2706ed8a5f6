"""VLPConfig: the configuration of a single-stream vision-language transformer (ViLT/UNITER family).

Hub-exported: this file is copied into saved checkpoints and must import only transformers and its siblings.
"""

from transformers import PretrainedConfig

# Every class a saved checkpoint can be loaded as with `trust_remote_code=True`.
VLP_AUTO_MAP = {
    "AutoConfig": "configuration_vlp.VLPConfig",
    "AutoModel": "modeling_vlp.VLPModel",
    "AutoModelForPreTraining": "modeling_vlp.VLPForPreTraining",
    "AutoModelForVisualQuestionAnswering": "modeling_vlp_tasks.VLPForQuestionAnswering",
    "AutoModelForImageTextToText": "modeling_vlp_tasks.VLPForConditionalGeneration",
    # transformers has no image-text retrieval auto class; the contrastive image-text models (CLIP, SigLIP) sit here.
    "AutoModelForZeroShotImageClassification": "modeling_vlp_tasks.VLPForImageTextRetrieval",
}


def _check_range(name, value, low=None, high=None, low_open=False, integer=False):
    """Raise a ValueError naming `name`, its value and the allowed range when the value is outside it."""
    bad_type = integer and (not isinstance(value, int) or isinstance(value, bool))
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if bad_type or too_low or too_high:
        left = "(" if low_open else "["
        allowed = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        kind = "an integer in " if integer else ""
        raise ValueError(f"VLPConfig.{name}={value!r} is out of range: expected {kind}{allowed}")


class VLPConfig(PretrainedConfig):
    """Sizes of the transformer, its embeddings and its pretraining heads.

    Text tokens come first in the sequence, then an image [CLS] token and the image patches, as in ViLT.
    `image_size` is the size of the learned position grid; other sizes and non-square canvases interpolate it.

    Task models: VQA's answer vocabulary is the standard `id2label` / `label2id` (`num_labels` its size).
    `retrieval_top_k` is how many candidates per query the ITM head re-ranks, `retrieval_negatives` how the
    retrieval ITM loss draws in-batch negatives ("hard": ∝ softmax of the ITC similarity; "random": uniformly),
    `caption_prefix_length` how many leading text tokens captioning shows to every position (1: the [CLS]).
    """

    model_type = "vlp"

    def __init__(
        self,
        vocab_size=1000,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=64,
        type_vocab_size=2,
        modality_type_vocab_size=2,
        num_text_segments=0,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        image_size=64,
        patch_size=8,
        num_channels=3,
        qkv_bias=True,
        pad_token_id=0,
        tie_word_embeddings=True,
        num_itm_labels=2,
        mim_target="pixel",
        mim_norm_pix_loss=True,
        mim_loss="l2",
        contrastive_dim=128,
        contrastive_temperature=0.07,
        contrastive_temperature_range=(0.01, 0.5),
        wra_weight_beta=0.5,
        wra_iterations=50,
        gitm_max_cells=9,
        retrieval_top_k=16,
        retrieval_negatives="hard",
        caption_prefix_length=1,
        **kwargs,
    ):
        kwargs.setdefault("auto_map", dict(VLP_AUTO_MAP))
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.modality_type_vocab_size = modality_type_vocab_size
        self.num_text_segments = num_text_segments
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.qkv_bias = qkv_bias
        self.num_itm_labels = num_itm_labels
        self.mim_target = mim_target
        self.mim_norm_pix_loss = mim_norm_pix_loss
        self.mim_loss = mim_loss
        self.contrastive_dim = contrastive_dim
        self.contrastive_temperature = contrastive_temperature
        self.contrastive_temperature_range = tuple(contrastive_temperature_range)
        self.wra_weight_beta = wra_weight_beta
        self.wra_iterations = wra_iterations
        self.gitm_max_cells = gitm_max_cells
        self.retrieval_top_k = retrieval_top_k
        self.retrieval_negatives = retrieval_negatives
        self.caption_prefix_length = caption_prefix_length
        self.validate()

    def validate(self):
        """Refuse sizes the model cannot be built with, naming the key and the allowed range."""
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "image_size",
            "patch_size",
            "num_channels",
        ):
            _check_range(name, getattr(self, name), low=1, integer=True)
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            _check_range(name, getattr(self, name), low=0.0, high=1.0)
        _check_range("num_text_segments", self.num_text_segments, low=0, integer=True)
        _check_range("retrieval_top_k", self.retrieval_top_k, low=1, integer=True)
        _check_range("caption_prefix_length", self.caption_prefix_length, low=0, integer=True)
        if self.retrieval_negatives not in ("hard", "random"):
            raise ValueError(f"VLPConfig.retrieval_negatives={self.retrieval_negatives!r}: expected 'hard' or 'random'")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"VLPConfig.hidden_size={self.hidden_size} must be a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"VLPConfig.image_size={self.image_size} must be a multiple of patch_size={self.patch_size}"
            )
        if self.mim_target not in ("pixel", "teacher"):
            raise ValueError(f"VLPConfig.mim_target={self.mim_target!r}: expected 'pixel' or 'teacher'")
        if self.mim_loss not in ("smooth_l1", "l2", "cosine"):
            raise ValueError(f"VLPConfig.mim_loss={self.mim_loss!r}: expected 'smooth_l1', 'l2' or 'cosine'")
        low, high = self.contrastive_temperature_range
        if not 0 < low <= self.contrastive_temperature <= high:
            raise ValueError(
                f"VLPConfig.contrastive_temperature={self.contrastive_temperature} must lie in "
                f"contrastive_temperature_range=({low}, {high}) with a positive lower end"
            )

    @property
    def grid_size(self):
        """Patches per side of the learned position grid."""
        return self.image_size // self.patch_size
