"""VLPProcessor: one call turns images and captions into every input a VLP model takes.

Hub-exported: copied verbatim next to a saved processor (with image_processing_vlp.py) and loaded with
`AutoProcessor.from_pretrained(folder, trust_remote_code=True)`, so it imports only transformers and its
sibling file.
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers import BatchFeature, ProcessorMixin


class VLPProcessor(ProcessorMixin):
    r"""
    Joins a [`VLPImageProcessor`] and a BERT-style WordPiece tokenizer.

    `processor(images=..., text=...)` returns one `BatchFeature` with `input_ids`, `attention_mask`,
    `token_type_ids` (when the tokenizer makes them), `pixel_values` and `pixel_mask`. Keyword arguments that
    the image processor's `preprocess` accepts go to it; all others go to the tokenizer.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Tokenize `text` and process `images` (either may be left out). `max_length` truncates unless
        `truncation=False`."""
        if images is None and text is None:
            raise ValueError("VLPProcessor needs images, text or both; got neither")
        image_keys = set(inspect.signature(self.image_processor.preprocess).parameters) - {
            "images",
            "return_tensors",
            "kwargs",
        }
        image_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in image_keys}
        data: dict[str, Any] = {}
        if text is not None:
            if truncation is None:
                truncation = max_length is not None
            data.update(
                self.tokenizer(
                    text,
                    padding=padding,
                    truncation=truncation,
                    max_length=max_length,
                    return_tensors=return_tensors,
                    **kwargs,
                )
            )
        elif kwargs:
            raise TypeError(f"VLPProcessor got unexpected keyword arguments without text: {sorted(kwargs)}")
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors, **image_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        """Forwards to the tokenizer's `batch_decode`."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        """Forwards to the tokenizer's `decode`."""
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        names = list(self.tokenizer.model_input_names) + list(self.image_processor.model_input_names)
        return list(dict.fromkeys(names))


VLPProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["VLPProcessor"]
