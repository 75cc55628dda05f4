"""Seeded image–caption data: one or two coloured shapes, described in varied words.

No caption corpus can be downloaded here, so the image–text models are exercised on pictures whose content is
known exactly: colour, kind, size and grid cell of every shape and the background texture are drawn from a seeded
RNG and rendered with PIL. Captions paraphrase exactly those attributes through templates, synonyms and word
orders, so a model has to ground words in pixels instead of matching fixed strings, and two shapes per picture
make the caption space large enough that retrieval over thousands of images stays meaningful.
"""

import io
from dataclasses import dataclass

import numpy as np
from datasets import Dataset, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage
from PIL import ImageDraw

IMAGE_CAPTION_FEATURES = Features(
    {"image_id": Value("int64"), "image": Image(mode="RGB"), "captions": List(Value("string"))}
)

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "purple": (140, 60, 200),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPE_SYNONYMS = {
    "circle": ("circle", "disc", "round dot"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
    "ring": ("ring", "hoop", "hollow circle"),
}
SIZE_SYNONYMS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
BACKGROUND_SYNONYMS = {"plain": ("plain", "uniform", "flat grey"), "noisy": ("noisy", "grainy", "speckled")}

_RADIUS_FRACTION = {"small": 0.08, "large": 0.14}
_BACKGROUND_GREY_RANGE = (95, 165)
_BACKGROUND_TINT = 10
_BACKGROUND_NOISE_STD = 14.0
_CELL_JITTER_FRACTION = 0.03

_OBJECT_TEMPLATES = (
    "{size} {colour} {kind} {position}",
    "{colour} {kind}, {size}, {position}",
    "{size} {kind} coloured {colour}, {position}",
    "{colour} {kind} of {base_size} size {position}",
    "{size} {colour} {kind}, {position}",
)
_PAIR_TEMPLATES = ("{0} and {1}", "{0}, together with {1}", "{0} as well as {1}", "{0} next to {1}")
_CAPTION_TEMPLATES = {
    1: (
        "{objects}",
        "there is {objects}",
        "a picture of {objects}",
        "the image shows {objects}",
        "{objects}, on a {background} background",
    ),
    2: (
        "{objects}",
        "two shapes: {objects}",
        "a picture of {objects}",
        "the image shows {objects}",
        "{objects}, on a {background} background",
        "on a {background} background, {objects}",
    ),
}
_MAX_DRAWS_PER_CAPTION = 20


def _position_phrases() -> dict[tuple[int, int], tuple[str, ...]]:
    """Phrases naming each cell (row, column) of the 3x3 grid the shapes are placed on."""
    vertical = {0: ("top", "upper"), 2: ("bottom", "lower")}
    horizontal = {0: "left", 2: "right"}
    phrases = {
        (1, 1): ("in the centre", "in the middle", "in the centre of the picture", "in the middle of the image")
    }
    for column, side in horizontal.items():
        phrases[(1, column)] = (
            f"on the {side}",
            f"on the {side} side",
            f"in the {side} part of the picture",
            f"at the {side} of the image",
        )
    for row, (edge, adjective) in vertical.items():
        phrases[(row, 1)] = (
            f"at the {edge}",
            f"near the {edge} edge",
            f"in the {adjective} part of the picture",
            f"at the {edge} of the image",
        )
        for column, side in horizontal.items():
            phrases[(row, column)] = (
                f"in the {edge} {side} corner",
                f"at the {adjective} {side}",
                f"in the {edge} {side} of the picture",
            )
    return phrases


POSITION_PHRASES = _position_phrases()


@dataclass(frozen=True)
class ShapeSpec:
    """One drawn shape; `cell` is its (row, column) in the 3x3 placement grid."""

    colour: str
    kind: str
    size: str
    cell: tuple[int, int]


def _choice(rng: np.random.Generator, options: tuple | list):
    """Uniform pick; `rng.random` costs less than `rng.integers` per call, which adds up over thousands of captions."""
    return options[int(rng.random() * len(options))]


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _describe_shape(shape: ShapeSpec, rng: np.random.Generator) -> str:
    template = _choice(rng, _OBJECT_TEMPLATES)
    phrase = template.format(
        size=_choice(rng, SIZE_SYNONYMS[shape.size]),
        base_size=shape.size,
        colour=shape.colour,
        kind=_choice(rng, SHAPE_SYNONYMS[shape.kind]),
        position=_choice(rng, POSITION_PHRASES[shape.cell]),
    )
    return _with_article(phrase)


def _caption(shapes: list[ShapeSpec], background: str, rng: np.random.Generator) -> str:
    phrases = [_describe_shape(shape, rng) for shape in shapes]
    if len(phrases) == 2:
        if rng.random() < 0.5:
            phrases.reverse()
        objects = _choice(rng, _PAIR_TEMPLATES).format(*phrases)
    else:
        objects = phrases[0]
    template = _choice(rng, _CAPTION_TEMPLATES[len(shapes)])
    return template.format(objects=objects, background=_choice(rng, BACKGROUND_SYNONYMS[background]))


def _distinct_captions(
    shapes: list[ShapeSpec], background: str, count: int, rng: np.random.Generator
) -> list[str]:
    captions: dict[str, None] = {}
    for _ in range(_MAX_DRAWS_PER_CAPTION * count):
        captions[_caption(shapes, background, rng)] = None
        if len(captions) == count:
            return list(captions)
    raise ValueError(
        f"Could only phrase {len(captions)} distinct captions for {shapes}; lower captions_per_image (got {count})."
    )


def _draw_shape(draw: ImageDraw.ImageDraw, shape: ShapeSpec, centre: tuple[float, float], radius: float) -> None:
    x, y = centre
    fill = COLOURS[shape.colour]
    if shape.kind == "circle":
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
    elif shape.kind == "ring":
        width = max(2, round(0.35 * radius))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=fill, width=width)
    elif shape.kind == "square":
        half = 0.85 * radius
        draw.rectangle((x - half, y - half, x + half, y + half), fill=fill)
    elif shape.kind == "triangle":
        draw.regular_polygon((x, y, radius), n_sides=3, fill=fill)
    elif shape.kind == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
        draw.polygon(list(zip(x + radii * np.cos(angles), y - radii * np.sin(angles))), fill=fill)
    elif shape.kind == "cross":
        arm = 0.35 * radius
        draw.rectangle((x - radius, y - arm, x + radius, y + arm), fill=fill)
        draw.rectangle((x - arm, y - radius, x + arm, y + radius), fill=fill)
    else:
        raise ValueError(f"Unknown shape kind {shape.kind!r}; expected one of {sorted(SHAPE_SYNONYMS)}.")


