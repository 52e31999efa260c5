"""The Apollo lane-marking label table and class schemes, as data.

Everything that maps ids goes through a 256-entry lookup table (one `cv2.LUT`
per label, ~3 ms on a full frame), never a loop over ids.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import yaml

DATA_DIR = Path(__file__).resolve().parent
LABEL_TABLE_FILE = DATA_DIR / "apollo_labels.csv"
SCHEME_DIR = DATA_DIR / "schemes"

IGNORE_INDEX = 255
NOISE_ID = 249
IGNORED_ID = 255
IGNORE_POLICIES = ("background", "ignore")


@dataclass(frozen=True)
class ApolloLabel:
    id: int
    name: str
    category: str
    ignore_in_eval: bool
    color: tuple[int, int, int]  # RGB


@lru_cache(maxsize=None)
def label_table() -> tuple[ApolloLabel, ...]:
    """The official Apollo lane-marking table (dataset-api laneMarkDetection.py)."""
    rows = []
    with open(LABEL_TABLE_FILE, newline="") as fh:
        for row in csv.DictReader(fh):
            rows.append(ApolloLabel(
                id=int(row["id"]), name=row["name"], category=row["category"],
                ignore_in_eval=row["ignore_in_eval"] == "True",
                color=(int(row["r"]), int(row["g"]), int(row["b"]))))
    return tuple(rows)


def known_ids() -> frozenset[int]:
    return frozenset(lab.id for lab in label_table())


def known_id_mask() -> np.ndarray:
    """bool[256]: True where a value is an id of the label table."""
    mask = np.zeros(256, bool)
    mask[list(known_ids())] = True
    return mask


def ignore_in_eval_ids() -> frozenset[int]:
    return frozenset(lab.id for lab in label_table() if lab.ignore_in_eval)


def apply_lut(ids: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map a uint8 array through a 256-entry uint8 table (cv2.LUT, any shape)."""
    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    flat = ids.reshape(1, -1) if ids.ndim < 2 else ids.reshape(-1, ids.shape[-1])
    return cv2.LUT(flat, np.ascontiguousarray(lut, dtype=np.uint8)).reshape(ids.shape)


@dataclass(frozen=True)
class SchemeClass:
    name: str
    ids: tuple[int, ...]
    submit_id: int


