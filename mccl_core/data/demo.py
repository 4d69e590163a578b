"""Deterministic synthetic "compositional clue" dataset: the embedded default demo.

Why synthetic, and why this design: the demo must train end to end on two CPU cores in minutes
with a randomly initialised ResNet, yet exercise what makes intent recognition hard and what
MCCL is built for:

* **Intents are compositions of clues.** Each of the 10 intents is defined by 2 or 3 visual clues
  (a clue is a colour x shape pair such as "red circle"); an image carries an intent exactly when
  *all* of that intent's clues are drawn. Every clue belongs to two intents and every colour and
  every shape occurs in two clues, so no single clue, colour or shape decides an intent.
* **Multi-label:** one to three intents per image (their clues are merged). Label sets whose
  merged clues would complete a further intent are re-drawn, so labels always equal "intents
  whose clues are all present".
* **Long tail:** intents are drawn with weights falling geometrically from the most to the least
  frequent (``imbalance_ratio``), giving a >= 10x gap in image counts at the default settings.
* **Distractors:** clues of *other* intents that do not complete them ("partial" clues) and
  colour x shape combinations that are no clue at all, on a noisy, textured background.
* **Learnable:** salient saturated colours and simple shapes, objects placed in distinct cells of
  a 3 x 3 grid (no full occlusion), 96 px by default.

**Many intents** (``num_intents`` 11-60, e.g. 45, with ``clue_scale`` < 1 for small clues): the
same rules over a larger, generated table (:func:`demo_table`): 10 colours x 6 shapes, each intent
two clues, each clue shared by about three intents. It reproduces what real many-class sets do to
prototype methods (many classes, small objects, few patches per image per class) on data that
ships with the package; the classic 10-intent table stays the default.

Files are in the project's canonical annotation format, Intentonomy's JSON schema
(``<out>/low/<id>.jpg``, ``<out>/annotations/{train,val,test}.json``; see
:mod:`mccl_core.data.annotations`), so the demo walks the same code path as real data;
``categories`` carry ``description`` and ``clues``, each annotation carries the drawn objects with
boxes (``demo_objects``) for interpretability checks. Train annotations carry
``category_ids_softprob`` with 1/3, 2/3 or 1 "annotator agreement" per positive intent (lower
when the intent's clues are drawn small), val/test carry ``category_ids``.

Determinism: each image is rendered from its own seed ``(seed, split, index)``, so the output is
byte-identical for the same :class:`DemoConfig` whatever the number of worker processes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mccl_core.config import ConfigError, from_dict
from mccl_core.data.annotations import ANNOTATIONS_DIR, LEGACY_FILENAMES, canonical_annotation_file

logger = logging.getLogger(__name__)

#: Bump when the rendering changes, so cached demo folders are regenerated.
GENERATOR_VERSION = 2

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (30, 175, 50),
    "blue": (35, 70, 230),
    "yellow": (245, 215, 25),
    "magenta": (215, 45, 215),
    "cyan": (25, 210, 220),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "stripes", "ring", "cross")
#: Colours the many-intent tables add (salient against the muted background as well).
EXTRA_COLOURS: dict[str, tuple[int, int, int]] = {
    "orange": (250, 130, 10),
    "purple": (110, 30, 170),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
ALL_COLOURS: dict[str, tuple[int, int, int]] = {**COLOURS, **EXTRA_COLOURS}

#: The 12 clues. Each colour and each shape appears in exactly two clues.
CLUES: tuple[tuple[str, str], ...] = (
    ("red", "circle"),
    ("red", "stripes"),
    ("green", "square"),
    ("green", "ring"),
    ("blue", "triangle"),
    ("blue", "cross"),
    ("yellow", "stripes"),
    ("yellow", "circle"),
    ("magenta", "ring"),
    ("magenta", "square"),
    ("cyan", "cross"),
    ("cyan", "triangle"),
)


@dataclass(frozen=True)
class DemoIntent:
    """A demo intent: readable name, description (label text) and defining clue indices."""

    name: str
    description: str
    clues: tuple[int, ...]


def _clue_name(index: int, clues: tuple[tuple[str, str], ...] = CLUES) -> str:
    colour, shape = clues[index]
    return f"{colour} {shape}"


def _intent(
    name: str, meaning: str, clue_ids: tuple[int, ...], clues: tuple[tuple[str, str], ...] = CLUES
) -> DemoIntent:
    listed = [_clue_name(c, clues) if clues[c][1] == "stripes" else f"a {_clue_name(c, clues)}" for c in clue_ids]
    joined = ", ".join(listed[:-1]) + f" and {listed[-1]}" if len(listed) > 2 else " and ".join(listed)
    return DemoIntent(name, f"{meaning} In this synthetic demo it is shown by {joined} appearing together.", clue_ids)


#: The 10 demo intents (index = class id). Every clue is used by exactly two intents.
DEMO_INTENTS: tuple[DemoIntent, ...] = (
    _intent("EnjoyOutdoors", "Enjoying time outside in the open air and sunshine.", (0, 2)),
    _intent("CompeteToWin", "Striving to beat rivals and win a contest.", (1, 4)),
    _intent("CalmHarmony", "Feeling calm, balanced and at peace.", (3, 5)),
    _intent("Celebrate", "Celebrating a festive occasion with others.", (6, 8)),
    _intent("ExploreAdventure", "Seeking adventure and exploring new places.", (7, 10)),
    _intent("CreateArt", "Making something creative and original.", (9, 11)),
    _intent("FamilyCare", "Caring for and staying close to one's family.", (0, 5, 9)),
    _intent("HealthyLiving", "Staying fit and living a healthy life.", (2, 6, 11)),
    _intent("ShareFriendship", "Spending time with friends and sharing feelings.", (1, 7, 8)),
    _intent("WorkSuccess", "Doing well at work and in one's career.", (3, 4, 10)),
)

#: Frequency rank of each intent (0 = most frequent); deliberately not the class-id order.
DEMO_FREQUENCY_RANK: tuple[int, ...] = (0, 3, 1, 5, 2, 8, 4, 6, 7, 9)

DEMO_CLASSES: tuple[str, ...] = tuple(i.name for i in DEMO_INTENTS)


@dataclass(frozen=True)
class DemoTable:
    """One demo's vocabulary: the clues (colour x shape), the intents over them and their
    frequency ranks (0 = most frequent)."""

    clues: tuple[tuple[str, str], ...]
    intents: tuple[DemoIntent, ...]
    frequency_rank: tuple[int, ...]
    colours: tuple[str, ...]  #: every colour drawn (clues and non-clue distractors)

    # Derived once per table (tables are cached): the renderer reads both for every image.
    @functools.cached_property
    def clue_sets(self) -> tuple[frozenset[int], ...]:
        return tuple(frozenset(i.clues) for i in self.intents)

    @functools.cached_property
    def non_clue_combos(self) -> tuple[tuple[str, str], ...]:
        return tuple((c, s) for c in self.colours for s in SHAPES if (c, s) not in self.clues)

    def clue_name(self, index: int) -> str:
        return _clue_name(index, self.clues)


CLASSIC_TABLE = DemoTable(CLUES, DEMO_INTENTS, DEMO_FREQUENCY_RANK, tuple(COLOURS))
#: Seed of the generated many-intent tables: the table is part of the dataset's definition, not
#: of a run, so it never changes with ``DemoConfig.seed``.
_TABLE_SEED = 20251207


@functools.cache
def demo_table(num_intents: int = 10) -> DemoTable:
    """The intent table of a demo with ``num_intents`` intents (10: the classic hand-made table).

    For 11-60 intents: 10 colours x 6 shapes, ``ceil(2 n / 3)`` of the 60 combinations are clues
    (the rest stay distractors), every intent is a distinct pair of clues and every clue serves
    about three intents (so, as in the classic table, no single clue decides an intent).
    """
    if num_intents == 10:
        return CLASSIC_TABLE
    if not 11 <= num_intents <= 60:
        raise ConfigError(f"DemoConfig.num_intents must be 10 (the classic table) or 11..60, got {num_intents}")
    rng = np.random.default_rng(_TABLE_SEED)
    combos = [(c, s) for c in ALL_COLOURS for s in SHAPES]
    n_clues = -(-2 * num_intents // 3)
    clues = tuple(combos[int(i)] for i in sorted(rng.permutation(len(combos))[:n_clues]))
    pairs: list[tuple[int, int]] = []
    while len(pairs) < num_intents:  # rounds of a random perfect pairing: clue use stays even
        order = [int(i) for i in rng.permutation(n_clues)]
        for a, b in zip(order[::2], order[1::2], strict=False):
            pair = (min(a, b), max(a, b))
            if pair not in pairs and len(pairs) < num_intents:
                pairs.append(pair)
    intents = tuple(
        _intent(
            "".join(w.capitalize() for c in pair for w in clues[c]) + "Intent",
            f"Intent number {k + 1} of the many-intent demo.",
            pair,
            clues,
        )
        for k, pair in enumerate(pairs)
    )
    rank = tuple(int(r) for r in np.argsort(rng.permutation(num_intents)))
    return DemoTable(clues, intents, rank, tuple(ALL_COLOURS))


_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
GRID = 3


@dataclass(frozen=True)
class DemoConfig:
    """Size and difficulty of the synthetic demo dataset (same config -> byte-identical files).

    Attributes:
        seed: master seed.
        n_train / n_val / n_test: images per split.
        image_size: side of the square images in pixels.
        imbalance_ratio: sampling-weight ratio between the most and the least frequent intent.
        label_count_probs: probability of 1, 2 and 3 intents per image.
        partial_clue_prob: probability of adding one clue of an intent the image does not carry.
        max_other_distractors: up to this many non-clue colour x shape objects per image.
        noise_std: std of the per-pixel Gaussian noise (0..255 scale).
        jpeg_quality: JPEG quality of the written images.
        num_intents: 10 (the classic table) or 11-60 (a generated many-intent table, :func:`demo_table`).
        clue_scale: object size relative to the classic demo's (``< 1``: small clues, fewer
            patches of a deep stage cover one).
    """

    seed: int = 0
    n_train: int = 2400
    n_val: int = 600
    n_test: int = 1000
    image_size: int = 96
    imbalance_ratio: float = 20.0
    label_count_probs: tuple[float, float, float] = (0.5, 0.35, 0.15)
    partial_clue_prob: float = 0.5
    max_other_distractors: int = 2
    noise_std: float = 10.0
    jpeg_quality: int = 92
    num_intents: int = 10
    clue_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 0:
                raise ConfigError(f"DemoConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.image_size < 32:
            raise ConfigError(f"DemoConfig.image_size must be >= 32 px, got {self.image_size}")
        if self.imbalance_ratio < 1:
            raise ConfigError(f"DemoConfig.imbalance_ratio must be >= 1, got {self.imbalance_ratio}")
        probs = tuple(float(p) for p in self.label_count_probs)
        if len(probs) != 3 or min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
            raise ConfigError(
                f"DemoConfig.label_count_probs must be 3 probabilities summing to 1, got {self.label_count_probs}"
            )
        object.__setattr__(self, "label_count_probs", probs)
        if not 0 <= self.partial_clue_prob <= 1:
            raise ConfigError(f"DemoConfig.partial_clue_prob must be in [0, 1], got {self.partial_clue_prob}")
        if not 0 <= self.max_other_distractors <= 3:
            raise ConfigError(f"DemoConfig.max_other_distractors must be 0..3, got {self.max_other_distractors}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ConfigError(f"DemoConfig.jpeg_quality must be 1..95, got {self.jpeg_quality}")
        demo_table(self.num_intents)  # raises on an unsupported count
        if not 0.2 <= self.clue_scale <= 1.0:
            raise ConfigError(f"DemoConfig.clue_scale must be in [0.2, 1], got {self.clue_scale}")

    def split_size(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]

    @property
    def table(self) -> DemoTable:
        return demo_table(self.num_intents)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["label_count_probs"] = list(self.label_count_probs)
        # Left out at their defaults: the classic demo's stamp and annotations stay byte-identical
        # to those written before these options existed (no re-render, no pipeline re-run).
        for name in ("num_intents", "clue_scale"):
            if data[name] == DemoConfig.__dataclass_fields__[name].default:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DemoConfig:
        return from_dict(cls, data, "demo")


def intent_weights(imbalance_ratio: float, table: DemoTable = CLASSIC_TABLE) -> np.ndarray:
    """Sampling weight per intent: geometric in the frequency rank, max/min = ``imbalance_ratio``."""
    ranks = np.asarray(table.frequency_rank, dtype=np.float64)
    weights = imbalance_ratio ** (-ranks / (len(ranks) - 1))
    return weights / weights.sum()


# ----------------------------------------------------------------------------- scene sampling


@dataclass
class _SceneObject:
    colour: str
    shape: str
    clue: int | None  # clue index, None for a non-clue distractor
    cell: int = -1
    size_fraction: float = 0.0  # 0..1 within the allowed size range (drives soft labels)
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    variant: int = 0  # orientation for stripes


@dataclass
class _Scene:
    labels: tuple[int, ...]
    objects: list[_SceneObject] = field(default_factory=list)


def _completed_intents(clues: set[int], clue_sets: tuple[frozenset[int], ...]) -> set[int]:
    return {k for k, needed in enumerate(clue_sets) if needed <= clues}


def _sample_scene(rng: np.random.Generator, cfg: DemoConfig, weights: np.ndarray, table: DemoTable) -> _Scene:
    """Labels and objects of one image (positions are assigned in :func:`_layout`)."""
    clue_sets, num_intents = table.clue_sets, len(table.intents)
    count = int(rng.choice(3, p=cfg.label_count_probs)) + 1
    for _ in range(1000):
        labels = {int(k) for k in rng.choice(num_intents, size=count, replace=False, p=weights)}
        clues = set().union(*(clue_sets[k] for k in labels))
        if _completed_intents(clues, clue_sets) == labels and len(clues) <= GRID * GRID:
            break
    else:  # pragma: no cover - the intent table always admits single-intent scenes
        raise RuntimeError("could not sample a consistent label set")
    objects = [_SceneObject(*table.clues[c], clue=c) for c in sorted(clues)]
    free_cells = GRID * GRID - len(objects)
    if free_cells and rng.random() < cfg.partial_clue_prob:
        candidates = [
            c
            for c in range(len(table.clues))
            if c not in clues and _completed_intents(clues | {c}, clue_sets) == labels
        ]
        if candidates:
            extra = int(rng.choice(candidates))
            objects.append(_SceneObject(*table.clues[extra], clue=extra))
            free_cells -= 1
    others = table.non_clue_combos
    n_other = min(int(rng.integers(0, cfg.max_other_distractors + 1)), free_cells)
    for combo_index in rng.choice(len(others), size=n_other, replace=False):
        objects.append(_SceneObject(*others[int(combo_index)], clue=None))
    return _Scene(tuple(sorted(labels)), objects)


def _layout(rng: np.random.Generator, scene: _Scene, image_size: int, clue_scale: float = 1.0) -> None:
    """Put each object in its own grid cell at a random size (times ``clue_scale``) and offset."""
    cell = image_size / GRID
    cells = rng.permutation(GRID * GRID)[: len(scene.objects)]
    for obj, cell_index in zip(scene.objects, cells, strict=True):
        obj.cell = int(cell_index)
        obj.size_fraction = float(rng.random())
        side = cell * (0.55 + 0.37 * obj.size_fraction) * clue_scale
        row, col = divmod(int(cell_index), GRID)
        x0 = col * cell + rng.random() * (cell - side)
        y0 = row * cell + rng.random() * (cell - side)
        obj.box = (int(round(x0)), int(round(y0)), int(round(x0 + side)), int(round(y0 + side)))
        obj.variant = int(rng.integers(0, 2))


# ----------------------------------------------------------------------------- rendering


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted, low-saturation base colour with a gradient: saturated clue colours stay salient."""
    grey = rng.uniform(80, 170)
    base = grey + rng.uniform(-18, 18, size=3)
    ramp = np.linspace(-1.0, 1.0, size)
    direction = rng.uniform(-1, 1, size=2) * 25.0
    gradient = direction[0] * ramp[None, :] + direction[1] * ramp[:, None]
    return base[None, None, :] + gradient[:, :, None]


