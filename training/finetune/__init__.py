"""`vlp finetune`: VQA, retrieval and captioning on `transformers.Trainer` from a pretrained VLP checkpoint, one
module per task (`vqa`, `retrieval`, `captioning`), what they share (`common`) and the command line (`cli`)."""

from .captioning import finetune_caption
from .common import FinetuneSettings
from .retrieval import finetune_retrieval
from .vqa import VQAMetrics, finetune_vqa

__all__ = ["FinetuneSettings", "VQAMetrics", "finetune_caption", "finetune_retrieval", "finetune_vqa"]
