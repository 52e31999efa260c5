"""Seeded synthetic lane-segmentation data in the competition's real folder layout.

Each frame is a straight road seen in perspective from a car, with lane markings
painted both in the JPEG (white/yellow) and in the label PNG (their Apollo ids),
and a fixed per-camera hood labelled 255. Same arguments give byte-identical files.

    python -m paddle_lane.prepare.synth --out /tmp/synth --width 846 --height 428
"""
from __future__ import annotations

import argparse
import io
import re
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from paddle_lane.core.apollo_files import LABEL_NAME_SUFFIX
from paddle_lane.core.io_utils import atomic_write_bytes
from paddle_lane.core.labels import IGNORED_ID, NOISE_ID, label_table
from paddle_lane.core.resize import FULL_SIZE

REAL_WIDTH, REAL_HEIGHT = FULL_SIZE
HOOD_TOP = 1310 / 1710          # first hood row of the real data, as a fraction of the height
HORIZON = 0.45                  # vanishing-point row, as a fraction of the height
CAMERA_HEIGHT_M = 1.5
Z_NEAR, Z_FAR = 2.0, 150.0      # painted ground range in metres (the hood hides Z < ~6.4 m)
_SHIFT = 4                      # cv2 fixed-point bits: sub-pixel polygon corners
_DATE = "170927"
_START_MS = ((6 * 60 + 38) * 60 + 11) * 1000 + 892

YELLOW_IDS = frozenset({203, 204, 207, 208, 209, 219, 227, 233})
ARROW_CYCLE = (220, 224, 221, 225, 222, 226)

_ROAD_RE = re.compile(r"^Road(\d+)$")
_CAMERA_RE = re.compile(r"^Camera (\d+)$")

# Arrow shapes in metres, u to the right, v forward: bars (u0, v0, u1, v1) and
# heads (u, v, du, dv) = base centre and pointing direction.
_LEFT_TURN = ([(0, 0, 0, 2.2), (0, 2.2, -0.6, 3.2)], [(-0.6, 3.2, -0.6, 1.0)])
_ARROWS = {
    220: ([(0, 0, 0, 3.5)], [(0, 3.5, 0, 1)]),
    224: _LEFT_TURN,
    221: ([(0, 0, 0, 3.5), (0, 1.6, -0.6, 2.6)], [(0, 3.5, 0, 1), (-0.6, 2.6, -0.6, 1.0)]),
    226: ([(0, 0, 0, 2.2), (0, 2.2, -0.6, 3.2), (0, 2.2, 0.6, 3.2)],
          [(-0.6, 3.2, -0.6, 1.0), (0.6, 3.2, 0.6, 1.0)]),
    202: ([(0.4, 0, 0.4, 3.2), (0.4, 3.2, -0.4, 3.2), (-0.4, 3.2, -0.4, 2.2)], [(-0.4, 2.2, 0, -1)]),
}
_ARROWS[225] = ([(-a, b, -c, d) for a, b, c, d in _ARROWS[224][0]], [(-a, b, -c, d) for a, b, c, d in _ARROWS[224][1]])
_ARROWS[222] = ([(-a, b, -c, d) for a, b, c, d in _ARROWS[221][0]], [(-a, b, -c, d) for a, b, c, d in _ARROWS[221][1]])

# Road-text strokes in a unit box (u right, v forward/up), stretched along the road as painted text is.
_DIGITS = {
    "0": [(0, 0, 1, 0), (1, 0, 1, 1), (1, 1, 0, 1), (0, 1, 0, 0)],
    "4": [(0, 1, 0, 0.4), (0, 0.4, 1, 0.4), (0.75, 1, 0.75, 0)],
    "6": [(1, 1, 0, 1), (0, 1, 0, 0), (0, 0, 1, 0), (1, 0, 1, 0.5), (1, 0.5, 0, 0.5)],
}

# Lane-boundary styles: (style, id) with their probability for interior boundaries. Styles follow the
# Apollo names: b_ broken (201, 203), ds_ double solid (209, 213), sb_ solid + broken (206, 207).
_INTERIOR_STYLES = [(("broken", 201), 0.55), (("broken", 203), 0.08), (("solid", 200), 0.12),
                    (("double", 213), 0.08), (("solid_broken", 206), 0.09), (("solid_broken", 207), 0.08)]
