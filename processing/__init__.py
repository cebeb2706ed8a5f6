"""Everything between raw data and model inputs: image processor, tokenizer, processor, the synthetic shapes
world, pretraining datasets and collators.

`EXPORTED_FILES` are copied verbatim next to a saved processor; they import only transformers (and torch, numpy,
PIL) and each other, so `AutoProcessor.from_pretrained(folder, trust_remote_code=True)` works without VLP.

Importing this package registers both classes with `AutoImageProcessor` and `AutoProcessor`, so that
`VLPProcessor.from_pretrained(folder)` and `AutoProcessor.from_pretrained(folder)` load from the installed code
without `trust_remote_code`. transformers keys those registrations by a model config class: `VLPConfig`, from its
own module (which imports only transformers), is the one import of `vlp.modeling_vlp` in this package.
"""

import inspect

from transformers import AutoImageProcessor, AutoProcessor

from vlp.modeling_vlp.configuration_vlp import VLPConfig

from .image_processing_vlp import VLPImageProcessor
from .processing_vlp import VLPProcessor


def _register_image_processor():
    """`AutoImageProcessor.register` takes `image_processor_classes` (by backend) since transformers 5.x; older
    5.x releases take `slow_image_processor_class`. VLPImageProcessor is a PIL/NumPy (\"pil\" backend) class."""
    if "image_processor_classes" in inspect.signature(AutoImageProcessor.register).parameters:
        AutoImageProcessor.register(VLPConfig, image_processor_classes={"pil": VLPImageProcessor}, exist_ok=True)
    else:  # pragma: no cover - transformers releases before the backend mapping
        AutoImageProcessor.register(VLPConfig, slow_image_processor_class=VLPImageProcessor, exist_ok=True)


_register_image_processor()
AutoProcessor.register(VLPConfig, VLPProcessor, exist_ok=True)

EXPORTED_FILES = ("image_processing_vlp.py", "processing_vlp.py")

__all__ = ["EXPORTED_FILES", "VLPImageProcessor", "VLPProcessor"]