def _draw_texture(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, background: np.ndarray) -> None:
    """A few faint lines in background tones: clutter the network must learn to ignore."""
    mean = background.reshape(-1, 3).mean(axis=0)
    for _ in range(int(rng.integers(3, 7))):
        tone = tuple(int(v) for v in np.clip(mean + rng.uniform(-35, 35), 0, 255))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, size=4))
        draw.line((x0, y0, x1, y1), fill=tone, width=int(rng.integers(1, 4)))


def _draw_object(draw: ImageDraw.ImageDraw, rng: np.random.Generator, obj: _SceneObject) -> None:
    colour = tuple(int(np.clip(v + rng.integers(-15, 16), 0, 255)) for v in ALL_COLOURS[obj.colour])
    x0, y0, x1, y1 = obj.box
    side = x1 - x0
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif obj.shape == "square":
        inset = side * 0.08
        draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=colour)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    elif obj.shape == "ring":
        draw.ellipse((x0, y0, x1, y1), outline=colour, width=max(2, round(side / 5)))
    elif obj.shape == "cross":
        bar = side / 3
        draw.rectangle((x0 + bar, y0, x1 - bar, y1), fill=colour)
        draw.rectangle((x0, y0 + bar, x1, y1 - bar), fill=colour)
    elif obj.shape == "stripes":
        thickness = side / 5
        for k in (0, 2, 4):
            if obj.variant == 0:
                draw.rectangle((x0, y0 + k * thickness, x1, y0 + (k + 1) * thickness), fill=colour)
            else:
                draw.rectangle((x0 + k * thickness, y0, x0 + (k + 1) * thickness, y1), fill=colour)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"unknown shape {obj.shape!r}")