_LEFT_EDGE_STYLES = [("solid", 204), ("double", 209), ("solid", 200)]


# ----------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class View:
    """A pinhole camera over a flat road: ground (X right, Z forward, metres) -> pixels."""
    width: int
    height: int
    vx: float
    vy: float
    fx: float
    fy: float
    min_px: float

    def project(self, x, z) -> np.ndarray:
        """Pixel (x, y) of ground points, stacked on the last axis."""
        x, z = np.broadcast_arrays(np.asarray(x, float), np.asarray(z, float))
        return np.stack([self.vx + self.fx * x / z, self.vy + self.fy * CAMERA_HEIGHT_M / z], -1)


def make_view(width: int, height: int, rng: np.random.Generator) -> View:
    """The camera of one frame: a small random shift of the vanishing point per frame."""
    return View(width, height,
                vx=width * (0.5 + rng.uniform(-0.025, 0.025)),
                vy=height * (HORIZON + rng.uniform(-0.012, 0.012)),
                fx=0.68 * width, fy=1.346 * height,   # the real camera's focal lengths, scaled
                min_px=max(2.0, 0.002 * width))       # markings survive a 4x downscale


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def strips(view: View, segs) -> np.ndarray:
    """Image quads (N, 4, 2) for ground segments (x0, z0, x1, z1, width_m).

    Widths follow perspective (wider near the bottom) but never go below view.min_px.
    """
    segs = np.asarray(segs, float).reshape(-1, 5)
    x0, z0, x1, z1, w = segs.T
    q0, q1 = view.project(x0, z0), view.project(x1, z1)
    m = _unit(q1 - q0) @ np.array([[0.0, 1.0], [-1.0, 0.0]])      # image normal
    g = _unit(np.stack([x1 - x0, z1 - z0], -1))
    n = np.stack([g[:, 1], -g[:, 0]], -1) * (w / 2)[:, None]        # ground normal * half width
    halves = []
    for x, z in ((x0, z0), (x1, z1)):
        across = view.project(x + n[:, 0], z + n[:, 1]) - view.project(x - n[:, 0], z - n[:, 1])
        halves.append(np.maximum(view.min_px / 2, np.abs((across * m).sum(-1)) / 2)[:, None])
    h0, h1 = halves
    return np.stack([q0 + m * h0, q1 + m * h1, q1 - m * h1, q0 - m * h0], 1)


def ground_poly(view: View, xs, zs) -> np.ndarray:
    """Image polygon (1, K, 2) of a ground polygon given by its corners."""
    return view.project(xs, zs)[None]


def arrow_polys(view: View, arrow_id: int, x: float, z: float) -> list[np.ndarray]:
    """Image polygons of one road arrow whose tail is at ground (x, z)."""
    bars, heads = _ARROWS[arrow_id]
    out = list(strips(view, [(x + u0, z + v0, x + u1, z + v1, 0.3) for u0, v0, u1, v1 in bars]))
    for u, v, du, dv in heads:
        d = _unit(np.array([du, dv], float))
        base = np.array([x + u, z + v])
        side = np.array([d[1], -d[0]]) * 0.55
        tri = np.stack([base + side, base + d * 1.5, base - side])
        out.append(view.project(tri[:, 0], tri[:, 1]))
    return out


# ----------------------------------------------------------------------------- painting

class Canvas:
    """An RGB image and its id label, painted together so they always agree."""

    def __init__(self, width: int, height: int):
        self.image = np.zeros((height, width, 3), np.uint8)
        self.label = np.zeros((height, width), np.uint8)

    def fill(self, polys, rgb, label_id: int | None) -> None:
        """Fill each polygon (pixels) in the image, and with label_id in the label unless None."""
        color = tuple(int(c) for c in rgb)
        for poly in polys:
            # one call per polygon: cv2 XORs overlapping polygons of a single call
            pts = [np.round(np.asarray(poly) * (1 << _SHIFT)).astype(np.int32)]
            cv2.fillPoly(self.image, pts, color, cv2.LINE_AA, _SHIFT)
            if label_id is not None:
                cv2.fillPoly(self.label, pts, int(label_id), cv2.LINE_8, _SHIFT)


