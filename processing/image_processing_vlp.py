"""Image processor for VLP: any common image input -> normalized RGB `pixel_values` plus a `pixel_mask`.

Hub-exported: this file is copied verbatim next to a saved processor and loaded with
`trust_remote_code=True`, so it imports only the standard library, numpy, PIL, torch and transformers.

Conversion rules (every input ends up as RGB on the 8-bit 0-255 scale before `rescale`):

- PIL modes `1`, `L`, `RGB`, `CMYK`, `YCbCr`, `LAB`, `HSV` are converted to RGB by PIL.
- Modes with alpha (`LA`, `RGBA`, `RGBa`, `PA`, and `P` with a `transparency` entry) are alpha-composited
  over `background_color` (white by default), so transparent pixels become the background, not black.
- 16-bit modes (`I;16`, `I;16B`, `I;16L`) and uint16 arrays are scaled by 255/65535 without an 8-bit round trip;
  mode `I` (32-bit integer) is read as 16-bit data (clipped to 0-65535), which is what 16-bit PNG decoders produce.
- Arrays and tensors: (H, W), (H, W, C) or (C, H, W) with C in 1-4 (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA).
  uint8 and other integer arrays must lie in 0-255; float arrays (and PIL mode `F`) must lie in [0, 1].
  numpy arrays are read channels-last when ambiguous, torch tensors channels-first; `input_data_format`
  ("channels_first" / "channels_last") overrides the guess.

Then: resize to `size` (skipped when `do_resize=False` or `size=None`, which keeps full-resolution canvases),
rescale by `rescale_factor`, normalize with `image_mean` / `image_std`, and pad a batch of different sizes to
its largest height and width (bottom/right, value 0). `pixel_mask` is always returned: 1 for real pixels,
0 for padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
from transformers import BaseImageProcessor, BatchFeature, ImageProcessingMixin, ImagesKwargs

try:  # torch is optional for this file: only needed to accept tensor inputs.
    import torch
except ImportError:  # pragma: no cover - torch is a VLP requirement
    torch = None


DEFAULT_SIZE = {"height": 64, "width": 64}


class _Default:
    """Marks "argument not given" for `size`, where an explicit None means "keep the original size"."""

    def __repr__(self) -> str:
        return "<default>"


_UNSET = _Default()

_RESAMPLE_BY_NAME = {
    "nearest": PIL.Image.Resampling.NEAREST,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "box": PIL.Image.Resampling.BOX,
    "hamming": PIL.Image.Resampling.HAMMING,
}
_PIL_MODES_TO_RGB = {"1", "L", "RGB", "CMYK", "YCbCr", "LAB", "HSV"}
_PIL_MODES_WITH_ALPHA = {"LA", "RGBA", "RGBa", "PA"}
_PIL_16BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
_FLOAT_TOLERANCE = 1e-3


class VLPImageProcessorKwargs(ImagesKwargs, total=False):
    """Keyword arguments accepted on top of transformers' `ImagesKwargs` (used by `from_pretrained` overrides)."""

    background_color: Sequence[int] | None


def normalize_size(size: Any) -> dict[str, int] | None:
    """`None`, an int (square), (height, width) or a {"height", "width"} mapping -> {"height", "width"} or None."""
    if size is None:
        return None
    if isinstance(size, bool):
        raise ValueError(
            f"size must be None, an int, (height, width) or a dict with 'height' and 'width'; got {size!r}"
        )
    if isinstance(size, int):
        height = width = size
    elif isinstance(size, Mapping):
        if set(size) - {"height", "width"} or "height" not in size or "width" not in size:
            raise ValueError(f"size must have exactly the keys 'height' and 'width'; got {dict(size)!r}")
        height, width = size["height"], size["width"]
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        height, width = size
    elif getattr(size, "height", None) is not None and getattr(size, "width", None) is not None:
        height, width = size.height, size.width  # transformers' SizeDict
    else:
        raise ValueError(
            f"size must be None, an int, (height, width) or a dict with 'height' and 'width'; got {size!r}"
        )
    if int(height) != height or int(width) != width or height < 1 or width < 1:
        raise ValueError(f"size must hold positive integers; got height={height!r}, width={width!r}")
    return {"height": int(height), "width": int(width)}