def _render(rng: np.random.Generator, scene: _Scene, cfg: DemoConfig) -> Image.Image:
    size = cfg.image_size
    background = _background(rng, size)
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    _draw_texture(draw, rng, size, background)
    for obj in scene.objects:
        _draw_object(draw, rng, obj)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, cfg.noise_std, size=(size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), mode="RGB")


def _agreement(scene: _Scene, intent: int, table: DemoTable) -> float:
    """Demo "annotator agreement" for a positive intent: 1/3, 2/3 or 1 by how large its clues are
    drawn (small clues -> fewer of three annotators would have seen the intent)."""
    needed = table.clue_sets[intent]
    mean_size = float(np.mean([o.size_fraction for o in scene.objects if o.clue in needed]))
    if mean_size < 0.3:
        return 1.0 / 3.0
    if mean_size < 0.6:
        return 2.0 / 3.0
    return 1.0


def demo_image_id(split: str, index: int) -> str:
    return f"demo-{split}-{index:05d}"


def _generate_chunk(args: tuple[DemoConfig, str, int, int, str]) -> list[dict[str, Any]]:
    """Render images ``start..stop`` of ``split`` and return their annotation entries."""
    cfg, split, start, stop, out_dir = args
    table = cfg.table
    weights = intent_weights(cfg.imbalance_ratio, table)
    entries: list[dict[str, Any]] = []
    for index in range(start, stop):
        rng = np.random.default_rng([cfg.seed, _SPLIT_CODES[split], index])
        scene = _sample_scene(rng, cfg, weights, table)
        _layout(rng, scene, cfg.image_size, cfg.clue_scale)
        image = _render(rng, scene, cfg)
        image_id = demo_image_id(split, index)
        filename = f"low/{image_id}.jpg"
        image.save(Path(out_dir) / filename, format="JPEG", quality=cfg.jpeg_quality)
        entry: dict[str, Any] = {"id": index, "image_id": image_id, "filename": filename}
        if split == "train":
            soft = [0.0] * len(table.intents)
            for k in scene.labels:
                soft[k] = _agreement(scene, k, table)
            entry["category_ids_softprob"] = soft
        else:
            entry["category_ids"] = list(scene.labels)
        entry["demo_objects"] = [
            {"colour": o.colour, "shape": o.shape, "clue": o.clue, "box": list(o.box)} for o in scene.objects
        ]
        entries.append(entry)
    return entries


