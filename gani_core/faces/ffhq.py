"""The FFHQ alignment: from a face's 68 landmarks to a square crop that puts the eyes and mouth where FFHQ's
generators expect them. Pure numpy, Pillow and scipy; no dlib (the landmarks come from gani_core.faces.detect).

The recipe, as published with the FFHQ dataset (Karras et al. 2019), written here from its description:

1. Eye centres: the means of landmarks 36-41 and 42-47; mouth corners: landmarks 48 and 54.
   ``eye_to_eye`` = right eye - left eye; ``eye_to_mouth`` = mouth centre - eye midpoint.
2. The quad's half-axes: ``x`` along ``eye_to_eye - rot90(eye_to_mouth)`` (the face's horizontal, leaning on
   both cues), scaled to ``max(2.0 |eye_to_eye|, 1.8 |eye_to_mouth|)``; ``y = rot90(x)``. Its centre is
   ``eye_mid + 0.1 eye_to_mouth``; its corners ``c - x - y, c - x + y, c + x + y, c + x - y`` (top left, bottom
   left, bottom right, top right in image coordinates, y down). Its side is ``2 |x|``.
3. Shrink: a photo whose quad is over twice the output size is first reduced by the whole factor
   ``floor(side / resolution / 2)`` (Lanczos), so the final resampling never skips pixels.
4. Crop: the quad's bounding box plus a border of ``max(round(0.1 side), 3)`` px, within the photo.
5. Pad: where the quad (plus border) still reaches outside the photo (a face cut by the border, or near it),
   the photo is extended by reflection, at least ``round(0.3 side)`` px on each side; the padded region is
   blurred (Gaussian, sigma ``0.02 side``) and blended towards the photo's median colour, increasingly towards
   the outer edge, so mirrored features do not read as a second face.
6. Transform: the quad is mapped onto a square of ``SUPERSAMPLE * resolution`` px (Pillow's QUAD transform,
   bilinear), then reduced to ``resolution`` (Lanczos): FFHQ's 4096 px for its 1024 px images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

# The quad is rendered at this many times the output resolution, then reduced (FFHQ: 4096 for 1024).
SUPERSAMPLE = 4

LEFT_EYE = slice(36, 42)      # the subject's right eye, on the image's left
RIGHT_EYE = slice(42, 48)
MOUTH_LEFT, MOUTH_RIGHT = 48, 54


def _rot90(v: np.ndarray) -> np.ndarray:
    """``v`` turned by 90 degrees: (vx, vy) -> (-vy, vx)."""
    return np.array([-v[1], v[0]])


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two eye centres [2] (x, y) of 68 landmarks [68, 2]: image-left eye first."""
    assert landmarks.shape == (68, 2), landmarks.shape
    return landmarks[LEFT_EYE].mean(axis=0), landmarks[RIGHT_EYE].mean(axis=0)


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The oriented square FFHQ crops, [4, 2] (x, y) corners in the landmarks' pixels: top left, bottom left,
    bottom right, top right (steps 1-2 of the module docstring)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    eye_left, eye_right = eye_centres(landmarks)
    eye_mid = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (landmarks[MOUTH_LEFT] + landmarks[MOUTH_RIGHT]) / 2 - eye_mid
    x = eye_to_eye - _rot90(eye_to_mouth)
    x = x / np.hypot(*x) * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = _rot90(x)
    c = eye_mid + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def quad_side(quad: np.ndarray) -> float:
    """The side of the square ``quad`` [4, 2], in pixels."""
    return float(np.hypot(*(quad[3] - quad[0])))


def warp_quad(rgb: np.ndarray, quad: np.ndarray, resolution: int) -> np.ndarray:
    """The square ``quad`` [4, 2] of ``rgb`` [H, W, 3] uint8 as [resolution, resolution, 3] uint8: steps 3-6 of
    the module docstring (shrink, crop, reflect padding, transform)."""
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8, (rgb.shape, rgb.dtype)
    assert quad.shape == (4, 2), quad.shape
    img = Image.fromarray(rgb)
    quad = np.asarray(quad, dtype=np.float64).copy()
    side = quad_side(quad)

    shrink = int(np.floor(side / resolution * 0.5))
    if shrink > 1:
        img = img.resize((int(np.rint(img.width / shrink)), int(np.rint(img.height / shrink))),
                         Image.Resampling.LANCZOS)
        quad /= shrink
        side /= shrink

    border = max(int(np.rint(side * 0.1)), 3)
    left, top, right, bottom = _bounds(quad)
    crop = (max(left - border, 0), max(top - border, 0), min(right + border, img.width),
            min(bottom + border, img.height))
    if crop != (0, 0, img.width, img.height):
        img = img.crop(crop)
        quad -= crop[:2]

    left, top, right, bottom = _bounds(quad)
    pad = np.array([max(border - left, 0), max(border - top, 0), max(right - img.width + border, 0),
                    max(bottom - img.height + border, 0)])
    if pad.max() > border - 4:
        pad = np.maximum(pad, int(np.rint(side * 0.3)))
        img = Image.fromarray(_reflect_pad(np.asarray(img), pad, side))
        quad += pad[:2]

    size = resolution * SUPERSAMPLE
    img = img.transform((size, size), Image.Transform.QUAD, tuple((quad + 0.5).flatten()), Image.Resampling.BILINEAR)
    return np.asarray(img.resize((resolution, resolution), Image.Resampling.LANCZOS))


def _bounds(quad: np.ndarray) -> tuple[int, int, int, int]:
    """The whole-pixel bounding box (left, top, right, bottom) of ``quad``."""
    (left, top), (right, bottom) = np.floor(quad.min(axis=0)), np.ceil(quad.max(axis=0))
    return int(left), int(top), int(right), int(bottom)


def _reflect_pad(rgb: np.ndarray, pad: np.ndarray, side: float) -> np.ndarray:
    """``rgb`` [H, W, 3] uint8 extended by reflection by ``pad`` (left, top, right, bottom) px, the extension
    blurred and faded towards the median colour (step 5 of the module docstring)."""
    left, top, right, bottom = (int(p) for p in pad)
    img = np.pad(rgb.astype(np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    h, w, _ = img.shape
    ys, xs = np.ogrid[:h, :w]
    # How deep into the padding a pixel lies, as a fraction of that side's padding: 1 at the outer edge, 0 where
    # the photo begins, negative inside it.
    nearest_x = np.minimum(xs / max(left, 1), (w - 1 - xs) / max(right, 1)).astype(np.float32)
    nearest_y = np.minimum(ys / max(top, 1), (h - 1 - ys) / max(bottom, 1)).astype(np.float32)
    depth = np.maximum(1.0 - nearest_x, 1.0 - nearest_y)[:, :, None]
    sigma = side * 0.02
    img += (gaussian_filter(img, [sigma, sigma, 0]) - img) * np.clip(depth * 3.0 + 1.0, 0.0, 1.0)
    img += (np.median(img, axis=(0, 1)) - img) * np.clip(depth, 0.0, 1.0)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
