"""Rendering: analytic anti-aliased images of scenes, vectorised over a batch, and object masks."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .scenes import Scene, _as_scene
from .vocabulary import BACKGROUND_RGB, COLOUR_RGB, COLOURS, SHAPES, SIZE_RADIUS, SIZES

# Each shape is a signed distance function in unit coordinates (its bounding box is [-1, 1]^2,
# u_y grows downwards), after Inigo Quilez's 2D distance functions. Coverage of a pixel is
# clip(0.5 - distance_in_pixels, 0, 1): analytic anti-aliasing, one evaluation per pixel.

_SQRT3 = math.sqrt(3.0)


def _sdf_box(ux, uy, hx: float, hy: float):
    """Axis-aligned rectangle with half sides (hx, hy)."""
    qx, qy = np.abs(ux) - hx, np.abs(uy) - hy
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _sdf_circle(ux, uy):
    """Circle filling its box."""
    return np.sqrt(ux * ux + uy * uy) - 1.0


def _sdf_square(ux, uy):
    """Square, a little inside its box so its area is close to the circle's."""
    return _sdf_box(ux, uy, 0.8, 0.8)


def _sdf_cross(ux, uy):
    """Plus-shaped cross: the union of two bars."""
    return np.minimum(_sdf_box(ux, uy, 0.95, 0.32), _sdf_box(ux, uy, 0.32, 0.95))


def _sdf_diamond(ux, uy, bx: float = 0.8, by: float = 1.0):
    """Rhombus, taller than wide (half diagonals bx, by), so it is not a turned square."""
    px, py = np.abs(ux), np.abs(uy)
    h = np.clip(((bx - 2 * px) * bx - (by - 2 * py) * by) / (bx * bx + by * by), -1.0, 1.0)
    dx, dy = px - 0.5 * bx * (1 - h), py - 0.5 * by * (1 + h)
    return np.sqrt(dx * dx + dy * dy) * np.sign(px * by + py * bx - bx * by)


def _sdf_triangle(ux, uy, r: float = 1.0):
    """Equilateral triangle, apex up, vertically centred in its box."""
    qx = np.abs(ux) - r
    qy = -uy + r / (2 * _SQRT3) + r / _SQRT3
    fold = qx + _SQRT3 * qy > 0
    nx = np.where(fold, (qx - _SQRT3 * qy) / 2, qx)
    ny = np.where(fold, (-_SQRT3 * qx - qy) / 2, qy)
    nx = nx - np.clip(nx, -2 * r, 0)
    return -np.sqrt(nx * nx + ny * ny) * np.sign(ny)


def _sdf_hexagon(ux, uy, r: float = 0.866):
    """Hexagon with flat top and bottom (apothem ``r``) and corners at u_x = +-1."""
    kx, ky, kz = -0.866025404, 0.5, 0.577350269
    px, py = np.abs(ux), np.abs(uy)
    m = 2 * np.minimum(kx * px + ky * py, 0)
    px, py = px - m * kx, py - m * ky
    px = px - np.clip(px, -kz * r, kz * r)
    py = py - r
    return np.sqrt(px * px + py * py) * np.sign(py)


def _sdf_star(ux, uy, r: float = 1.0, inner: float = 0.45):
    """Five-pointed star, one point up, vertically centred in its box."""
    k1x, k1y = 0.809016994375, -0.587785252292
    px, py = np.abs(ux), -uy + (1.0 - 0.809016994375) / 2
    m = 2 * np.maximum(k1x * px + k1y * py, 0)
    px, py = px - m * k1x, py - m * k1y
    m = 2 * np.maximum(-k1x * px + k1y * py, 0)
    px, py = np.abs(px + m * k1x), py - m * k1y - r
    bax, bay = -inner * k1y, inner * k1x - 1.0
    h = np.clip((px * bax + py * bay) / (bax * bax + bay * bay), 0.0, r)
    dx, dy = px - bax * h, py - bay * h
    return np.sqrt(dx * dx + dy * dy) * np.sign(py * bax - px * bay)


def _sdf_heart(ux, uy, s: float = 0.604):
    """Heart, tip down; ``s`` scales Quilez's unit heart (width 1.21) to the box."""
    px, py = np.abs(ux) * s, -uy * s + 0.552
    lobe = np.sqrt((px - 0.25) ** 2 + (py - 0.75) ** 2) - math.sqrt(2.0) / 4
    m = np.maximum(px + py, 0) * 0.5
    body = np.sqrt(np.minimum(px * px + (py - 1) ** 2, (px - m) ** 2 + (py - m) ** 2)) * np.sign(px - py)
    return np.where(py + px > 1, lobe, body) / s