def _shade(rgb, brightness: float) -> tuple[int, int, int]:
    """A colour under the frame's brightness, as the int tuple cv2 wants."""
    return tuple(int(min(255, round(c * brightness))) for c in rgb)


def marking_rgb(label_id: int, brightness: float) -> tuple[int, int, int]:
    """Paint colour of a marking: yellow or white, always far brighter than asphalt."""
    return _shade((228, 190, 66) if label_id in YELLOW_IDS else (236, 236, 230), brightness)


@dataclass
class Road:
    """A record's road (lanes, styles, colours) placed for one frame's lateral position."""
    boundaries: list          # [(x, style, id)] left to right
    lane_width: float
    asphalt: tuple
    ground: tuple
    buildings: list           # [(dx, width, height, grey)] fractions of the image size
    brightness: float

    @property
    def left(self) -> float:
        return self.boundaries[0][0]

    @property
    def right(self) -> float:
        return self.boundaries[-1][0]

    def lane_centres(self) -> list[float]:
        xs = [b[0] for b in self.boundaries]
        return [(a + b) / 2 for a, b in zip(xs[:-1], xs[1:])]

    def ego_lane(self) -> int:
        """Index of the lane the camera (X = 0) is in."""
        return int(np.argmin([abs(c) for c in self.lane_centres()]))


def record_layout(rng: np.random.Generator) -> dict:
    """What stays fixed within a record: lanes, their styles, colours, skyline."""
    n_left, n_right = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    if n_left + n_right == 0:
        n_right = 1
    probs = np.array([p for _, p in _INTERIOR_STYLES])
    picks = rng.choice(len(_INTERIOR_STYLES), size=n_left + n_right, p=probs / probs.sum())
    interior = [_INTERIOR_STYLES[i][0] for i in picks]
    if not any(style == "broken" for style, _ in interior):
        interior[int(rng.integers(len(interior)))] = ("broken", 201)   # guiding lines in every frame
    styles = [_LEFT_EDGE_STYLES[int(rng.integers(3))], *interior, ("solid", 200)]
    grey = float(rng.uniform(78, 100))
    return {
        "n_left": n_left, "styles": styles, "lane_width": float(rng.uniform(3.3, 3.8)),
        "asphalt": (grey, grey, grey + rng.uniform(0, 6)),
        "ground": tuple(rng.uniform(100, 135) * np.array([1.0, 0.96, 0.88])),
        "buildings": [(rng.uniform(-0.55, 0.55), rng.uniform(0.04, 0.16), rng.uniform(0.04, 0.3),
                       rng.uniform(95, 185)) for _ in range(int(rng.integers(5, 10)))],
    }


def place_road(layout: dict, rng: np.random.Generator, camera_offset: float) -> Road:
    """The record's road seen from this frame's lateral position in the ego lane."""
    lw = layout["lane_width"]
    ego = rng.uniform(-0.45, 0.45) + camera_offset
    xs = [-ego + lw * (k - 0.5) for k in range(-layout["n_left"], len(layout["styles"]) - layout["n_left"])]
    return Road(boundaries=[(x, s, i) for x, (s, i) in zip(xs, layout["styles"])], lane_width=lw,
                asphalt=layout["asphalt"], ground=layout["ground"], buildings=layout["buildings"],
                brightness=float(rng.uniform(0.85, 1.15)))


def paint_background(canvas: Canvas, view: View, road: Road) -> None:
    """Sky gradient, a skyline on the horizon, and off-road ground (all label 0)."""
    img, b = canvas.image, road.brightness
    hz = int(round(view.vy))
    t = np.linspace(0.0, 1.0, hz, dtype=np.float32)[:, None, None]
    sky = (1 - t) * np.array([150, 176, 204], np.float32) + t * np.array([214, 220, 226], np.float32)
    sky = np.clip(sky * b, 0, 255).astype(np.uint8)
    img[:hz] = cv2.resize(sky, (view.width, hz), interpolation=cv2.INTER_NEAREST)   # cv2 beats numpy broadcasting 4x
    for dx, bw, bh, grey in road.buildings:
        x0 = int(view.vx + dx * view.width)
        pt0, pt1 = (x0, int(hz - bh * view.height)), (int(x0 + bw * view.width), hz)
        cv2.rectangle(img, pt0, pt1, _shade((grey, grey * 0.97, grey * 0.93), b), -1)
    cv2.rectangle(img, (0, hz), (view.width, view.height), _shade(road.ground, b), -1)


