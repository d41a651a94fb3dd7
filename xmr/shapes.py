"""A procedural image-caption data set: coloured shapes on a background, described in English.

Used to train the bundled `shapes-tiny` model, to build held-out evaluation sets and to draw
test images. Everything is driven by a numpy Generator, so a seed reproduces a data set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 50),
    "blue": (35, 70, 215),
    "yellow": (240, 215, 35),
    "orange": (245, 135, 25),
    "purple": (135, 45, 175),
    "black": (18, 18, 18),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star")
COLOR_JITTER = 18


@dataclass(frozen=True)
class Shape:
    color: str
    kind: str
    cx: float  # centre, as a fraction of the width
    cy: float  # centre, as a fraction of the height
    size: float  # radius, as a fraction of the shorter side
    rotation: float  # degrees


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...]

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        """What the scene shows, ignoring where: the sorted (colour, shape) pairs."""
        return tuple(sorted((s.color, s.kind) for s in self.shapes))


# -- scenes -------------------------------------------------------------------------------------
def random_scene(
    rng: np.random.Generator,
    n_shapes: int,
    pairs: Sequence[tuple[str, str]] | None = None,
    min_side: int = 48,
    max_side: int = 320,
) -> Scene:
    """A scene of `n_shapes` distinct (colour, shape) pairs, or exactly `pairs` if given."""
    side = int(rng.integers(min_side, max_side + 1))
    aspect = float(rng.uniform(0.75, 1.33))
    width, height = (
        (side, max(min_side, int(side / aspect)))
        if aspect >= 1
        else (max(min_side, int(side * aspect)), side)
    )
    chosen = list(pairs) if pairs is not None else _distinct_pairs(rng, n_shapes)
    background = _background(rng)
    slots = _slots(rng, len(chosen))
    shapes = tuple(
        Shape(
            color=color,
            kind=kind,
            cx=cx,
            cy=cy,
            size=float(rng.uniform(0.55, 1.0)) * max_size,
            rotation=float(rng.uniform(0, 360)),
        )
        for (color, kind), (cx, cy, max_size) in zip(chosen, slots, strict=True)
    )
    return Scene(width, height, background, shapes)


def _distinct_pairs(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    all_pairs = [(c, s) for c in COLORS for s in SHAPES]
    picks = rng.choice(len(all_pairs), size=n, replace=False)
    return [all_pairs[int(i)] for i in picks]


def _background(rng: np.random.Generator) -> tuple[int, int, int]:
    level = float(rng.uniform(75, 185))
    tint = rng.uniform(-14, 14, size=3)
    return tuple(int(np.clip(level + t, 0, 255)) for t in tint)  # type: ignore[return-value]


def _slots(rng: np.random.Generator, n: int) -> list[tuple[float, float, float]]:
    """Non-overlapping (cx, cy, max radius) places: anywhere for one shape, split for two."""
    if n == 1:
        radius = float(rng.uniform(0.16, 0.38))
        margin = radius + 0.02
        return [
            (float(rng.uniform(margin, 1 - margin)), float(rng.uniform(margin, 1 - margin)), radius)
        ]
    if n == 2:
        radius = float(rng.uniform(0.1, 0.2))
        margin = radius + 0.02
        gap = radius + 0.01  # keeps the two shapes apart in either orientation
        along = [float(rng.uniform(margin, 0.5 - gap)), float(rng.uniform(0.5 + gap, 1 - margin))]
        across = [float(rng.uniform(0.3, 0.7)) for _ in range(2)]
        if rng.random() < 0.6:  # side by side, else one above the other
            return [(along[0], across[0], radius), (along[1], across[1], radius)]
        return [(across[0], along[0], radius), (across[1], along[1], radius)]
    raise ValueError("scenes have one or two shapes")


# -- rendering ----------------------------------------------------------------------------------
def render(scene: Scene, rng: np.random.Generator | None = None) -> Image.Image:
    """Draw the scene; with `rng`, also vary colour, anti-aliasing, blur and noise."""
    supersample = 1 if rng is not None and rng.random() < 0.3 else 3
    w, h = scene.width * supersample, scene.height * supersample
    image = Image.new("RGB", (w, h), scene.background)
    draw = ImageDraw.Draw(image)
    short = min(w, h)
    for shape in scene.shapes:
        fill = _jitter(COLORS[shape.color], rng)
        centre = (shape.cx * w, shape.cy * h)
        radius = shape.size * short
        if shape.kind == "circle":
            x, y = centre
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
        else:
            draw.polygon(_polygon(shape.kind, centre, radius, shape.rotation), fill=fill)
    if supersample > 1:
        image = image.resize((scene.width, scene.height), Image.Resampling.LANCZOS)
    if rng is not None:
        image = _degrade(image, rng)
    return image


def _polygon(
    kind: str, centre: tuple[float, float], radius: float, rotation: float
) -> list[tuple[float, float]]:
    if kind == "square":
        points = [(radius, 45 + 90 * i) for i in range(4)]
    elif kind == "triangle":
        points = [(radius, 90 + 120 * i) for i in range(3)]
    elif kind == "star":
        points = [(radius if i % 2 == 0 else radius * 0.42, 90 + 36 * i) for i in range(10)]
    else:
        raise ValueError(f"unknown shape {kind!r}")
    cx, cy = centre
    return [
        (
            cx + r * math.cos(math.radians(a + rotation)),
            cy - r * math.sin(math.radians(a + rotation)),
        )
        for r, a in points
    ]


def _jitter(color: tuple[int, int, int], rng: np.random.Generator | None) -> tuple[int, int, int]:
    if rng is None:
        return color
    shifted = np.clip(np.array(color) + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3), 0, 255)
    return tuple(int(v) for v in shifted)  # type: ignore[return-value]


def _degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    if rng.random() < 0.25:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    if rng.random() < 0.3:
        pixels = np.asarray(image, dtype=np.int16)
        noise = rng.normal(0, rng.uniform(2, 9), pixels.shape)
        image = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    return image


# -- captions -----------------------------------------------------------------------------------
def describe(shape: Shape, rng: np.random.Generator, with_size: bool = True) -> str:
    size = ""
    if with_size and rng.random() < 0.3:
        size = "small " if shape.size < 0.22 else "large " if shape.size > 0.3 else ""
    return _with_article(f"{size}{shape.color} {shape.kind}")


def _with_article(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _place(shape: Shape) -> str | None:
    if shape.cx < 0.38:
        return "on the left"
    if shape.cx > 0.62:
        return "on the right"
    if shape.cy < 0.38:
        return "at the top"
    if shape.cy > 0.62:
        return "at the bottom"
    return None


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One natural English description of the scene, picked at random among several forms."""
    if len(scene.shapes) == 1:
        shape = scene.shapes[0]
        text = describe(shape, rng)
        place = _place(shape)
        form = rng.random()
        if place and form < 0.3:
            return f"{text} {place}"
        if form < 0.45:
            return f"a picture of {text}"
        if form < 0.55:
            return f"{text} on a grey background"
        return text
    first, second = scene.shapes
    if rng.random() < 0.5:
        first, second = second, first
    a, b = describe(first, rng, with_size=False), describe(second, rng, with_size=False)
    form = rng.random()
    if form < 0.2:
        left, right = sorted(scene.shapes, key=lambda s: s.cx)
        if right.cx - left.cx > 0.25:
            return f"{describe(left, rng, False)} to the left of {describe(right, rng, False)}"
    if form < 0.35:
        top, bottom = sorted(scene.shapes, key=lambda s: s.cy)
        if bottom.cy - top.cy > 0.25:
            return f"{describe(top, rng, False)} above {describe(bottom, rng, False)}"
    if form < 0.5:
        return f"{a} next to {b}"
    return f"{a} and {b}"


