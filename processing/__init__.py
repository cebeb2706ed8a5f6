"""Everything between raw data and model inputs: image processor, tokenizer, processor, the synthetic shapes
world, pretraining datasets and collators.

`EXPORTED_FILES` are copied verbatim next to a saved processor; they import only transformers (and torch, numpy,
PIL) and each other, so `AutoProcessor.from_pretrained(folder, trust_remote_code=True)` works without VLP.
"""

from .image_processing_vlp import VLPImageProcessor
from .processing_vlp import VLPProcessor

EXPORTED_FILES = ("image_processing_vlp.py", "processing_vlp.py")

__all__ = ["EXPORTED_FILES", "VLPImageProcessor", "VLPProcessor"]