def resolve_resample(resample: Any) -> int:
    """A PIL resampling filter given as enum, int or name ("bilinear", "bicubic", ...) -> its int value."""
    if isinstance(resample, str):
        key = resample.lower()
        if key not in _RESAMPLE_BY_NAME:
            raise ValueError(f"unknown resample {resample!r}; expected one of {sorted(_RESAMPLE_BY_NAME)}")
        return int(_RESAMPLE_BY_NAME[key])
    valid = {int(member) for member in PIL.Image.Resampling}
    if isinstance(resample, bool) or not isinstance(resample, int) or int(resample) not in valid:
        raise ValueError(
            f"unknown resample {resample!r}; expected a PIL resampling filter or one of {sorted(_RESAMPLE_BY_NAME)}"
        )
    return int(resample)


def _per_channel(value: Any, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32).reshape(-1)
    if array.size == 1:
        array = np.repeat(array, 3)
    if array.size != 3:
        raise ValueError(f"{name} must be one number or three (one per RGB channel); got {value!r}")
    return array


def _composite(color: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Alpha-composite `color` (H, W, 3, 0-255 scale) over a flat background; `alpha` is (H, W) on 0-255."""
    weight = (alpha.astype(np.float32) / 255.0)[..., None]
    return color * weight + background[None, None, :] * (1.0 - weight)


def _to_8bit_scale(array: np.ndarray, what: str) -> np.ndarray:
    """Any supported dtype -> float32 on the 0-255 scale; raises for values outside the dtype's documented range."""
    kind, itemsize = array.dtype.kind, array.dtype.itemsize
    if kind == "b":
        return array.astype(np.float32) * 255.0
    if kind == "u" and itemsize == 1:
        return array.astype(np.float32)
    if kind == "u" and itemsize == 2:
        return array.astype(np.float32) * (255.0 / 65535.0)
    if kind in "ui":
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > 255:
            raise ValueError(
                f"{what}: integer images of dtype {array.dtype} must hold values in [0, 255] "
                f"(use uint16 for 16-bit data); got values in [{low}, {high}]"
            )
        return array.astype(np.float32)
    if kind == "f":
        array = array.astype(np.float32)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{what}: float image contains NaN or infinite values")
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < -_FLOAT_TOLERANCE or high > 1.0 + _FLOAT_TOLERANCE:
            raise ValueError(
                f"{what}: float images must hold values in [0, 1]; got values in [{low:.4g}, {high:.4g}] "
                "(pass uint8 for 0-255 data)"
            )
        return np.clip(array, 0.0, 1.0) * 255.0
    raise ValueError(f"{what}: unsupported array dtype {array.dtype}")


def _array_to_rgb(
    array: np.ndarray, background: np.ndarray, channels_first: bool | None, prefer_first: bool
) -> np.ndarray:
    """A (H, W), (H, W, C) or (C, H, W) array with C in 1-4 -> float32 (H, W, 3) on the 0-255 scale."""
    shape = tuple(array.shape)
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3:
        first_ok, last_ok = shape[0] in (1, 2, 3, 4), shape[-1] in (1, 2, 3, 4)
        if channels_first is None:
            if first_ok and last_ok:
                channels_first = prefer_first
            elif first_ok or last_ok:
                channels_first = first_ok
            else:
                raise ValueError(
                    f"cannot find the channel axis of an image array of shape {shape}: "
                    "expected (H, W), (H, W, C) or (C, H, W) with C in 1-4"
                )
        if channels_first:
            if not first_ok:
                raise ValueError(f"channels-first image array must have 1-4 channels; got shape {shape}")
            array = np.moveaxis(array, 0, -1)
        elif not last_ok:
            raise ValueError(f"channels-last image array must have 1-4 channels; got shape {shape}")
    else:
        raise ValueError(
            f"expected an image array of shape (H, W), (H, W, C) or (C, H, W) with C in 1-4; got shape {shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image has an empty side: shape {shape}")
    array = _to_8bit_scale(np.asarray(array), f"image array of shape {shape}")
    channels = array.shape[-1]
    if channels == 1:
        return np.repeat(array, 3, axis=-1)
    if channels == 2:
        return _composite(np.repeat(array[..., :1], 3, axis=-1), array[..., 1], background)
    if channels == 3:
        return array
    return _composite(array[..., :3], array[..., 3], background)


def _pil_to_rgb(image: PIL.Image.Image, background: np.ndarray) -> np.ndarray:
    """A PIL image of any supported mode -> float32 (H, W, 3) on the 0-255 scale."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("PA", "RGBa"):
        image = image.convert("RGBA")
    elif mode in _PIL_MODES_TO_RGB - {"RGB", "L", "1"}:
        image = image.convert("RGB")
    elif mode not in _PIL_MODES_TO_RGB | _PIL_MODES_WITH_ALPHA | _PIL_16BIT_MODES | {"I", "F"}:
        raise ValueError(
            f"unsupported PIL image mode {mode!r}; supported: "
            f"{sorted(_PIL_MODES_TO_RGB | _PIL_MODES_WITH_ALPHA | _PIL_16BIT_MODES | {'P', 'I', 'F'})}"
        )
    array = np.asarray(image)
    if mode == "I":
        array = np.clip(array, 0, 65535).astype(np.uint16)
    return _array_to_rgb(array, background, channels_first=False, prefer_first=False)


def to_rgb_array(
    image: Any, background_color: Sequence[int] = (255, 255, 255), input_data_format: str | None = None
) -> np.ndarray:
    """One image (PIL, numpy array or torch tensor) -> float32 (H, W, 3) RGB on the 0-255 scale."""
    background = np.asarray(background_color, dtype=np.float32).reshape(-1)
    if background.size != 3:
        raise ValueError(f"background_color must have three values (R, G, B); got {background_color!r}")
    if input_data_format not in (None, "channels_first", "channels_last"):
        raise ValueError(
            f"input_data_format must be None, 'channels_first' or 'channels_last'; got {input_data_format!r}"
        )
    channels_first = None if input_data_format is None else input_data_format == "channels_first"
    if isinstance(image, PIL.Image.Image):
        return _pil_to_rgb(image, background)
    if torch is not None and isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        return _array_to_rgb(tensor.numpy(), background, channels_first, prefer_first=True)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, background, channels_first, prefer_first=False)
    raise TypeError(
        f"unsupported image type {type(image).__name__}; expected a PIL image, a numpy array or a torch tensor"
    )


def resize_rgb(array: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    """Resize a float (H, W, 3) array channel by channel with PIL (mode "F" keeps full precision)."""
    if array.shape[:2] == (height, width):
        return array
    channels = [
        np.asarray(
            PIL.Image.fromarray(np.ascontiguousarray(array[..., c]), mode="F").resize(
                (width, height), resample=resample
            )
        )
        for c in range(array.shape[-1])
    ]
    return np.stack(channels, axis=-1).astype(np.float32)


def _is_image(value: Any) -> bool:
    return isinstance(value, (PIL.Image.Image, np.ndarray)) or (torch is not None and isinstance(value, torch.Tensor))


def _as_image_list(images: Any) -> list[Any]:
    """One image, a list/tuple of images, or a 4-d array/tensor (a batch) -> a flat list of images."""
    if images is None:
        raise ValueError("images is None; pass a PIL image, a numpy array, a torch tensor or a list of them")
    if _is_image(images):
        if getattr(images, "ndim", 3) == 4:
            return list(images)
        return [images]
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("images is an empty list")
        for position, image in enumerate(images):
            if not _is_image(image):
                raise TypeError(
                    f"images[{position}] has unsupported type {type(image).__name__}; "
                    "expected a PIL image, a numpy array or a torch tensor"
                )
        return list(images)
    raise TypeError(f"unsupported images type {type(images).__name__}; expected an image or a list of images")


class VLPImageProcessor(BaseImageProcessor):
    r"""
    Turns images into `pixel_values` (B, 3, H, W) float32 and `pixel_mask` (B, H, W) int64 for VLP models.

    Args:
        do_resize (`bool`, defaults to `True`): resize every image to `size`.
        size (`dict[str, int]` or `None`, defaults to `{"height": 64, "width": 64}`): target size. `None` keeps
            each image's own size (full-resolution canvases); the batch is then padded.
        resample (`int` or `str`, defaults to bicubic): PIL resampling filter.
        do_rescale (`bool`, defaults to `True`), rescale_factor (`float`, defaults to 1/255): 0-255 -> 0-1.
        do_normalize (`bool`, defaults to `True`), image_mean / image_std (defaults to 0.5 / 0.5 per channel).
        do_pad (`bool`, defaults to `True`): pad a batch of different sizes to the largest height and width.
        background_color (`tuple[int, int, int]`, defaults to white): colour under transparent pixels.
    """

    model_input_names = ["pixel_values", "pixel_mask"]
    valid_kwargs = VLPImageProcessorKwargs

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | int | None = _UNSET,
        resample: int | str = PIL.Image.Resampling.BICUBIC,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] = (0.5, 0.5, 0.5),
        image_std: float | Sequence[float] = (0.5, 0.5, 0.5),
        do_pad: bool = True,
        background_color: Sequence[int] = (255, 255, 255),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.do_resize = bool(do_resize)
        self.size = normalize_size(dict(DEFAULT_SIZE) if size is _UNSET else size)
        self.resample = resolve_resample(resample)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = [float(v) for v in _per_channel(image_mean, "image_mean")]
        self.image_std = [float(v) for v in _per_channel(image_std, "image_std")]
        if any(v == 0 for v in self.image_std):
            raise ValueError(f"image_std must not contain 0; got {self.image_std}")
        self.do_pad = bool(do_pad)
        self.background_color = [int(v) for v in _per_channel(background_color, "background_color")]

    def to_dict(self) -> dict[str, Any]:
        """Every attribute, `None` included (so `size=None` survives a save/load round trip)."""
        output = ImageProcessingMixin.to_dict(self)
        for private in ("_valid_kwargs_names", "_valid_processor_keys"):
            output.pop(private, None)
        return output

    def preprocess(
        self,
        images: Any,
        do_resize: bool | None = None,
        size: dict[str, int] | int | None = _UNSET,
        resample: int | str | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_pad: bool | None = None,
        background_color: Sequence[int] | None = None,
        input_data_format: str | None = None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Process one image or a batch. Arguments left out use the processor's settings; `size=None` keeps sizes.

        Returns a `BatchFeature` with `pixel_values` (B, 3, H, W) float32 and `pixel_mask` (B, H, W) int64 (numpy
        arrays, or torch tensors with `return_tensors="pt"`). Without padding, images of different sizes come back
        as lists, and asking for tensors raises.
        """
        if kwargs:
            raise TypeError(f"VLPImageProcessor got unexpected keyword arguments: {sorted(kwargs)}")
        do_resize = self.do_resize if do_resize is None else do_resize
        size = self.size if size is _UNSET else normalize_size(size)
        resample = self.resample if resample is None else resolve_resample(resample)
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        rescale_factor = self.rescale_factor if rescale_factor is None else float(rescale_factor)
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        mean = _per_channel(self.image_mean if image_mean is None else image_mean, "image_mean")
        std = _per_channel(self.image_std if image_std is None else image_std, "image_std")
        do_pad = self.do_pad if do_pad is None else do_pad
        background = self.background_color if background_color is None else background_color
        if return_tensors not in (None, "np", "pt"):
            raise ValueError(f"return_tensors must be None, 'np' or 'pt'; got {return_tensors!r}")

        processed = []
        for position, image in enumerate(_as_image_list(images)):
            try:
                array = to_rgb_array(image, background, input_data_format)
            except (ValueError, TypeError) as error:
                raise type(error)(f"image {position}: {error}") from error
            if do_resize and size is not None:
                array = resize_rgb(array, size["height"], size["width"], resample)
            if do_rescale:
                array = array * rescale_factor
            if do_normalize:
                array = (array - mean) / std
            processed.append(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))

        sizes = [image.shape[1:] for image in processed]
        if len(set(sizes)) > 1 and not do_pad:
            if return_tensors is not None:
                raise ValueError(
                    f"images have different sizes {sorted(set(sizes))} and do_pad=False; "
                    "set do_pad=True or resize them to one size to get tensors"
                )
            masks = [np.ones(s, dtype=np.int64) for s in sizes]
            return BatchFeature(data={"pixel_values": processed, "pixel_mask": masks})
        pixel_values, pixel_mask = self.pad_with_mask(processed)
        return BatchFeature(data={"pixel_values": pixel_values, "pixel_mask": pixel_mask}, tensor_type=return_tensors)

    @staticmethod
    def pad_with_mask(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(3, h_i, w_i) arrays -> zero-padded (B, 3, H, W) and a (B, H, W) int64 mask, 1 on real pixels."""
        height = max(image.shape[1] for image in images)
        width = max(image.shape[2] for image in images)
        pixel_values = np.zeros((len(images), 3, height, width), dtype=np.float32)
        pixel_mask = np.zeros((len(images), height, width), dtype=np.int64)
        for row, image in enumerate(images):
            pixel_values[row, :, : image.shape[1], : image.shape[2]] = image
            pixel_mask[row, : image.shape[1], : image.shape[2]] = 1
        return pixel_values, pixel_mask

    def __call__(self, images: Any, **kwargs) -> BatchFeature:
        return self.preprocess(images, **kwargs)


VLPImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["VLPImageProcessor"]