_SDF = {
    "circle": _sdf_circle,
    "square": _sdf_square,
    "triangle": _sdf_triangle,
    "star": _sdf_star,
    "heart": _sdf_heart,
    "diamond": _sdf_diamond,
    "cross": _sdf_cross,
    "hexagon": _sdf_hexagon,
}
_COLOUR_TABLE = np.array([COLOUR_RGB[c] for c in COLOURS], dtype=np.float32)
_SHAPE_ID = {s: i for i, s in enumerate(SHAPES)}
_COLOUR_ID = {c: i for i, c in enumerate(COLOURS)}
_NOISE_BANK_SEED, _NOISE_BANK_SIZE = 20240601, 16
_PIXEL = np.dtype((np.void, 3))


def _patch_geometry(size: str, image_size: int) -> tuple[float, int]:
    """Radius in pixels and side of the square patch that holds every pixel an object touches."""
    rpx = SIZE_RADIUS[size] * image_size
    return rpx, math.ceil(2 * rpx + 3)


def _coverage(shape: str, lx: np.ndarray, ly: np.ndarray, rpx: float, patch: int) -> np.ndarray:
    """Coverage (n, patch, patch) of objects centred at patch-local (lx, ly), radius ``rpx`` px."""
    centres = np.arange(patch, dtype=np.float32) + 0.5
    ux = (centres[None, :] - lx[:, None].astype(np.float32)) / np.float32(rpx)
    uy = (centres[None, :] - ly[:, None].astype(np.float32)) / np.float32(rpx)
    distance = _SDF[shape](ux[:, None, :], uy[:, :, None])
    return np.clip(np.float32(0.5) - distance * np.float32(rpx), 0.0, 1.0)


class _ObjectTable(NamedTuple):
    """Columns of all objects of a batch of scenes."""

    scene: np.ndarray
    slot: np.ndarray
    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    x: np.ndarray
    y: np.ndarray


def _object_table(scenes: Sequence[Scene]) -> _ObjectTable:
    """Flatten the objects of a batch of scenes into numpy columns."""
    rows = [
        (b, k, _SHAPE_ID[o.shape], _COLOUR_ID[o.colour], o.size == "large", o.x, o.y)
        for b, scene in enumerate(scenes)
        for k, o in enumerate(scene.objects)
    ]
    cols = np.array(rows, dtype=np.float64).reshape(-1, 7).T
    ints = cols[:5].astype(np.int64)
    return _ObjectTable(*ints, cols[5], cols[6])


