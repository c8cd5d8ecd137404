"""A YOLOv8n detector with real weights, and real-looking test images for it, for benchmarks/accuracy_real.py.

Weights: the PyPI package nudenet (3.4.2) ships a YOLOv8n body-part detector as
nudenet/320n.onnx (input images [batch, 3, H, W] float32 RGB in [0, 1]; output output0
[batch, 22, anchors]: 4 box coordinates in pixels, then 18 class scores). `nudenet_model()`
fetches the wheel once with `pip download --no-deps` (as tests/conformance/suite.py fetches
onnx's node tests) and extracts only the .onnx into $KILN_CACHE_DIR.

Images: `scene(seed)` paints a deterministic 320x320 RGB picture with numpy: an outdoor
(sky over ground, wavy horizon) or indoor (wall over floor) background with gradients and
multi-octave value-noise texture, a few shaded ellipses (objects), zero to two simple human
figures in skin tones and clothing colours (head, hair, torso, arms, legs), a directional
light, a vignette, a colour cast, a slight blur and sensor noise. They are not photographs,
but their statistics (smooth regions, edges, skin-coloured blobs, textures, a full range of
brightness) exercise the detector far more like real inputs than uniform noise does.

`preprocess(image)` is nudenet's own `_read_image` (nudenet/nudenet.py) for an RGB array:
pad bottom/right to a square with zeros, resize to 320, scale by 1/255, channels first (its
cv2.dnn.blobFromImage(swapRB=True) turns OpenCV's BGR into RGB; we start from RGB). Our
images are 320x320 already, so the pad and resize are the identity; other sizes are refused.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

NUDENET_VERSION = "3.4.2"
NUDENET_MEMBER = "nudenet/320n.onnx"
SIZE = 320  # the model's input resolution (nudenet's inference_resolution)
INPUT_NAME = "images"
OUTPUT_NAME = "output0"

# RGB in [0, 1]
_SKIN = ((0.96, 0.80, 0.69), (0.92, 0.72, 0.56), (0.80, 0.58, 0.42), (0.65, 0.45, 0.30), (0.45, 0.30, 0.20),
         (0.99, 0.87, 0.74))
_CLOTHES = ((0.15, 0.20, 0.45), (0.70, 0.10, 0.12), (0.92, 0.92, 0.90), (0.10, 0.10, 0.12), (0.30, 0.50, 0.25),
            (0.85, 0.70, 0.20), (0.55, 0.35, 0.60), (0.40, 0.55, 0.75))
_HAIR = ((0.08, 0.06, 0.05), (0.30, 0.18, 0.10), (0.75, 0.60, 0.35), (0.55, 0.25, 0.12), (0.60, 0.60, 0.60))
_SKY = (((0.25, 0.45, 0.85), (0.70, 0.82, 0.95)), ((0.55, 0.58, 0.62), (0.80, 0.80, 0.82)),
        ((0.30, 0.25, 0.55), (0.98, 0.60, 0.35)))
_GROUND = ((0.25, 0.45, 0.18), (0.76, 0.68, 0.48), (0.35, 0.35, 0.37), (0.45, 0.30, 0.18), (0.60, 0.62, 0.55))
_WALL = ((0.90, 0.87, 0.80), (0.70, 0.78, 0.82), (0.85, 0.75, 0.60), (0.60, 0.58, 0.55), (0.95, 0.95, 0.95))
_OBJECTS = _CLOTHES + _GROUND + ((0.90, 0.50, 0.10), (0.20, 0.60, 0.70))


def cache_root() -> Path:
    return Path(os.environ.get("KILN_CACHE_DIR") or Path.home() / ".cache" / "kiln")


def nudenet_model(cache_dir: Path | None = None) -> Path:
    """nudenet's YOLOv8n (320n.onnx), fetched from its wheel on first use.

    Raises subprocess.CalledProcessError (or OSError) when pip cannot fetch the wheel, e.g.
    without network; callers that can do without the model catch it."""
    target = Path(cache_dir or cache_root()) / f"nudenet-{NUDENET_VERSION}" / Path(NUDENET_MEMBER).name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        f"nudenet=={NUDENET_VERSION}", "-d", tmp, "-q"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wheel = next(Path(tmp).glob("nudenet-*.whl"))
        part = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with zipfile.ZipFile(wheel) as z:
            part.write_bytes(z.read(NUDENET_MEMBER))
        os.replace(part, target)  # atomic: a concurrent reader never sees half a model
    return target


def preprocess(image: np.ndarray) -> np.ndarray:
    """nudenet's preprocessing of one RGB uint8 [H, W, 3] image -> float32 [1, 3, 320, 320] (module docstring)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"preprocess takes an RGB uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    side = max(image.shape[:2])
    if side != SIZE:
        raise ValueError(f"preprocess covers only images whose longer side is {SIZE} (no resize), got "
                         f"{image.shape[:2]}; generate them at {SIZE}.")
    square = np.zeros((side, side, 3), np.uint8)
    square[:image.shape[0], :image.shape[1]] = image
    return np.ascontiguousarray((square.astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1)[None])