def paint_asphalt(canvas: Canvas, view: View, road: Road) -> None:
    """The road surface, with shoulders beyond the edge lines for parking and hatching."""
    xl, xr = road.left - 3.0, road.right + 3.2
    poly = ground_poly(view, [xl, xr, xr, xl], [Z_NEAR, Z_NEAR, Z_FAR, Z_FAR])
    canvas.fill(poly, _shade(road.asphalt, road.brightness), None)


def boundary_segments(x: float, style: str, zranges, phase: float) -> list[tuple]:
    """Ground segments of one lane boundary; dashes move with the car through `phase`."""
    def solid(xo, w):
        return [(xo, z0, xo, z1, w) for z0, z1 in zranges]

    def broken(xo, w, dash=4.0, period=10.0):
        out = []
        for z0, z1 in zranges:
            for s in np.arange(phase - period, z1, period):
                a, e = max(s, z0), min(s + dash, z1)
                if e - a > 0.2:
                    out.append((xo, a, xo, e, w))
        return out

    if style == "solid":
        return solid(x, 0.18)
    if style == "double":
        return solid(x - 0.13, 0.12) + solid(x + 0.13, 0.12)
    if style == "broken":
        return broken(x, 0.18)
    return solid(x - 0.13, 0.12) + broken(x + 0.13, 0.12)   # solid_broken


def paint_boundaries(canvas: Canvas, view: View, road: Road, zranges, phase: float) -> None:
    """Every lane boundary of the road, painted over the Z ranges given."""
    for x, style, lid in road.boundaries:
        canvas.fill(strips(view, boundary_segments(x, style, zranges, phase)), marking_rgb(lid, road.brightness), lid)


def paint_intersection(canvas: Canvas, view: View, road: Road, zs: float) -> None:
    """Stop line 217 across the lanes at zs, and a zebra 214 beyond it."""
    canvas.fill(strips(view, [(road.left, zs, road.right, zs, 0.5)]), marking_rgb(217, road.brightness), 217)
    xs = np.arange(road.left - 2.5, road.right + 2.8, 1.0)
    canvas.fill(strips(view, [(x, zs + 2.0, x, zs + 6.0, 0.5) for x in xs]), marking_rgb(214, road.brightness), 214)


def paint_arrows(canvas: Canvas, view: View, road: Road, z: float, ids) -> None:
    """One arrow per lane (ids left to right), tails at distance z."""
    for xc, aid in zip(road.lane_centres(), ids):
        canvas.fill(arrow_polys(view, aid, xc, z), marking_rgb(aid, road.brightness), aid)


def paint_parking(canvas: Canvas, view: View, road: Road, z: float) -> None:
    """Three parallel-parking bays 210 on the right shoulder."""
    xa, xb = road.right + 0.2, road.right + 2.6
    segs = [(xb, z, xb, z + 18.0, 0.15)] + [(xa, z + 6.0 * k, xb, z + 6.0 * k, 0.15) for k in range(4)]
    canvas.fill(strips(view, segs), marking_rgb(210, road.brightness), 210)


def paint_no_parking(canvas: Canvas, view: View, road: Road, z: float) -> None:
    """A yellow no-parking grid 227 (box and crossing diagonals) on the right shoulder."""
    xa, xb, z1 = road.right + 0.4, road.right + 2.6, z + 8.0
    segs = [(xa, z, xb, z, 0.15), (xb, z, xb, z1, 0.15), (xb, z1, xa, z1, 0.15), (xa, z1, xa, z, 0.15)]
    for k in range(4):
        segs += [(xa, z + 2 * k, xb, z + 2 * k + 2, 0.12), (xb, z + 2 * k, xa, z + 2 * k + 2, 0.12)]
    canvas.fill(strips(view, segs), marking_rgb(227, road.brightness), 227)