@functools.lru_cache(maxsize=8)
def _noise_bank(image_size: int) -> np.ndarray:
    """A fixed bank of standard-normal noise fields (a few MB); scenes pick and roll one by seed."""
    count = max(2, min(16, 16 * 64 * 64 // (image_size * image_size)))
    rng = np.random.default_rng(_NOISE_BANK_SEED)
    return rng.standard_normal((count, image_size, image_size, 3), dtype=np.float32)


def _rolled(out: np.ndarray, field: np.ndarray, dy: int, dx: int):
    """Write ``np.roll(field, (-dy, -dx), (0, 1))`` into ``out`` with four slice copies."""
    h, w = field.shape[:2]
    out[: h - dy, : w - dx] = field[dy:, dx:]
    out[: h - dy, w - dx :] = field[dy:, :dx]
    out[h - dy :, : w - dx] = field[:dy, dx:]
    out[h - dy :, w - dx :] = field[:dy, :dx]


def _background_noise(scenes: Sequence[Scene], image_size: int) -> np.ndarray | None:
    """Per-scene noise (B, S, S, 3) in 0..255 units, or None when no scene has any.

    Scene noise is a bank field chosen and rolled by the scene's background seed: deterministic
    per scene and far cheaper than drawing fresh normals.
    """
    std = np.array([s.background_noise for s in scenes], dtype=np.float32) * 255
    if not std.any():
        return None
    bank = _noise_bank(image_size)
    noise = np.empty((len(scenes), image_size, image_size, 3), dtype=np.float32)
    for b, scene in enumerate(scenes):
        seed = scene.background_seed
        shift = seed // len(bank)
        _rolled(noise[b], bank[seed % len(bank)], shift % image_size, shift // image_size % image_size)
    noise *= std[:, None, None, None]
    return noise


def _composite(images: np.ndarray, table: _ObjectTable, sel: np.ndarray, size: str):
    """Blend all objects of one size into the images, one slot at a time so no two write one image.

    Patches are shifted to stay inside the image; an object's pixels always fit in its patch.
    """
    image_size = images.shape[1]
    rpx, patch = _patch_geometry(size, image_size)
    order = np.flatnonzero(sel)[np.argsort(table.slot[sel], kind="stable")]
    scene, slots, shapes = table.scene[order], table.slot[order], table.shape[order]
    cx, cy = table.x[order] * image_size, table.y[order] * image_size
    ox = np.clip(np.floor(cx - rpx - 1), 0, image_size - patch).astype(np.int64)
    oy = np.clip(np.floor(cy - rpx - 1), 0, image_size - patch).astype(np.int64)
    cov = np.empty((len(order), patch, patch, 1), dtype=np.float32)
    for shape_id in np.unique(shapes):
        sub = shapes == shape_id
        cov[sub, ..., 0] = _coverage(SHAPES[shape_id], cx[sub] - ox[sub], cy[sub] - oy[sub], rpx, patch)
    ar = np.arange(patch)
    rows = (scene * image_size + oy)[:, None, None] + ar[None, :, None]
    flat_index = rows * image_size + (ox[:, None, None] + ar[None, None, :])
    pixels = images.view(_PIXEL).reshape(-1)  # one 3-byte item per pixel: fast take/put
    rgb = _COLOUR_TABLE[table.colour[order]][:, None, None, :]
    bounds = np.searchsorted(slots, np.arange(slots[-1] + 2))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        index = flat_index[lo:hi]
        old = np.take(pixels, index).view(np.uint8).reshape(*index.shape, 3).astype(np.float32)
        blend = rgb[lo:hi] - old
        blend *= cov[lo:hi]
        blend += old
        blend += 0.5
        np.put(pixels, index, blend.astype(np.uint8).view(_PIXEL))


def _backgrounds(scenes: Sequence[Scene], image_size: int) -> np.ndarray:
    """Background images (B, S, S, 3) uint8: flat grey plus each scene's noise."""
    images = np.empty((len(scenes), image_size, image_size, 3), dtype=np.uint8)
    noise = _background_noise(scenes, image_size)
    if noise is None:
        images[...] = _flat_background(image_size)
    else:
        noise += np.asarray(BACKGROUND_RGB, dtype=np.float32) + 0.5
        np.clip(noise, 0, 255, out=images, casting="unsafe")
    return images


@functools.lru_cache(maxsize=8)
def _flat_background(image_size: int) -> np.ndarray:
    """One plain background image (copying whole images is much faster than broadcasting a colour)."""
    return np.tile(np.asarray(BACKGROUND_RGB, dtype=np.uint8), (image_size, image_size, 1))


def render_batch(scenes: Sequence[Scene | dict], image_size: int = 64) -> np.ndarray:
    """Render scenes to a uint8 array (B, image_size, image_size, 3), vectorised over the batch."""
    scenes = [_as_scene(s) for s in scenes]
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not 16 <= image_size <= 4096:
        raise ValueError(f"image_size must be an integer in [16, 4096], got {image_size!r}")
    images = _backgrounds(scenes, image_size)
    table = _object_table(scenes)
    for size_id, size in enumerate(SIZES):
        sel = table.size == size_id
        if sel.any():
            _composite(images, table, sel, size)
    return images


def render_scene(scene: Scene | dict, image_size: int = 64) -> np.ndarray:
    """Render one scene to a uint8 (image_size, image_size, 3) array."""
    return render_batch([scene], image_size)[0]


def object_masks(scene: Scene | dict, image_size: int = 64) -> np.ndarray:
    """Per-object coverage in [0, 1], float32 (num_objects, image_size, image_size): exact grounding masks."""
    scene = _as_scene(scene)
    masks = np.zeros((len(scene.objects), image_size, image_size), dtype=np.float32)
    for k, obj in enumerate(scene.objects):
        rpx, patch = _patch_geometry(obj.size, image_size)
        cx, cy = obj.x * image_size, obj.y * image_size
        ox, oy = math.floor(cx - rpx - 1), math.floor(cy - rpx - 1)
        cov = _coverage(obj.shape, np.array([cx - ox]), np.array([cy - oy]), rpx, patch)[0]
        y0, x0 = max(oy, 0), max(ox, 0)
        y1, x1 = min(oy + patch, image_size), min(ox + patch, image_size)
        masks[k, y0:y1, x0:x1] = cov[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return masks