def batch(seeds: range | list[int]) -> np.ndarray:
    """float32 [len(seeds), 3, 320, 320]: the preprocessed scenes of these seeds."""
    return np.concatenate([preprocess(scene(s)) for s in seeds])


# ---------------------------------------------------------------- painting


def _noise(rng: np.random.Generator, octaves: int = 4, base: int = 4) -> np.ndarray:
    """Value noise in about [-1, 1], [SIZE, SIZE]: random grids bilinearly upsampled, halving per octave."""
    total = np.zeros((SIZE, SIZE), np.float32)
    for o in range(octaves):
        cells = base * 2 ** o
        grid = torch.from_numpy(rng.uniform(-1.0, 1.0, (1, 1, cells, cells)).astype(np.float32))
        up = torch.nn.functional.interpolate(grid, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        total += up[0, 0].numpy() * 0.5 ** o
    return total


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float,
             soft: float = 0.7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coverage in [0, 1] with a soft edge of `soft` pixels, normalised offsets u, v) of a rotated ellipse."""
    c, s = np.cos(angle), np.sin(angle)
    u = ((xx - cx) * c + (yy - cy) * s) / rx
    v = (-(xx - cx) * s + (yy - cy) * c) / ry
    r = np.sqrt(u * u + v * v)
    return _sigmoid((1.0 - r) * min(rx, ry) / soft), u, v


def _box(yy: np.ndarray, xx: np.ndarray, y0: float, x0: float, y1: float, x1: float,
         soft: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coverage, u, v) of an axis-aligned rectangle (a building, a window, furniture)."""
    cover = _sigmoid(np.minimum(np.minimum(xx - x0, x1 - xx), np.minimum(yy - y0, y1 - yy)) / soft)
    u = (xx - (x0 + x1) / 2) / max(x1 - x0, 1.0) * 2
    v = (yy - (y0 + y1) / 2) / max(y1 - y0, 1.0) * 2
    return cover, u, v


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


def _paint(canvas: np.ndarray, cover: np.ndarray, u: np.ndarray, v: np.ndarray, colour: np.ndarray,
           light: np.ndarray, rng: np.random.Generator) -> None:
    """Blend a shaded ellipse into `canvas`: brighter on the side facing the light, with fine texture."""
    shade = 1.0 + 0.35 * (u * light[0] + v * light[1]) - 0.15 * (u * u + v * v)
    texture = 1.0 + 0.04 * rng.standard_normal(cover.shape).astype(np.float32)
    paint = colour[None, None, :] * (shade * texture)[..., None]
    canvas *= 1.0 - cover[..., None]
    canvas += cover[..., None] * paint


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    horizon = rng.uniform(0.3, 0.7) * SIZE + rng.uniform(0, 12) * np.sin(xx / SIZE * rng.uniform(2, 8)
                                                                          + rng.uniform(0, 6.3))
    below = _sigmoid((yy - horizon) / 1.0)  # [H, W] 1 on the ground
    t = (yy / SIZE)[..., None]
    if rng.random() < 0.5:  # outdoor: sky gradient over ground
        top, low = (np.array(c, np.float32) for c in _SKY[rng.integers(len(_SKY))])
        upper = top * (1 - t) + low * t + 0.04 * _noise(rng, 3, 2)[..., None]
        ground = np.array(_GROUND[rng.integers(len(_GROUND))], np.float32)
    else:  # indoor: wall with vertical wallpaper stripes over a floor
        wall = np.array(_WALL[rng.integers(len(_WALL))], np.float32)
        stripes = 0.04 * np.sin(xx / rng.uniform(4, 20))[..., None] * rng.integers(0, 2)
        upper = wall * (0.9 + 0.1 * t) + stripes + 0.02 * _noise(rng, 2, 2)[..., None]
        ground = np.array(_GROUND[rng.integers(len(_GROUND))], np.float32) * 0.9
    depth = np.clip((yy - horizon) / SIZE, 0, 1)[..., None]  # brighter near the horizon
    lower = ground * (1.05 - 0.4 * depth) * (1 + 0.25 * _noise(rng, 5, 4)[..., None])
    return upper * (1 - below[..., None]) + lower * below[..., None]


