"""The shard layout's names and limits, and the skip reasons of the stream."""

from __future__ import annotations

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "vlp-webdataset"
MANIFEST_VERSION = 1
STATE_VERSION = 1
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
DEFAULT_MAX_PIXELS = 2**25  # 33.5 M pixels, e.g. 8192 x 4096; larger images would stall a worker
SHARD_DIGITS = 5  # img2dataset's oom_shard_count

# Skip reasons of the stream (caption and image reasons are shared with caption_readers).
SHARD_MISSING = "shard missing"
CORRUPT_SHARD = "corrupt or truncated shard"
NO_IMAGE = "no image in sample"
NO_CAPTION = "no caption in sample"
CORRUPT_JSON = "corrupt json"
UNREADABLE_SAMPLE = "unreadable sample"  # the transform refused it (e.g. the image does not decode)

_FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}