def paint_reduction(canvas: Canvas, view: View, road: Road, z: float) -> None:
    """Speed-reduction fishbones 205 along both edges of the ego lane."""
    lane = road.ego_lane()
    edges = ((road.boundaries[lane][0], 1.0), (road.boundaries[lane + 1][0], -1.0))
    segs = [(xb + s * 0.25, zz, xb + s * 0.8, zz + 1.0, 0.22) for xb, s in edges for zz in np.arange(z, z + 20, 2.5)]
    canvas.fill(strips(view, segs), marking_rgb(205, road.brightness), 205)


def paint_text(canvas: Canvas, view: View, road: Road, z: float, text: str) -> None:
    """Painted road text 250 (a speed number) in the ego lane, stretched along the road."""
    xc, w, h = road.lane_centres()[road.ego_lane()], 0.6, 3.0
    x0 = xc - (len(text) * (w + 0.3) - 0.3) / 2
    segs = [(x0 + i * (w + 0.3) + u0 * w, z + v0 * h, x0 + i * (w + 0.3) + u1 * w, z + v1 * h, 0.2)
            for i, ch in enumerate(text) for u0, v0, u1, v1 in _DIGITS[ch]]
    canvas.fill(strips(view, segs), marking_rgb(250, road.brightness), 250)


def paint_diamond(canvas: Canvas, view: View, road: Road, z: float) -> None:
    """An attention diamond 212 (ignoreInEval) in the ego lane."""
    xc = road.lane_centres()[road.ego_lane()]
    pts = [(xc, z), (xc + 0.9, z + 3), (xc, z + 6), (xc - 0.9, z + 3)]
    segs = [(*pts[i], *pts[(i + 1) % 4], 0.2) for i in range(4)]
    canvas.fill(strips(view, segs), marking_rgb(212, road.brightness), 212)


def paint_chevron(canvas: Canvas, view: View, road: Road, z0: float, z1: float) -> None:
    """A hatched chevron area 218 (ignoreInEval) in the median left of the road."""
    xa, xb = road.left - 2.6, road.left - 0.5
    segs = [(xa, z0, xa, z1, 0.15), (xb, z0, xb, z1, 0.15)]
    segs += [(xa, zz, xb, zz + 2.2, 0.3) for zz in np.arange(z0, z1 - 2.2, 3.0)]
    canvas.fill(strips(view, segs), marking_rgb(218, road.brightness), 218)


def paint_noise(canvas: Canvas, view: View, road: Road, rng: np.random.Generator, count: int) -> None:
    """Worn-paint blobs labelled 249: paler than asphalt, darker than paint."""
    ang = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    rgb = _shade(np.asarray(road.asphalt) * 1.4, road.brightness)
    for _ in range(count):
        x, z = rng.uniform(road.left, road.right), rng.uniform(8.0, 50.0)
        r = rng.uniform(0.25, 0.7, size=ang.size)
        canvas.fill([view.project(x + r * np.cos(ang), z + 2.0 * r * np.sin(ang))], rgb, NOISE_ID)


def paint_cars(canvas: Canvas, view: View, road: Road, rng: np.random.Generator, z_min: float) -> None:
    """Cars far ahead: they hide the markings behind them, so the label is 0 there."""
    cars = [(rng.choice(road.lane_centres()), rng.uniform(z_min, z_min + 35)) for _ in range(int(rng.integers(0, 3)))]
    for xc, z in sorted(cars, key=lambda c: -c[1]):
        x0, x1 = view.vx + view.fx * (xc - 0.9) / z, view.vx + view.fx * (xc + 0.9) / z
        y1, y0 = view.vy + view.fy * CAMERA_HEIGHT_M / z, view.vy + view.fy * (CAMERA_HEIGHT_M - 1.45) / z
        body = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        canvas.fill([body], _shade(rng.uniform(25, 70, 3), road.brightness), 0)
        glass = np.array([[x0, y0], [x1, y0], [x1, y0 + (y1 - y0) * 0.35], [x0, y0 + (y1 - y0) * 0.35]])
        canvas.fill([glass], _shade((20, 24, 28), road.brightness), None)


