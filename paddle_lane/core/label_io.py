"""Reading images and labels so that every label flavour yields Apollo ids.

Gray ("L") and palette ("P") PNGs both store ids as pixel indices: PIL gives those
indices directly. cv2's gray reading of a palette PNG returns luminance, which
silently corrupts lane pixels, so labels are never read with cv2 here.
RGB colour labels are mapped back to ids through the label table's colours.
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from paddle_lane.core.labels import label_table


class UnreadableFileError(ValueError):
    """A file that cannot be decoded (corrupt, truncated, not an image)."""


class UnknownColorError(ValueError):
    """An RGB label containing colours that are not in the Apollo table."""


def _color_lut() -> tuple[np.ndarray, np.ndarray]:
    """Packed 24-bit RGB keys (sorted) and the id for each."""
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in (lab.color for lab in label_table())], np.int64)
    ids = np.array([lab.id for lab in label_table()], np.uint8)
    order = np.argsort(keys)
    return keys[order], ids[order]


def rgb_to_ids(rgb: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Map an HxWx3 RGB colour label to Apollo ids; unknown colours raise, listing them."""
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    uniq, inverse = np.unique(packed, return_inverse=True)
    keys, ids = _color_lut()
    pos = np.clip(np.searchsorted(keys, uniq), 0, len(keys) - 1)
    found = keys[pos] == uniq
    if not found.all():
        bad = [((int(u) >> 16) & 255, (int(u) >> 8) & 255, int(u) & 255) for u in uniq[~found][:5]]
        raise UnknownColorError(f"{source}: {int((~found).sum())} colour(s) not in the Apollo table, e.g. {bad}")
    return ids[pos][inverse].reshape(rgb.shape[:2])


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"


def _gray8_png(data: np.ndarray) -> bool:
    """True for a complete 8-bit grayscale PNG (IHDR bit depth 8, colour type 0)."""
    head = data[:26].tobytes()
    return (len(head) == 26 and head[:8] == PNG_SIGNATURE and head[24] == 8 and head[25] == 0
            and PNG_END in data[-16:].tobytes())


def read_label(path: str | Path) -> np.ndarray:
    """Apollo ids (uint8 HxW) from a gray, palette or RGB colour label PNG."""
    path = str(path)
    data = np.fromfile(path, dtype=np.uint8) if Path(path).is_file() else np.zeros(0, np.uint8)
    if _gray8_png(data):
        # gray PNGs hold ids directly; cv2 decodes them faster than PIL (palette ones never come here)
        ids = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        if ids is not None and ids.ndim == 2 and ids.dtype == np.uint8:
            return ids
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("L", "P"):
                arr = np.asarray(im)  # palette indices are the ids; never convert()
            elif mode in ("RGB", "RGBA"):
                return rgb_to_ids(np.asarray(im.convert("RGB")), path)
            elif mode in ("I", "I;16", "I;16B"):
                arr = np.asarray(im)
                if arr.max(initial=0) > 255:
                    raise UnreadableFileError(f"{path}: 16-bit label with values above 255")
            else:
                raise UnreadableFileError(f"{path}: unsupported label mode {mode!r}")
    except (OSError, SyntaxError) as exc:  # PIL raises these for truncated / corrupt files
        raise UnreadableFileError(f"{path}: cannot decode label ({exc})") from exc
    return np.ascontiguousarray(arr, dtype=np.uint8)


def read_image(path: str | Path, reduce: int = 1) -> np.ndarray:
    """RGB uint8 HxWx3. `reduce` in (1, 2, 4, 8) decodes JPEGs at 1/reduce size (much faster)."""
    data = np.fromfile(str(path), dtype=np.uint8)  # np.fromfile + imdecode: paths with spaces/unicode are fine
    return decode_image(data, reduce, path)


def decode_image(data: np.ndarray | bytes, reduce: int = 1, source: str | Path = "<bytes>") -> np.ndarray:
    """read_image for encoded bytes (an upload): JPEGs at 1/reduce size in the DCT domain, other
    formats decoded whole and area-averaged to the size cv2's reduced decode gives (cv2 itself
    subsamples them bilinearly, which aliases at 4x and 8x)."""
    if reduce not in (1, 2, 4, 8):
        raise ValueError(f"reduce must be 1, 2, 4 or 8, got {reduce}")
    data = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if data[:2].tobytes() == b"\xff\xd8":
        if b"\xff\xd9" not in data[-64:].tobytes():
            raise UnreadableFileError(f"{source}: truncated JPEG (no end-of-image marker)")
        return _decode_jpeg(data, reduce, source)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise UnreadableFileError(f"{source}: cannot decode image")
    if reduce > 1:
        h, w = img.shape[:2]
        img = cv2.resize(img, (max(1, w // reduce), max(1, h // reduce)), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _decode_jpeg(data: np.ndarray, reduce: int, path) -> np.ndarray:
    """PIL's draft mode: DCT-domain scaling straight to RGB, ~2x faster than cv2's reduced
    decode plus the BGR->RGB conversion (both libjpeg-turbo)."""
    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            if reduce > 1:
                im.draft("RGB", (im.width // reduce, im.height // reduce))  # PIL picks the scale by floor division
            rgb = np.asarray(im.convert("RGB") if im.mode != "RGB" else im)
    except (OSError, SyntaxError) as exc:
        raise UnreadableFileError(f"{path}: cannot decode image ({exc})") from exc
    if rgb.size and (rgb[-1] == GREY_FILL).all():
        raise UnreadableFileError(f"{path}: JPEG data ends early (premature end of data: the bottom decodes as "
                                  "flat grey); treated as corrupt")
    return rgb


# libjpeg decodes the blocks a cut-short JPEG lacks as flat (128, 128, 128) and only warns; a real
# frame never has a whole bottom row of exactly that grey, so the row tells a cut file.
GREY_FILL = 128


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header, without decoding pixels."""
    try:
        with Image.open(str(path)) as im:
            return im.size
    except (OSError, SyntaxError) as exc:
        raise UnreadableFileError(f"{path}: cannot read image header ({exc})") from exc
