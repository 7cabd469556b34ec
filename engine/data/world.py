"""A procedural world of simple objects with captions (the embedded model's training data).

Every object is a category (table, chair, mushroom, ...) built from primitives with randomised
proportions, a main colour and a second colour for one named part ("a red mushroom with a white stem").
Everything is deterministic from an integer seed. ``HELD_OUT`` lists category-colour pairs that the
training split never contains, so evaluation can test composition.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from .primitives import BOX, ELLIPSOID, FRUSTUM, Primitive

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10), "orange": (0.96, 0.50, 0.08), "yellow": (0.96, 0.85, 0.12),
    "green": (0.16, 0.62, 0.20), "blue": (0.12, 0.30, 0.86), "purple": (0.50, 0.16, 0.72),
    "pink": (0.96, 0.52, 0.72), "brown": (0.50, 0.30, 0.12), "black": (0.09, 0.09, 0.09),
    "white": (0.95, 0.95, 0.95), "gray": (0.52, 0.52, 0.52), "cyan": (0.10, 0.78, 0.84),
}
COLOR_NAMES = list(COLORS)
COLOR_SYNONYMS = {"gray": ["gray", "grey"], "purple": ["purple", "violet"]}
ACCENTS = {"flame": (1.0, 0.72, 0.15), "leaf": (0.16, 0.62, 0.20), "dark": (0.12, 0.10, 0.09), "carrot": (0.96, 0.50, 0.08)}


def _rot(axis: str, degrees: float) -> torch.Tensor:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    m = {"x": [[1, 0, 0], [0, c, -s], [0, s, c]], "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]], "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]]}
    return torch.tensor(m[axis], dtype=torch.float64)


_I = torch.eye(3, dtype=torch.float64)


@dataclass
class Part:
    kind: int
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    role: str  # "main", "second" or an accent name
    rotation: torch.Tensor = field(default_factory=lambda: _I)


def _e(c, s, role="main", R=_I):
    return Part(ELLIPSOID, c, s, role, R)


def _b(c, s, role="main", R=_I):
    return Part(BOX, c, s, role, R)


def _f(c, r0, h, r1, role="main", R=_I):
    return Part(FRUSTUM, c, (r0, h, r1), role, R)


def _legs(rng, half_w, half_d, top, length, thick, role):
    return [_b((sx * half_w, top - length / 2, sz * half_d), (thick, length / 2, thick), role)
            for sx in (-1, 1) for sz in (-1, 1)]


# Each builder draws proportions from ``rng`` and returns parts in a rough [-1, 1] frame, y up,
# front facing +z. The world later centres and scales every object to a fixed size.
def table(rng):
    w, d, h = rng.uniform(0.7, 1.0), rng.uniform(0.45, 0.8), rng.uniform(0.5, 0.8)
    t = rng.uniform(0.04, 0.07)
    return [_b((0, h, 0), (w, t, d))] + _legs(rng, w - 0.08, d - 0.08, h, h, rng.uniform(0.04, 0.07), "second")


def chair(rng):
    w, h, back = rng.uniform(0.4, 0.55), rng.uniform(0.45, 0.6), rng.uniform(0.45, 0.8)
    return [_b((0, h, 0), (w, 0.05, w)), _b((0, h + back, -w + 0.05), (w, back, 0.05))] + _legs(
        rng, w - 0.05, w - 0.05, h, h, 0.045, "second")


def mushroom(rng):
    r, sh, sr = rng.uniform(0.55, 0.85), rng.uniform(0.35, 0.6), rng.uniform(0.14, 0.24)
    cap_h = rng.uniform(0.3, 0.5)
    return [_f((0, sh / 2, 0), sr * 1.15, sh / 2, sr, "second"), _e((0, sh + 0.05, 0), (r, cap_h, r))]


def snowman(rng):
    r1, r2, r3 = rng.uniform(0.42, 0.5), rng.uniform(0.3, 0.36), rng.uniform(0.2, 0.25)
    y1, y2 = r1, 2 * r1 + r2 * 0.8
    y3 = y2 + r2 + r3 * 0.7
    return [_e((0, y1, 0), (r1, r1, r1)), _e((0, y2, 0), (r2, r2, r2)), _e((0, y3, 0), (r3, r3, r3)),
            _f((0, y3 + r3 + 0.08, 0), r3 * 0.8, 0.12, r3 * 0.8, "second"), _f((0, y3 + r3 * 0.75, 0), r3 * 1.3, 0.015, r3 * 1.3, "second"),
            _f((0, y3, r3 + 0.08), 0.05, 0.1, 0.0, "carrot", _rot("x", 90))]


def lamp(rng):
    h, sr = rng.uniform(1.0, 1.5), rng.uniform(0.3, 0.45)
    return [_f((0, 0.03, 0), 0.3, 0.03, 0.3, "second"), _f((0, h / 2, 0), 0.035, h / 2, 0.035, "second"),
            _f((0, h, 0), sr, rng.uniform(0.18, 0.28), sr * rng.uniform(0.45, 0.7))]


def rocket(rng):
    r, h = rng.uniform(0.2, 0.28), rng.uniform(0.6, 0.9)
    parts = [_f((0, h, 0), r, h * 0.75, r), _f((0, h * 1.75 + 0.2, 0), r, 0.2, 0.0, "second")]
    for a in (0, 120, 240):
        R = _rot("y", a)
        c = (R @ torch.tensor([r + 0.08, 0.0, 0.0], dtype=torch.float64)).tolist()
        parts.append(_b((c[0], h * 0.35, c[2]), (0.12, 0.2, 0.02), "second", R))
    return parts


def tree(rng):
    tiers, r = rng.choice([2, 3]), rng.uniform(0.5, 0.7)
    th = rng.uniform(0.2, 0.35)
    parts, y = [_f((0, th / 2, 0), 0.1, th / 2, 0.1, "second")], th
    for i in range(tiers):
        hh = rng.uniform(0.28, 0.35)
        parts.append(_f((0, y + hh, 0), r * (1 - 0.25 * i), hh, 0.0))
        y += hh * 1.1
    return parts


def house(rng):
    w, d, h = rng.uniform(0.5, 0.7), rng.uniform(0.45, 0.6), rng.uniform(0.4, 0.55)
    roof = w / math.sqrt(2) * 1.02
    return [_b((0, h, 0), (w, h, d)), _b((0, 2 * h, 0), (roof, roof, d * 1.08), "second", _rot("z", 45)),
            _b((0, h * 0.45, d), (0.12, h * 0.45, 0.02), "dark")]


def cup(rng):
    r, h = rng.uniform(0.3, 0.42), rng.uniform(0.35, 0.55)
    hx = r + 0.12
    return [_f((0, h, 0), r * rng.uniform(0.8, 1.0), h, r), _b((hx, h, 0), (0.03, h * 0.55, 0.04), "second"),
            _b((r + 0.05, h * 1.5, 0), (0.08, 0.03, 0.04), "second"), _b((r + 0.05, h * 0.5, 0), (0.08, 0.03, 0.04), "second")]


def car(rng):
    L, w, h = rng.uniform(0.85, 1.0), rng.uniform(0.38, 0.45), rng.uniform(0.15, 0.22)
    wr = rng.uniform(0.14, 0.18)
    parts = [_b((0, wr + h, 0), (w, h, L)), _b((0, wr + 2 * h + 0.13, -0.1 * L), (w * 0.85, 0.14, L * 0.5))]
    for sx in (-1, 1):
        for sz in (-0.65, 0.65):
            parts.append(_f((sx * w, wr, sz * L), wr, 0.06, wr, "second", _rot("z", 90)))
    return parts


def dumbbell(rng):
    L, r = rng.uniform(0.55, 0.8), rng.uniform(0.22, 0.32)
    return [_f((0, 0, 0), 0.05, L, 0.05, "second", _rot("z", 90)),
            _f((-L, 0, 0), r, 0.12, r, "main", _rot("z", 90)), _f((L, 0, 0), r, 0.12, r, "main", _rot("z", 90))]


def candle(rng):
    r, h = rng.uniform(0.16, 0.26), rng.uniform(0.5, 0.9)
    return [_f((0, h, 0), r, h, r), _f((0, 2 * h + 0.04, 0), 0.012, 0.04, 0.012, "dark"),
            _e((0, 2 * h + 0.16, 0), (0.06, 0.11, 0.06), "flame")]


def pawn(rng):
    r = rng.uniform(0.32, 0.4)
    return [_f((0, 0.06, 0), r, 0.06, r * 0.9), _f((0, 0.45, 0), r * 0.75, 0.35, r * 0.25),
            _f((0, 0.8, 0), r * 0.55, 0.03, r * 0.55), _e((0, 0.98, 0), (r * 0.55, r * 0.55, r * 0.55))]


def hammer(rng):
    L = rng.uniform(0.8, 1.1)
    return [_f((0, L / 2, 0), 0.05, L / 2, 0.05, "second"), _b((0, L + 0.05, 0), (rng.uniform(0.28, 0.38), 0.1, 0.1))]


def bottle(rng):
    r, h = rng.uniform(0.22, 0.3), rng.uniform(0.45, 0.65)
    return [_f((0, h, 0), r, h, r), _f((0, 2 * h + 0.12, 0), r, 0.12, 0.08), _f((0, 2 * h + 0.32, 0), 0.08, 0.08, 0.08),
            _f((0, 2 * h + 0.43, 0), 0.095, 0.04, 0.095, "second")]


def tower(rng):
    r, h = rng.uniform(0.25, 0.35), rng.uniform(0.6, 0.8)
    return [_f((0, h, 0), r * 1.1, h, r), _f((0, 2 * h + 0.05, 0), r * 1.15, 0.05, r * 1.15),
            _f((0, 2 * h + 0.1 + 0.25, 0), r * 1.15, 0.25, 0.0, "second")]


def bench(rng):
    w, d, h = rng.uniform(0.9, 1.0), rng.uniform(0.25, 0.32), rng.uniform(0.35, 0.45)
    parts = [_b((0, h, z), (w, 0.03, d / 3.5)) for z in (-d * 0.6, 0.0, d * 0.6)]
    parts.append(_b((0, h + 0.3, -d), (w, 0.12, 0.03)))
    return parts + _legs(rng, w - 0.1, d - 0.05, h, h, 0.04, "second")


def flower(rng):
    h, pr = rng.uniform(0.7, 1.0), rng.uniform(0.18, 0.25)
    petals = rng.choice([5, 6])
    parts = [_f((0, h / 2, 0), 0.03, h / 2, 0.03, "second"), _e((0, h, 0.02), (0.1, 0.1, 0.06), "flame"),
             _e((0.14, h * 0.45, 0), (0.14, 0.05, 0.07), "second", _rot("z", 30))]
    for i in range(petals):
        R = _rot("z", 360.0 * i / petals)
        c = (R @ torch.tensor([pr, 0.0, 0.0], dtype=torch.float64)).tolist()
        parts.append(_e((c[0], h + c[1], 0), (pr * 0.75, 0.08, 0.03), "main", R))
    return parts


def robot(rng):
    w, h = rng.uniform(0.3, 0.38), rng.uniform(0.3, 0.38)
    legs = rng.uniform(0.3, 0.4)
    return [_b((0, 2 * legs + h, 0), (w, h, 0.2)), _b((0, 2 * legs + 2 * h + 0.2, 0), (0.18, 0.16, 0.16)),
            _b((-0.13, legs, 0), (0.07, legs, 0.07), "second"), _b((0.13, legs, 0), (0.07, legs, 0.07), "second"),
            _b((-w - 0.07, 2 * legs + h, 0), (0.06, h, 0.06), "second"), _b((w + 0.07, 2 * legs + h, 0), (0.06, h, 0.06), "second"),
            _b((0, 2 * legs + 2 * h + 0.22, 0.16), (0.12, 0.03, 0.01), "dark")]


def boat(rng):
    L, w = rng.uniform(0.8, 1.0), rng.uniform(0.25, 0.32)
    mast = rng.uniform(0.7, 0.9)
    return [_b((0, 0.12, 0), (w, 0.12, L)), _b((0, 0.01, 0), (w * 0.7, 0.06, L * 0.8)),
            _f((0, 0.24 + mast / 2, 0), 0.025, mast / 2, 0.025, "dark"),
            _b((0, 0.3 + mast / 2, 0.25), (0.015, mast * 0.42, 0.24), "second")]


def ice_cream(rng):
    r = rng.uniform(0.26, 0.33)
    h = rng.uniform(0.4, 0.55)
    return [_f((0, h, 0), 0.0, h, r, "second"), _e((0, 2 * h + r * 0.5, 0), (r * 1.1, r, r * 1.1))]


def lollipop(rng):
    r, L = rng.uniform(0.3, 0.4), rng.uniform(0.6, 0.8)
    return [_f((0, L / 2, 0), 0.025, L / 2, 0.025, "second"), _f((0, L + r, 0), r, 0.06, r, "main", _rot("x", 90))]


def umbrella(rng):
    r, L = rng.uniform(0.7, 0.85), rng.uniform(0.8, 1.0)
    return [_f((0, L / 2, 0), 0.025, L / 2, 0.025, "second"), _f((0, L + 0.12, 0), r, 0.15, 0.02),
            _f((0.05, 0.04, 0), 0.03, 0.06, 0.03, "second", _rot("z", 90))]


def apple(rng):
    r = rng.uniform(0.4, 0.5)
    return [_e((0, r, 0), (r, r * rng.uniform(0.85, 0.95), r)), _f((0, 2 * r, 0), 0.025, 0.1, 0.02, "dark"),
            _e((0.1, 2 * r + 0.04, 0), (0.1, 0.025, 0.05), "leaf", _rot("z", -25))]


@dataclass(frozen=True)
class Category:
    name: str
    build: callable
    synonyms: tuple[str, ...]
    second_part: str | None  # name of the part that can take a second colour
    second_default: str | None  # its colour when the caption does not name one (None: the main colour)
    usual_colors: tuple[str, ...] = ()


CATEGORIES: list[Category] = [
    Category("table", table, ("table",), "legs", None),
    Category("chair", chair, ("chair",), "legs", None),
    Category("mushroom", mushroom, ("mushroom", "toadstool"), "stem", "white"),
    Category("snowman", snowman, ("snowman",), "hat", "black"),
    Category("lamp", lamp, ("lamp", "floor lamp"), "stand", "gray"),
    Category("rocket", rocket, ("rocket", "space rocket"), "fins", "gray"),
    Category("tree", tree, ("tree", "pine tree", "fir tree"), "trunk", "brown"),
    Category("house", house, ("house", "cottage"), "roof", "brown"),
    Category("cup", cup, ("cup", "mug"), "handle", None),
    Category("car", car, ("car", "automobile"), "wheels", "black"),
    Category("dumbbell", dumbbell, ("dumbbell",), "bar", "gray"),
    Category("candle", candle, ("candle",), None, None),
    Category("pawn", pawn, ("chess pawn", "pawn"), None, None),
    Category("hammer", hammer, ("hammer",), "handle", "brown"),
    Category("bottle", bottle, ("bottle",), "cap", None),
    Category("tower", tower, ("tower", "castle tower"), "roof", "gray"),
    Category("bench", bench, ("bench", "park bench"), "legs", None),
    Category("flower", flower, ("flower",), "stem", "green"),
    Category("robot", robot, ("robot",), "limbs", "gray"),
    Category("boat", boat, ("boat", "sailboat"), "sail", "white"),
    Category("ice cream", ice_cream, ("ice cream", "ice cream cone"), "cone", "brown"),
    Category("lollipop", lollipop, ("lollipop",), "stick", "white"),
    Category("umbrella", umbrella, ("umbrella",), "handle", "black"),
    Category("apple", apple, ("apple",), None, None),
]
CATEGORY_NAMES = [c.name for c in CATEGORIES]
_BY_NAME = {c.name: c for c in CATEGORIES}

# One held-out main colour per category, spread so that every colour is held out twice.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    (c.name, COLOR_NAMES[(5 * i + 3) % len(COLOR_NAMES)]) for i, c in enumerate(CATEGORIES)
)

OBJECT_EXTENT = 0.72  # largest side of every object's bounding box (the views see about [-0.5, 0.5])


@dataclass(frozen=True)
class ObjectSpec:
    """What to build: everything a caption can say, plus the seed for the proportions."""

    category: str
    color: str
    second_color: str | None = None  # None: the category's default for its second part
    seed: int = 0


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(spec: ObjectSpec, rng: random.Random | None = None) -> str:
    """A caption for ``spec``; ``rng`` picks a template and synonyms (None: the canonical form)."""
    cat = _BY_NAME[spec.category]
    pick = (lambda xs: xs[0]) if rng is None else rng.choice
    noun = pick(cat.synonyms)
    color = pick(COLOR_SYNONYMS.get(spec.color, [spec.color]))
    text = f"{color} {noun}"
    if spec.second_color is not None and cat.second_part:
        second = pick(COLOR_SYNONYMS.get(spec.second_color, [spec.second_color]))
        text += f" with {_article(second)} {second} {cat.second_part}"
    if rng is None:
        return f"{_article(text)} {text}"
    template = rng.choice(["{a} {t}", "{a} {t}", "{t}", "a 3d model of {a} {t}", "a photo of {a} {t}", "a render of {a} {t}"])
    return template.format(a=_article(text), t=text)


def parse(prompt: str) -> ObjectSpec | None:
    """Best-effort inverse of ``caption`` (category and colours), or None outside the grammar."""
    text = " " + prompt.lower().replace(",", " ").replace(".", " ") + " "
    words = text.split()
    colors = []
    synonyms = {s: name for name, alts in COLOR_SYNONYMS.items() for s in alts} | {c: c for c in COLORS}
    for w in words:
        if w in synonyms:
            colors.append(synonyms[w])
    found = None
    for cat in sorted(CATEGORIES, key=lambda c: -max(len(s) for s in c.synonyms)):
        if any(f" {s} " in text for s in cat.synonyms):
            found = cat
            break
    if found is None or not colors:
        return None
    return ObjectSpec(found.name, colors[0], colors[1] if len(colors) > 1 and found.second_part else None)


def sample_spec(seed: int, split: str = "train", two_color_rate: float = 0.3) -> ObjectSpec:
    """A random object description; ``split`` "train" avoids HELD_OUT pairs, "held_out" uses only them."""
    rng = random.Random(f"spec/{seed}")
    if split == "held_out":
        category, color = sorted(HELD_OUT)[rng.randrange(len(HELD_OUT))]
    else:
        while True:
            category, color = rng.choice(CATEGORY_NAMES), rng.choice(COLOR_NAMES)
            if split == "all" or (category, color) not in HELD_OUT:
                break
    second = None
    cat = _BY_NAME[category]
    if cat.second_part and rng.random() < two_color_rate:
        second = rng.choice([c for c in COLOR_NAMES if c != color])
    return ObjectSpec(category, color, second, seed)


def build(spec: ObjectSpec) -> list[Primitive]:
    """Primitives of the object, centred and scaled so its largest side is about OBJECT_EXTENT."""
    cat = _BY_NAME[spec.category]
    rng = random.Random(f"shape/{spec.seed}")
    parts = cat.build(rng)
    def jitter(color):
        return tuple(min(1.0, max(0.0, v + rng.uniform(-0.04, 0.04))) for v in color)

    main = jitter(COLORS[spec.color])
    second_name = spec.second_color or cat.second_default
    second = jitter(COLORS[second_name]) if second_name else main
    yaw = _rot("y", rng.uniform(-25, 25))
    prims = []
    for p in parts:
        color = main if p.role == "main" else second if p.role == "second" else ACCENTS[p.role]
        center = tuple((yaw @ torch.tensor(p.center, dtype=torch.float64)).tolist())
        prims.append(Primitive(p.kind, center, p.size, yaw @ p.rotation, color))
    # Bounds after the yaw, so the finished object never leaves the views.
    lo = torch.stack([torch.tensor(p.center, dtype=torch.float64) - p.half_extent() for p in prims]).min(0).values
    hi = torch.stack([torch.tensor(p.center, dtype=torch.float64) + p.half_extent() for p in prims]).max(0).values
    scale = OBJECT_EXTENT * rng.uniform(0.85, 1.0) / float((hi - lo).max())
    mid = (lo + hi) / 2
    mid[1] -= 0.03 / scale  # a little up: the views look down 10 degrees, so low near corners sit lower
    return [
        Primitive(p.kind, tuple(((torch.tensor(p.center, dtype=torch.float64) - mid) * scale).tolist()),
                  tuple(s * scale for s in p.size), p.rotation, p.color)
        for p in prims
    ]
