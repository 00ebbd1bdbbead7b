"""A compositional image-caption data set: coloured shapes on plain or textured backgrounds.

Deterministic from a seed (no global random state). Used by ``benchmarks/compositional.py`` to
prove that training learns, by ``tests/fixtures/make_shapes_model.py`` to remake the tiny trained
test model, and by the tests (``tests/conftest.py`` puts ``benchmarks/`` on ``sys.path``).

    from shapes import Scene, split_pairs, random_scene

    pairs = split_pairs()                       # train / val / test colour-shape pairs
    rng = random.Random(0)
    scene = random_scene(rng, pairs.train, n_objects=2)
    scene.image                                 # PIL image, 64x64 by default
    scene.objects                               # [Obj(colour, shape, box=(x0, y0, x1, y1)), ...]
    scene.caption()                             # "a photo of a red circle and a blue square"

Every scene knows the exact bounding box of every object (for localisation tests). Objects never
overlap. Captions name objects left to right.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 190, 50),
    "blue": (40, 70, 230),
    "yellow": (235, 225, 40),
    "purple": (150, 40, 190),
    "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
# Attribute-caption scenes use an unnamed colour ("a photo of a circle.") or an unnamed blob shape
# ("a photo of a red object."), so each attribute is learned apart from the other.
ANY_COLOUR, BLOB = "any", "blob"
BACKGROUNDS: tuple[str, ...] = ("black", "gray", "noise", "stripes")
CAPTION_KINDS: tuple[str, ...] = ("full", "colour", "shape", "one", "background")  # see captioned_scenes

Pair = tuple[str, str]  # (colour, shape)


def all_pairs() -> list[Pair]:
    return [(c, s) for c in COLOURS for s in SHAPES]


def label(pair: Pair) -> str:
    """The class label of a pair: ``"red circle"``."""
    return f"{pair[0]} {pair[1]}"


@dataclass(frozen=True)
class PairSplit:
    """Colour-shape pairs: ``train`` appear in training images; ``val`` and ``test`` never do
    (``val`` chooses the epoch, ``test`` is scored once)."""

    train: list[Pair]
    val: list[Pair]
    test: list[Pair]


def split_pairs() -> PairSplit:
    """Hold out two Latin-square diagonals: colour i with shape i+1 (val) and with shape i+2 (test),
    so every colour and every shape is still seen in training with four other partners (among them
    red circle and blue square, the tests' examples)."""
    colours, n = list(COLOURS), len(SHAPES)
    val = [(colours[i], SHAPES[(i + 1) % n]) for i in range(n)]
    test = [(colours[i], SHAPES[(i + 2) % n]) for i in range(n)]
    held = set(test) | set(val)
    return PairSplit(train=[p for p in all_pairs() if p not in held], val=val, test=test)


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels (x1, y1 exclusive)

    @property
    def pair(self) -> Pair:
        return (self.colour, self.shape)


@dataclass
class Scene:
    image: Image.Image
    objects: list[Obj] = field(default_factory=list)
    background: str = "black"

    def caption(self, kind: str = "full", prefix: str = "a photo of ", which: int = 0) -> str:
        """``full``: "a photo of a red circle and a blue square."; ``colour``: "a photo of a red
        object."; ``shape``: "a photo of a circle." (attribute captions describe the first object);
        ``one``: "a photo of a blue square." (only the object ``which`` of several is named);
        ``background`` (a scene without objects): "a photo of a background."."""
        if kind == "background" or not self.objects:
            return f"{prefix}a background."
        if kind == "one":
            named = self.objects[which]
            return f"{prefix}a {named.colour} {named.shape}."
        first = self.objects[0]
        if kind == "colour":
            return f"{prefix}a {first.colour} object."
        if kind == "shape":
            return f"{prefix}a {first.shape}."
        return prefix + " and ".join(f"a {o.colour} {o.shape}" for o in self.objects) + "."


def _polygon(shape: str, box: tuple[int, int, int, int], rng: random.Random) -> list[tuple[float, float]] | None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (x1 - x0 - 1) / 2
    if shape == "triangle":
        return [(cx, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)]
    if shape == "diamond":
        return [(cx, y0), (x1 - 1, cy), (cx, y1 - 1), (x0, cy)]
    if shape == "star":
        return [(cx + (r if i % 2 == 0 else r * 0.42) * math.sin(i * math.pi / 5),
                 cy - (r if i % 2 == 0 else r * 0.42) * math.cos(i * math.pi / 5)) for i in range(10)]
    if shape == BLOB:
        k = rng.randint(5, 8)
        return [(cx + r * rng.uniform(0.5, 1) * math.cos(2 * math.pi * (i + rng.uniform(-0.3, 0.3)) / k),
                 cy + r * rng.uniform(0.5, 1) * math.sin(2 * math.pi * (i + rng.uniform(-0.3, 0.3)) / k))
                for i in range(k)]
    if shape == "cross":
        t = r / 3
        return [(cx - t, y0), (cx + t, y0), (cx + t, cy - t), (x1 - 1, cy - t), (x1 - 1, cy + t), (cx + t, cy + t),
                (cx + t, y1 - 1), (cx - t, y1 - 1), (cx - t, cy + t), (x0, cy + t), (x0, cy - t), (cx - t, cy - t)]
    return None


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 20) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def _background(kind: str, size: int, rng: random.Random) -> Image.Image:
    if kind == "gray":
        return Image.new("RGB", (size, size), _jitter((100, 100, 100), rng))
    if kind == "noise":
        noise = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
        return noise.point(lambda v: v * 90 // 255)
    img = Image.new("RGB", (size, size), _jitter((15, 15, 15), rng, 10))
    if kind == "stripes":
        draw, step, shade = ImageDraw.Draw(img), rng.randint(4, 10), _jitter((70, 70, 70), rng)
        for x in range(-size, size, step):
            draw.line([(x, 0), (x + size, size)], fill=shade, width=max(1, step // 3))
    return img


def draw_object(draw: ImageDraw.ImageDraw, obj: Obj, rng: random.Random) -> None:
    if obj.colour == ANY_COLOUR:
        fill = tuple(rng.randint(60, 255) for _ in range(3))
    else:
        fill = _jitter(COLOURS[obj.colour], rng)
    x0, y0, x1, y1 = obj.box
    polygon = _polygon(obj.shape, obj.box, rng)
    if obj.shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif obj.shape == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif polygon is not None:
        draw.polygon(polygon, fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def _place(rng: random.Random, size: int, n: int, min_frac: float, max_frac: float) -> list[tuple[int, int, int, int]]:
    """``n`` non-overlapping square boxes (retrying smaller when they do not fit)."""
    for attempt in range(200):
        shrink = 0.85 ** (attempt // 20)
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(n):
            for _try in range(30):
                side = max(6, int(size * rng.uniform(min_frac, max_frac) * shrink))
                x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
                box = (x0, y0, x0 + side, y0 + side)
                if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
                    boxes.append(box)
                    break
        if len(boxes) == n:
            return sorted(boxes)
    raise ValueError(f"cannot place {n} objects in {size}x{size}")


def render(objects: Sequence[Obj], size: int = 64, background: str = "black", seed: int = 0) -> Scene:
    """Draw given objects (with their boxes) on a background."""
    rng = random.Random(seed)
    image = _background(background, size, rng)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_object(draw, obj, rng)
    return Scene(image=image, objects=list(objects), background=background)


def random_scene(rng: random.Random, pairs: Sequence[Pair], n_objects: int = 1, size: int = 64,
                 min_frac: float | None = None, max_frac: float | None = None,
                 backgrounds: Sequence[str] = BACKGROUNDS) -> Scene:
    """A scene of ``n_objects`` objects drawn from ``pairs`` (all different pairs), placed at random."""
    lo = min_frac if min_frac is not None else (0.35 if n_objects == 1 else 0.25)
    hi = max_frac if max_frac is not None else (0.95 if n_objects == 1 else 0.5)
    chosen = rng.sample(list(pairs), n_objects)
    boxes = _place(rng, size, n_objects, lo, hi)
    objects = [Obj(c, s, box) for (c, s), box in zip(chosen, boxes)]
    return render(objects, size, rng.choice(list(backgrounds)), seed=rng.randrange(2**31))


def captioned_scenes(seed: int, n: int, pairs: Sequence[Pair], size: int = 64,
                     mix: Sequence[tuple[str, int, float]] = (("full", 1, 0.4), ("colour", 1, 0.15),
                                                             ("shape", 1, 0.15), ("full", 2, 0.3))
                     ) -> list[tuple[Scene, str]]:
    """``n`` (scene, caption) examples; ``mix`` lists (caption kind, objects per image, share):
    kinds ``full``, ``colour``, ``shape``, ``one`` (one of the objects named, chosen at random) and
    ``background`` (no objects)."""
    rng = random.Random(seed)
    kinds, weights = [(k, m) for k, m, _ in mix], [w for *_, w in mix]
    out = []
    for _ in range(n):
        kind, n_obj = rng.choices(kinds, weights)[0]
        if kind == "colour":
            attr_pairs = [(c, BLOB) for c in COLOURS]
        elif kind == "shape":
            attr_pairs = [(ANY_COLOUR, s) for s in SHAPES]
        else:
            attr_pairs = list(pairs)
        if kind == "background":
            n_obj = 0
        scene = random_scene(rng, attr_pairs, n_obj, size)
        which = rng.randrange(n_obj) if kind == "one" else 0
        out.append((scene, scene.caption(kind, which=which)))
    return out


def labelled_scenes(seed: int, pairs: Sequence[Pair], per_pair: int, size: int = 64,
                    min_frac: float | None = None, max_frac: float | None = None) -> list[tuple[Scene, Pair]]:
    """``per_pair`` single-object scenes of each pair (for zero-shot scoring)."""
    rng = random.Random(seed)
    return [(random_scene(rng, [p], 1, size, min_frac, max_frac), p) for p in pairs for _ in range(per_pair)]


def write_class_folders(root: str | Path, scenes: Sequence[tuple[Scene, Pair]]) -> Path:
    """Save labelled scenes as ``root/<colour shape>/NNNN.png`` (the ``folder`` data set layout)."""
    root = Path(root)
    for i, (scene, pair) in enumerate(scenes):
        path = root / label(pair) / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        scene.image.save(path)
    return root