def hood_polygon(camera: str, width: int, height: int) -> np.ndarray:
    """The ego hood: a smooth bump from row ~1310/1710 down, fixed per camera."""
    odd = int(_CAMERA_RE.match(camera).group(1)) % 2
    cx, curve = (0.55, 0.34) if odd else (0.45, 0.30)
    xs = np.linspace(0, width, 65)
    ys = height * (HOOD_TOP + curve * (xs / width - cx) ** 2)
    return np.concatenate([np.stack([xs, ys], 1), [[width, height + 1], [0, height + 1]]])


def paint_hood(canvas: Canvas, camera: str, brightness: float) -> None:
    h, w = canvas.label.shape
    canvas.fill([hood_polygon(camera, w, h)], _shade((30, 30, 34), brightness), IGNORED_ID)


def add_sensor_noise(image: np.ndarray, rng: np.random.Generator, bands: int = 8) -> np.ndarray:
    """Mild seeded Gaussian noise (no blur: the lines must stay sharp).

    One band of noise rows is drawn and reused, shifted sideways, for every band of the
    image: drawing a full frame of normals would dominate the time of a real-size frame.
    """
    h, w = image.shape[:2]
    bh = -(-h // bands)
    noise = rng.standard_normal((bh, w, 3), dtype=np.float32) * np.float32(rng.uniform(2.5, 5.0))
    shifts = rng.integers(0, w, size=bands)
    out = np.empty_like(image)
    for k in range(bands):
        rows = slice(k * bh, min(h, (k + 1) * bh))
        n = rows.stop - rows.start
        if n > 0:
            out[rows] = cv2.add(image[rows], np.roll(noise[:n], int(shifts[k]), axis=1), dtype=cv2.CV_8U)
    return out


# ----------------------------------------------------------------------------- one frame

@dataclass(frozen=True)
class FrameSpec:
    """Everything that decides one frame's pixels."""
    width: int
    height: int
    camera: str
    record_seed: tuple
    frame_seed: tuple
    group: int          # 0: intersection (stop, zebra, arrows); 1: roadside (parking, 205/227/250)
    frame_index: int    # rotates the arrow types across frames


def render_frame(spec: FrameSpec) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, Apollo id label) of one synthetic frame."""
    layout = record_layout(np.random.default_rng(spec.record_seed))
    rng = np.random.default_rng(spec.frame_seed)
    view = make_view(spec.width, spec.height, rng)
    offset = -0.2 if int(_CAMERA_RE.match(spec.camera).group(1)) % 2 else 0.2   # the two cameras sit apart
    road = place_road(layout, rng, offset)
    canvas = Canvas(spec.width, spec.height)
    paint_background(canvas, view, road)
    paint_asphalt(canvas, view, road)
    phase = rng.uniform(0, 10.0)
    if spec.group == 0:
        z_free = _paint_intersection_scene(canvas, view, road, rng, phase, spec.frame_index)
    else:
        z_free = _paint_roadside_scene(canvas, view, road, rng, phase)
    if rng.random() < 0.35 and z_free[1] - z_free[0] > 8:
        paint_chevron(canvas, view, road, *z_free)
    paint_noise(canvas, view, road, rng, int(rng.integers(1, 4)) if rng.random() < 0.7 else 0)
    paint_cars(canvas, view, road, rng, 30.0 if spec.group else max(30.0, z_free[1] + 10))
    paint_hood(canvas, spec.camera, road.brightness)
    return add_sensor_noise(canvas.image, rng), canvas.label


def _paint_intersection_scene(canvas, view, road, rng, phase, frame_index) -> tuple[float, float]:
    """Lines stopping at a stop line, a zebra beyond, an arrow in every lane; returns the free Z range."""
    zs = rng.uniform(16.0, 24.0)
    paint_boundaries(canvas, view, road, [(Z_NEAR, zs - 0.4), (zs + 22.0, Z_FAR)], phase)
    paint_intersection(canvas, view, road, zs)
    lanes = len(road.lane_centres())
    ids = [ARROW_CYCLE[(frame_index + j) % len(ARROW_CYCLE)] for j in range(lanes)]
    if rng.random() < 0.25:
        ids[0] = 202     # u-turn arrow in the leftmost lane
    paint_arrows(canvas, view, road, max(7.2, zs - 13.0), ids)
    return 8.0, zs - 1.0


def _paint_roadside_scene(canvas, view, road, rng, phase) -> tuple[float, float]:
    """Continuous lines, parking bays and a non-empty mix of 205/227/250; returns the free Z range."""
    paint_boundaries(canvas, view, road, [(Z_NEAR, Z_FAR)], phase)
    zp = rng.uniform(7.0, 11.0)
    paint_parking(canvas, view, road, zp)
    extras = rng.random(3) < 0.6
    if not extras.any():
        extras[int(rng.integers(3))] = True
    if extras[0]:
        paint_no_parking(canvas, view, road, zp + 20.0)
    if extras[1]:
        paint_reduction(canvas, view, road, rng.uniform(22.0, 28.0))
    if extras[2]:
        paint_text(canvas, view, road, rng.uniform(8.5, 10.0), ("40", "60")[int(rng.integers(2))])
    if rng.random() < 0.35:
        paint_diamond(canvas, view, road, rng.uniform(14.0, 15.5))
    return 8.0, 40.0


# ----------------------------------------------------------------------------- files

def palette() -> list[int]:
    """Flat 768-entry PNG palette: index i has the Apollo colour of id i, others black."""
    pal = np.zeros((256, 3), np.uint8)
    for lab in label_table():
        pal[lab.id] = lab.color
    return pal.ravel().tolist()


def png_bytes(ids: np.ndarray, as_palette: bool = False) -> bytes:
    """A gray ("L") or palette ("P") PNG whose pixel values are the ids."""
    im = Image.fromarray(np.ascontiguousarray(ids, np.uint8))
    if as_palette:
        im.putpalette(palette())   # turns the "L" image into "P" with the same indices
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG file bytes of an RGB image."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _timestamps(seed: int, count: int) -> list[str]:
    """Strictly increasing '<date>_<HHMMSSmmm>' stamps, so keys are unique and ordered."""
    steps = np.random.default_rng([seed, 0]).integers(400, 1400, size=count)
    out = []
    for ms in _START_MS + np.cumsum(steps):
        h, rest = divmod(int(ms), 3_600_000)
        m, rest = divmod(rest, 60_000)
        s, milli = divmod(rest, 1000)
        out.append(f"{_DATE}_{h:02d}{m:02d}{s:02d}{milli:03d}")
    return out


def _validate(roads, cameras, width, height, records_per_road, frames_per_record, test_frames, jpeg_quality) -> None:
    """Refuse arguments that would write a tree the real-data tools cannot parse."""
    if not roads or not cameras:
        raise ValueError("roads and cameras must not be empty")
    for road in roads:
        if not _ROAD_RE.match(road):
            raise ValueError(f"road {road!r}: expected a name like 'Road02'")
    for cam in cameras:
        if not _CAMERA_RE.match(cam):
            raise ValueError(f"camera {cam!r}: expected a name like 'Camera 5'")
    if len(set(roads)) != len(roads) or len(set(cameras)) != len(cameras):
        raise ValueError("roads and cameras must be distinct")
    if width < 64 or height < 32:
        raise ValueError(f"size {width}x{height}: at least 64x32")
    if records_per_road < 1 or frames_per_record < 1 or test_frames < 0:
        raise ValueError("records_per_road and frames_per_record must be >= 1, test_frames >= 0")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality {jpeg_quality}: must be in 1..100")


def _pair_paths(root: Path, road: str, record: str, camera: str, stem: str) -> dict:
    """Image, gray label and older (palette) label paths of one frame, as in the real tree."""
    low = road.lower()
    cam_file = f"{stem}_{camera.replace(' ', '_')}"
    return {
        "image": root / road / f"ColorImage_{low}" / "ColorImage" / record / camera / f"{cam_file}.jpg",
        "label": root / "Gray_Label" / f"Label_{low}" / "Label" / record / camera / f"{cam_file}{LABEL_NAME_SUFFIX}",
        "label_alt": root / road / f"Labels_{low}" / "Label" / record / camera / f"{cam_file}{LABEL_NAME_SUFFIX}",
    }


def make_dataset(root, *, roads=("Road02", "Road03"), records_per_road=2, frames_per_record=3,
                 cameras=("Camera 5", "Camera 6"), width=REAL_WIDTH, height=REAL_HEIGHT, seed=0,
                 palette_labels=True, test_frames=0, jpeg_quality=90) -> dict:
    """Write a synthetic dataset under `root` in the competition layout; return its pairs.

    Consecutive frames of a camera alternate between an intersection scene and a
    roadside scene, so any two of them together contain every apollo8 category.
    """
    roads, cameras = tuple(roads), tuple(cameras)
    _validate(roads, cameras, width, height, records_per_road, frames_per_record, test_frames, jpeg_quality)
    root = Path(root).resolve()
    n_train = len(roads) * records_per_road * frames_per_record * len(cameras)
    stamps = iter(_timestamps(seed, n_train + test_frames))
    pairs, g, rec_idx, shot = [], 0, 0, 0
    for road in roads:
        for r in range(1, records_per_road + 1):
            record = f"Record{r:03d}"
            for _ in range(frames_per_record):
                for ci, camera in enumerate(cameras):
                    spec = FrameSpec(width, height, camera, (seed, 1, rec_idx), (seed, 2, g),
                                     group=(shot + ci) % 2, frame_index=g)
                    pairs.append(_write_pair(root, road, record, camera, next(stamps), spec,
                                             palette_labels, jpeg_quality))
                    g += 1
                shot += 1
            rec_idx += 1
    tests = [_write_test_image(root, cameras[t % len(cameras)], next(stamps), t, width, height, seed, jpeg_quality)
             for t in range(test_frames)]
    return {"root": str(root), "pairs": pairs, "test_images": tests}


def _write_pair(root, road, record, camera, stamp, spec, palette_labels, jpeg_quality) -> dict:
    """Render one frame, write its image and labels, return its pair entry."""
    image, ids = render_frame(spec)
    paths = _pair_paths(root, road, record, camera, stamp)
    atomic_write_bytes(paths["image"], jpeg_bytes(image, jpeg_quality))
    atomic_write_bytes(paths["label"], png_bytes(ids))
    if palette_labels:
        atomic_write_bytes(paths["label_alt"], png_bytes(ids, as_palette=True))
    return {"key": paths["image"].stem, "road": road.lower(), "record": record, "camera": camera,
            "image": str(paths["image"]), "label": str(paths["label"]),
            "label_alt": str(paths["label_alt"]) if palette_labels else ""}


def _write_test_image(root, camera, stamp, t, width, height, seed, jpeg_quality) -> str:
    """Render and write one unlabelled image of the flat test folder."""
    spec = FrameSpec(width, height, camera, (seed, 3, t), (seed, 4, t), group=t % 2, frame_index=t)
    image, _ = render_frame(spec)
    path = root / "TestSet" / "ColorImage" / f"{stamp}_{camera.replace(' ', '_')}.jpg"
    atomic_write_bytes(path, jpeg_bytes(image, jpeg_quality))
    return str(path)


def main(argv=None) -> int:
    """CLI: write a dataset and print a one-line summary."""
    ap = argparse.ArgumentParser(prog="python -m paddle_lane.prepare.synth", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="dataset root to write")
    ap.add_argument("--width", type=int, default=REAL_WIDTH)
    ap.add_argument("--height", type=int, default=REAL_HEIGHT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--records-per-road", type=int, default=2)
    ap.add_argument("--frames-per-record", type=int, default=3)
    ap.add_argument("--test-frames", type=int, default=0)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        info = make_dataset(args.out, width=args.width, height=args.height, seed=args.seed,
                            records_per_road=args.records_per_road, frames_per_record=args.frames_per_record,
                            test_frames=args.test_frames)
    except ValueError as exc:
        ap.error(str(exc))
    print(f"synth: {len(info['pairs'])} pairs, {len(info['test_images'])} test images, "
          f"{args.width}x{args.height}, seed {args.seed} -> {info['root']} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