def canonical_caption(scene: Scene) -> str:
    """The plain description used for evaluation queries: `a red circle and a blue star`."""
    return " and ".join(_with_article(f"{s.color} {s.kind}") for s in scene.shapes)


# -- evaluation sets ----------------------------------------------------------------------------
def write_eval_set(folder: Path, seed: int, n_two: int = 200, split: str = "test") -> Path:
    """Write a held-out set in the Karpathy captions layout: one image per distinct scene.

    Every (colour, shape) pair appears once alone, and `n_two` distinct pairs of pairs appear
    once together, so each caption has exactly one right image. Returns the captions file.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    scenes: list[Scene] = [random_scene(rng, 1, pairs=[(c, s)]) for c in COLORS for s in SHAPES]
    seen: set[tuple[tuple[str, str], ...]] = set()
    while len(seen) < n_two:
        scene = random_scene(rng, 2)
        if scene.key not in seen:
            seen.add(scene.key)
            scenes.append(scene)
    entries = []
    for number, scene in enumerate(scenes):
        name = f"{number:05d}.png"
        render(scene, rng).save(folder / name)
        entries.append(
            {
                "filename": name,
                "split": split,
                "group": f"{len(scene.shapes)}-shape",
                "sentences": [{"raw": canonical_caption(scene)}],
            }
        )
    captions = folder / "captions.json"
    captions.write_text(json.dumps({"images": entries}, indent=1))
    return captions