def _figure(canvas: np.ndarray, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, light: np.ndarray) -> None:
    """A standing person: legs, torso, arms, neck, head and hair as shaded ellipses."""
    h = rng.uniform(0.45, 0.95) * SIZE          # figure height in pixels
    cx, top = rng.uniform(0.2, 0.8) * SIZE, rng.uniform(0.0, 0.3) * SIZE
    skin = np.array(_SKIN[rng.integers(len(_SKIN))], np.float32)
    shirt = skin if rng.random() < 0.3 else np.array(_CLOTHES[rng.integers(len(_CLOTHES))], np.float32)
    trousers = skin if rng.random() < 0.2 else np.array(_CLOTHES[rng.integers(len(_CLOTHES))], np.float32)
    tilt = rng.uniform(-0.15, 0.15)
    parts = [  # (cy, cx, ry, rx, angle, colour), in painting order, as fractions of h
        (0.75, -0.07, 0.22, 0.05, 0.08, trousers), (0.75, 0.07, 0.22, 0.05, -0.08, trousers),
        (0.42, 0.0, 0.20, 0.12, tilt, shirt),
        (0.42, -0.15, 0.17, 0.035, 0.25 + rng.uniform(-0.3, 0.6), skin if rng.random() < 0.6 else shirt),
        (0.42, 0.15, 0.17, 0.035, -0.25 - rng.uniform(-0.3, 0.6), skin if rng.random() < 0.6 else shirt),
        (0.21, 0.0, 0.04, 0.03, 0.0, skin),
        (0.11, 0.0, 0.09, 0.07, tilt, skin)]
    for cy, dx, ry, rx, angle, colour in parts:
        cover, u, v = _ellipse(yy, xx, top + cy * h, cx + dx * h, ry * h, rx * h, angle)
        _paint(canvas, cover, u, v, colour, light, rng)
    hair, u, v = _ellipse(yy, xx, top + 0.06 * h, cx, 0.05 * h, 0.075 * h, tilt)
    _paint(canvas, hair, u, v, np.array(_HAIR[rng.integers(len(_HAIR))], np.float32), light, rng)


def scene(seed: int) -> np.ndarray:
    """A deterministic real-looking RGB uint8 [320, 320, 3] picture (module docstring)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    canvas = _background(rng, yy, xx).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    light = np.array([np.cos(angle), np.sin(angle)], np.float32)
    for _ in range(rng.integers(2, 8)):  # objects: round things and boxes
        if rng.random() < 0.6:
            cover, u, v = _ellipse(yy, xx, rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(8, 70),
                                   rng.uniform(8, 70), rng.uniform(0, np.pi), soft=rng.uniform(0.5, 3))
        else:
            y0, x0 = rng.uniform(-20, SIZE - 20, 2)
            cover, u, v = _box(yy, xx, y0, x0, y0 + rng.uniform(10, 150), x0 + rng.uniform(10, 150),
                               soft=rng.uniform(0.4, 2))
        _paint(canvas, cover, u, v, np.array(_OBJECTS[rng.integers(len(_OBJECTS))], np.float32), light, rng)
    for _ in range(rng.integers(0, 3)):
        _figure(canvas, rng, yy, xx, light)
    # light falling across the frame, a vignette and a colour cast
    ramp = 1.0 + rng.uniform(0.1, 0.35) * ((xx / SIZE - 0.5) * light[0] + (yy / SIZE - 0.5) * light[1])
    vignette = 1.0 - rng.uniform(0.1, 0.4) * (((xx / SIZE - 0.5) ** 2 + (yy / SIZE - 0.5) ** 2) * 2)
    cast = np.array(rng.uniform(0.9, 1.1, 3), np.float32) * rng.uniform(0.7, 1.2)
    canvas = canvas * (ramp * vignette)[..., None] * cast
    # a 3x3 box blur (lens softness), then sensor noise
    padded = np.pad(canvas, ((1, 1), (1, 1), (0, 0)), mode="edge")
    canvas = sum(padded[dy:dy + SIZE, dx:dx + SIZE] for dy in range(3) for dx in range(3)) / 9.0
    canvas = canvas + rng.normal(0, rng.uniform(0.005, 0.03), canvas.shape)
    return np.clip(np.round(canvas * 255.0), 0, 255).astype(np.uint8)