def _render(
    shapes: list[ShapeSpec], background: str, image_size: int, rng: np.random.Generator
) -> PILImage.Image:
    grey = rng.integers(*_BACKGROUND_GREY_RANGE) + rng.integers(-_BACKGROUND_TINT, _BACKGROUND_TINT + 1, size=3)
    pixels = np.full((image_size, image_size, 3), grey, dtype=np.float32)
    if background == "noisy":
        pixels += _BACKGROUND_NOISE_STD * rng.standard_normal(pixels.shape, dtype=np.float32)
    image = PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    cell_size = image_size / 3
    for shape in shapes:
        row, column = shape.cell
        jitter = rng.uniform(-_CELL_JITTER_FRACTION, _CELL_JITTER_FRACTION, size=2) * image_size
        centre = ((column + 0.5) * cell_size + jitter[0], (row + 0.5) * cell_size + jitter[1])
        radius = _RADIUS_FRACTION[shape.size] * image_size * rng.uniform(0.9, 1.1)
        _draw_shape(draw, shape, centre, radius)
    return image


def _uncompressed_bytes(image: PILImage.Image) -> dict[str, bytes | None]:
    """BMP-encode for the `Image` column: noisy backgrounds barely compress, and PNG would dominate the run time."""
    buffer = io.BytesIO()
    image.save(buffer, format="BMP")
    return {"bytes": buffer.getvalue(), "path": None}


def _sample_shapes(rng: np.random.Generator) -> list[ShapeSpec]:
    num_shapes = int(rng.integers(1, 3))
    cells = rng.choice(9, size=num_shapes, replace=False)
    return [
        ShapeSpec(
            colour=_choice(rng, list(COLOURS)),
            kind=_choice(rng, list(SHAPE_SYNONYMS)),
            size=_choice(rng, list(SIZE_SYNONYMS)),
            cell=(int(cell) // 3, int(cell) % 3),
        )
        for cell in cells
    ]


def _generate(
    num_images: int, rng: np.random.Generator, first_image_id: int, image_size: int, captions_per_image: int
) -> Dataset:
    if num_images < 0:
        raise ValueError(f"num_images must be non-negative, got {num_images}.")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels for the shapes to be recognisable, got {image_size}.")
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image must be at least 1, got {captions_per_image}.")
    images, captions = [], []
    for _ in range(num_images):
        shapes = _sample_shapes(rng)
        background = _choice(rng, list(BACKGROUND_SYNONYMS))
        images.append(_uncompressed_bytes(_render(shapes, background, image_size, rng)))
        captions.append(_distinct_captions(shapes, background, captions_per_image, rng))
    image_ids = list(range(first_image_id, first_image_id + num_images))
    return Dataset.from_dict(
        {"image_id": image_ids, "image": images, "captions": captions}, features=IMAGE_CAPTION_FEATURES
    )


def make_shapes_dataset(
    num_images: int, seed: int = 0, image_size: int = 64, captions_per_image: int = 5
) -> Dataset:
    """Pictures of one or two shapes with `captions_per_image` distinct captions each; same seed, same data.

    Image `i` depends only on `seed` and the images before it, so a smaller `num_images` yields a prefix.
    """
    return _generate(num_images, np.random.default_rng(seed), 0, image_size, captions_per_image)


def make_shapes_splits(
    num_train: int, num_eval: int, seed: int = 0, image_size: int = 64, captions_per_image: int = 5
) -> DatasetDict:
    """`train` equals `make_shapes_dataset(num_train, seed, ...)`; `validation` comes from a disjoint RNG stream.

    Validation image ids continue after the training ones, so ids are unique across the splits.
    """
    eval_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    return DatasetDict(
        train=make_shapes_dataset(num_train, seed, image_size, captions_per_image),
        validation=_generate(num_eval, eval_rng, num_train, image_size, captions_per_image),
    )
