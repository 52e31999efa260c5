"""One upload in, one answer out, shared by the in-process server and the Redis workers:
check an upload before decoding it (kind, size, dimensions), decode it, and render a
prediction as the submission PNG, per-class pixel counts (JSON) or a JPEG overlay."""
from __future__ import annotations

import io
import json
import warnings
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from paddle_lane.core.label_io import UnreadableFileError, decode_image
from paddle_lane.core.resize import FULL_SIZE

FORMATS = {"png": "image/png", "json": "application/json", "overlay": "image/jpeg"}
IMAGE_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}
MIN_SIDE = 16


class BadInput(Exception):
    """A request the service refuses: HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise BadInput(400, f"format {fmt!r}: choose from {sorted(FORMATS)}")
    return fmt


def inspect_upload(data: bytes, max_bytes: int, max_pixels: int,
                   rows_cut: Callable[[int], int] = lambda height: 0) -> tuple[int, int]:
    """(width, height) from the header of a JPEG or PNG upload, or BadInput: empty (400), too big
    (413), not a JPEG/PNG (415), too small or not taller than the crop (422). Nothing is decoded."""
    if not data:
        raise BadInput(400, "empty upload: send a JPEG or PNG image")
    if len(data) > max_bytes:
        raise BadInput(413, f"upload of {len(data)} bytes is over the limit of {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                kind, (w, h) = im.format, im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadInput(413, f"image dimensions over the limit of {max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError):
        raise BadInput(415, "not a JPEG or PNG image") from None
    if kind not in IMAGE_TYPES:
        raise BadInput(415, f"{kind} image: send a JPEG or PNG")
    if w * h > max_pixels:
        raise BadInput(413, f"image {w}x{h} is over the limit of {max_pixels} pixels")
    if w < MIN_SIDE or h < MIN_SIDE or h - rows_cut(h) < MIN_SIDE:
        raise BadInput(422, f"image {w}x{h} is too small (at least {MIN_SIDE} px each way, and {MIN_SIDE} rows "
                            f"below the {rows_cut(h)} cut from its top)")
    return w, h


def model_inputs(predictor, data: bytes, full_size: tuple[int, int]) -> list[np.ndarray]:
    """The predictor's inputs for an upload, decoded exactly as `infer` decodes a file (the same
    reduced JPEG decode), so a served mask equals the submission's; BadInput for a corrupt file."""
    try:
        return predictor.prepare_bytes(data, full_size)
    except UnreadableFileError as exc:
        raise BadInput(400, f"corrupt image: {exc}") from None
    except ValueError as exc:  # not taller than the crop
        raise BadInput(422, str(exc)) from None


def class_counts(train_ids: np.ndarray, scheme) -> dict:
    """Per-class pixel counts at full size and the share of lane pixels (every class but background)."""
    counts = np.bincount(train_ids.ravel(), minlength=scheme.num_classes)[:scheme.num_classes]
    decode = scheme.decode(np.arange(scheme.num_classes, dtype=np.uint8))
    total = int(train_ids.size)
    return {"width": int(train_ids.shape[1]), "height": int(train_ids.shape[0]), "pixels": total,
            "classes": [{"name": n, "train_id": i, "apollo_id": int(decode[i]), "pixels": int(counts[i])}
                        for i, n in enumerate(scheme.class_names)],
            "lane_fraction": float(counts[1:].sum() / total) if total else 0.0}


# An overlay is for looking at: drawn at most at a competition frame's area (3384 x 1710), so a huge
# upload costs what a frame costs (a 6000 x 6000 PNG overlay took 1.5 GB and 5.6 s drawn full size).
OVERLAY_MAX_PIXELS = FULL_SIZE[0] * FULL_SIZE[1]


def overlay_size(full_size: tuple[int, int]) -> tuple[int, int]:
    """The size an overlay is drawn at: the upload's, scaled down to OVERLAY_MAX_PIXELS if larger."""
    w, h = full_size
    if w * h <= OVERLAY_MAX_PIXELS:
        return w, h
    scale = (OVERLAY_MAX_PIXELS / (w * h)) ** 0.5
    return max(1, int(w * scale)), max(1, int(h * scale))


def decode_upload_at(data: bytes, full_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The upload as RGB at `size`: decoded at the largest JPEG DCT reduction that still covers it
    (PNGs are decoded whole, then shrunk), then area-resized to exactly `size`."""
    reduce = next(r for r in (8, 4, 2, 1) if full_size[0] // r >= size[0] and full_size[1] // r >= size[1])
    try:
        rgb = decode_image(data, reduce, "upload")
    except UnreadableFileError as exc:
        raise BadInput(400, f"corrupt image: {exc}") from None
    if (rgb.shape[1], rgb.shape[0]) != size:
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return rgb


def render_answer(predictor, probs: np.ndarray, data: bytes, full_size: tuple[int, int], fmt: str) -> bytes:
    """The body for one prediction: full-size ids rendered in `fmt`, or an overlay drawn at
    overlay_size (the upload is decoded for an overlay only)."""
    if fmt == "overlay":
        size = overlay_size(full_size)
        return render(predictor.to_train_ids(probs, size), fmt, predictor.scheme, decode_upload_at(data, full_size, size))
    return render(predictor.to_train_ids(probs, full_size), fmt, predictor.scheme)


def render(train_ids: np.ndarray, fmt: str, scheme, rgb: np.ndarray | None = None) -> bytes:
    """The answer body: the submission PNG (Apollo ids, as infer writes it), JSON counts, or an overlay JPEG."""
    if fmt == "png":
        ok, buf = cv2.imencode(".png", scheme.decode(train_ids), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        return buf.tobytes()
    if fmt == "json":
        return json.dumps(class_counts(train_ids, scheme)).encode()
    from paddle_lane.core.visual import overlay
    bgr = cv2.cvtColor(overlay(rgb, train_ids, scheme.palette()), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return buf.tobytes()