@dataclass(frozen=True)
class Scheme:
    """A grouping of Apollo ids into train ids, e.g. the competition's 8 categories."""
    name: str
    classes: tuple[SchemeClass, ...]
    default_class: int = 0
    source: str = field(default="", compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def _base_lut(self) -> np.ndarray:
        lut = np.full(256, self.default_class, np.uint8)
        for train_id, cls in enumerate(self.classes):
            lut[list(cls.ids)] = train_id
        return lut

    def _listed_ids(self) -> set[int]:
        return {i for c in self.classes for i in c.ids}

    def train_lut(self, ignore_policy: str = "background") -> np.ndarray:
        """Apollo id -> train id for the loss.

        ignore_policy says what ignoreInEval ids not listed in a class, 249 and 255
        become: 'background' (the winners' choice) or 'ignore' (IGNORE_INDEX).
        """
        if ignore_policy not in IGNORE_POLICIES:
            raise ValueError(f"ignore_policy: {ignore_policy!r} is not one of {IGNORE_POLICIES}")
        lut = self._base_lut()
        if ignore_policy == "ignore":
            ids = (ignore_in_eval_ids() | {NOISE_ID, IGNORED_ID}) - self._listed_ids()
            lut[sorted(ids)] = IGNORE_INDEX
        return lut

    def eval_lut(self) -> np.ndarray:
        """Ground-truth Apollo id -> train id, with every ignoreInEval id excluded."""
        lut = self._base_lut()
        lut[sorted(ignore_in_eval_ids() | {NOISE_ID, IGNORED_ID})] = IGNORE_INDEX
        return lut

    def pred_lut(self) -> np.ndarray:
        """Predicted Apollo id -> train id: any id of a class's category counts for it."""
        lut = self._base_lut()
        category = {lab.id: lab.category for lab in label_table()}
        owners: dict[str, set[int]] = {}
        for train_id, cls in enumerate(self.classes):
            for i in cls.ids:
                owners.setdefault(category[i], set()).add(train_id)
        listed = self._listed_ids()
        for lab in label_table():
            # a category split over several classes has no single owner: only listed ids map
            if lab.id not in listed and len(owners.get(lab.category, ())) == 1:
                lut[lab.id] = next(iter(owners[lab.category]))
        return lut

    def decode_lut(self) -> np.ndarray:
        """Train id -> Apollo id written in a submission (256 entries; unused = 0)."""
        lut = np.zeros(256, np.uint8)
        for train_id, cls in enumerate(self.classes):
            lut[train_id] = cls.submit_id
        return lut

    def palette(self) -> np.ndarray:
        """uint8[256, 3] RGB colour per train id (the Apollo colour of its submit id)."""
        colors = {lab.id: lab.color for lab in label_table()}
        pal = np.zeros((256, 3), np.uint8)
        for train_id, cls in enumerate(self.classes):
            pal[train_id] = colors.get(cls.submit_id, (0, 0, 0))
        pal[IGNORE_INDEX] = (255, 255, 255)
        return pal

    def encode(self, ids: np.ndarray, ignore_policy: str = "background") -> np.ndarray:
        return apply_lut(ids, self.train_lut(ignore_policy))

    def decode(self, train_ids: np.ndarray) -> np.ndarray:
        return apply_lut(train_ids, self.decode_lut())


def _scheme_from_dict(data: dict, source: str) -> Scheme:
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a scheme must be a mapping")
    unknown = set(data) - {"name", "classes", "default_class"}
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {sorted(unknown)}")
    classes = data.get("classes")
    if not isinstance(classes, list) or len(classes) < 2:
        raise ValueError(f"{source}: 'classes' must be a list of at least 2 classes")
    known = known_ids()
    seen: dict[int, str] = {}
    out = []
    for i, c in enumerate(classes):
        where = f"{source}: classes[{i}]"
        if not isinstance(c, dict) or set(c) - {"name", "ids", "submit_id"} or "name" not in c or "ids" not in c:
            raise ValueError(f"{where}: needs exactly name, ids and optional submit_id")
        ids = tuple(int(v) for v in c["ids"])
        for v in ids:
            if v not in known:
                raise ValueError(f"{where} ({c['name']}): id {v} is not in the Apollo label table")
            if v in seen:
                raise ValueError(f"{where} ({c['name']}): id {v} already belongs to class {seen[v]}")
            seen[v] = c["name"]
        submit = int(c.get("submit_id", ids[0] if ids else 0))
        if submit not in known:
            raise ValueError(f"{where} ({c['name']}): submit_id {submit} is not in the Apollo label table")
        out.append(SchemeClass(name=str(c["name"]), ids=ids, submit_id=submit))
    default = int(data.get("default_class", 0))
    if not 0 <= default < len(out):
        raise ValueError(f"{source}: default_class {default} is not a class index")
    return Scheme(name=str(data.get("name", Path(source).stem)), classes=tuple(out),
                  default_class=default, source=source)


def available_schemes() -> list[str]:
    return sorted(p.stem for p in SCHEME_DIR.glob("*.yml"))


@lru_cache(maxsize=None)
def load_scheme(name_or_path: str) -> Scheme:
    """A scheme by name (a file in paddle_lane/core/schemes) or by path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SCHEME_DIR / f"{name_or_path}.yml"
        if not path.exists():
            raise ValueError(f"scheme {name_or_path!r} not found; known schemes: {available_schemes()}")
    if not path.exists():
        raise ValueError(f"scheme file not found: {path}")
    with open(path) as fh:
        return _scheme_from_dict(yaml.safe_load(fh), str(path))
