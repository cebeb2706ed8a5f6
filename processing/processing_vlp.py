"""VLPProcessor: one call turns images and captions into every input a VLP model takes.

Hub-exported: copied verbatim next to a saved processor (with image_processing_vlp.py) and loaded with
`AutoProcessor.from_pretrained(folder, trust_remote_code=True)`, so it imports only transformers and its
sibling file.
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing_vlp import VLPImageProcessor


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

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """Load the sub-processors for `from_pretrained` by their own classes, never through the auto classes.

        transformers would load the image processor through `AutoImageProcessor`, which follows the saved
        `auto_map` and asks for `trust_remote_code` even when this class comes from the installed package; and
        `AutoTokenizer` first loads the folder's model config.json, which in a full checkpoint is custom code
        too. The sibling `VLPImageProcessor` (installed, or the copied image_processing_vlp.py) and the tokenizer
        class named in tokenizer_config.json need neither.
        """
        from transformers import AutoTokenizer
        from transformers.models.auto.tokenization_auto import get_tokenizer_config, tokenizer_class_from_name

        plain_kwargs = {key: value for key, value in kwargs.items() if key != "trust_remote_code"}
        image_processor = VLPImageProcessor.from_pretrained(pretrained_model_name_or_path, **plain_kwargs)
        hub_keys = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
        tokenizer_config = get_tokenizer_config(
            pretrained_model_name_or_path, **{key: kwargs[key] for key in hub_keys if key in kwargs}
        )
        class_name = tokenizer_config.get("tokenizer_class")
        tokenizer_class = tokenizer_class_from_name(class_name) if class_name else None
        if tokenizer_class is not None:
            tokenizer = tokenizer_class.from_pretrained(pretrained_model_name_or_path, **plain_kwargs)
        else:
            tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return [image_processor, tokenizer]

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