def _annotation_document(cfg: DemoConfig, split: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    table = cfg.table
    return {
        "info": {
            "description": f"MCCL synthetic compositional-clue demo, {split} split",
            "version": GENERATOR_VERSION,
            "year": 2025,
            "demo_config": cfg.to_dict(),
            "clues": [table.clue_name(c) for c in range(len(table.clues))],
        },
        "categories": [
            {"id": k, "name": i.name, "description": i.description, "clues": [table.clue_name(c) for c in i.clues]}
            for k, i in enumerate(table.intents)
        ],
        "images": [{"id": e["image_id"], "filename": e["filename"], "original_id": e["image_id"]} for e in entries],
        "annotations": [{key: value for key, value in e.items() if key != "filename"} for e in entries],
    }


STAMP_FILE = "demo_config.json"


def generate_demo(
    out_dir: Path, cfg: DemoConfig | None = None, *, workers: int = 1, show_progress: bool = True
) -> Path:
    """Write the demo dataset to ``out_dir`` and return ``out_dir``.

    Layout: ``low/<id>.jpg``, ``annotations/{train,val,test}.json`` and ``demo_config.json``
    (written last: its presence marks a complete dataset). Existing files of an earlier run are
    overwritten; annotation files under the names demo folders had before the canonical ones
    (``annotations/intentonomy_<split>2020.json``) are removed.

    Args:
        workers: processes used for rendering (output is identical for any value).
    """
    from tqdm.auto import tqdm

    cfg = cfg or DemoConfig()
    out_dir = Path(out_dir)
    (out_dir / "low").mkdir(parents=True, exist_ok=True)
    (out_dir / ANNOTATIONS_DIR).mkdir(parents=True, exist_ok=True)
    (out_dir / STAMP_FILE).unlink(missing_ok=True)
    chunk = 250
    jobs = [
        (cfg, split, start, min(start + chunk, cfg.split_size(split)), str(out_dir))
        for split in _SPLIT_CODES
        for start in range(0, cfg.split_size(split), chunk)
    ]
    results: list[list[dict[str, Any]]]
    with tqdm(
        total=cfg.n_train + cfg.n_val + cfg.n_test, desc="demo images", unit="img", disable=not show_progress
    ) as bar:
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = []
                for entries in pool.map(_generate_chunk, jobs):
                    results.append(entries)
                    bar.update(len(entries))
        else:
            results = []
            for job in jobs:
                results.append(_generate_chunk(job))
                bar.update(len(results[-1]))
    by_split: dict[str, list[dict[str, Any]]] = {split: [] for split in _SPLIT_CODES}
    for job, entries in zip(jobs, results, strict=True):
        by_split[job[1]].extend(entries)
    for split, entries in by_split.items():
        document = _annotation_document(cfg, split, entries)
        path = canonical_annotation_file(out_dir, split)
        path.write_text(json.dumps(document, separators=(",", ":")) + "\n", encoding="utf-8")
        (out_dir / ANNOTATIONS_DIR / LEGACY_FILENAMES[split]).unlink(missing_ok=True)  # no stale old copy
    stamp = {"generator_version": GENERATOR_VERSION, "demo_config": cfg.to_dict()}
    (out_dir / STAMP_FILE).write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("demo dataset written to %s (%d/%d/%d images)", out_dir, cfg.n_train, cfg.n_val, cfg.n_test)
    return out_dir


def ensure_demo(out_dir: Path, cfg: DemoConfig | None = None, *, workers: int = 1) -> Path:
    """Generate the demo into ``out_dir`` unless a complete one for the same config and generator
    version is already there (cheap cache for tests, notebooks and the pipeline's data step)."""
    cfg = cfg or DemoConfig()
    stamp_path = Path(out_dir) / STAMP_FILE
    if stamp_path.is_file():
        stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
        if stamp == {"generator_version": GENERATOR_VERSION, "demo_config": cfg.to_dict()}:
            logger.info("demo dataset in %s is up to date", out_dir)
            return Path(out_dir)
    return generate_demo(out_dir, cfg, workers=workers)


def default_workers() -> int:
    """Rendering processes to use by default: the CPUs this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
