"""A seeded ScienceQA stand-in, written in the real release format and read back through `load_scienceqa`.

Three kinds of problems, as in ScienceQA:

- **image** (IMG): rendered scenes of coloured shapes on a 3×3 grid: counting, colour, map position (compass
  directions) and comparing counts. The question and options are the same whatever the picture shows, and the
  answer is drawn uniformly among the options, so the text alone gives chance accuracy;
- **context** (TXT): the hint holds the facts (whose ribbon is longer, which town is older, who owns which pet);
- **no context** (NO): the answer follows from the topic's lecture (animal classes, magnets, states of matter,
  word classes), whose facts every training problem of the topic restates.

Every solution names what it observes (in the picture, the text or the lecture) before it concludes. Answer
positions are balanced (each block of n problems with n options puts the answer once at every position), and
everything is drawn from one seeded generator, so a seed gives the same files.
"""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SPLITS = ("train", "val", "test")
OPTION_COUNTS = {"count": 4, "colour": 3, "map": 4, "compare": 2}

COLOURS = {
    "red": (215, 40, 40),
    "blue": (40, 80, 220),
    "green": (35, 160, 60),
    "yellow": (235, 205, 30),
    "purple": (140, 60, 190),
}
KINDS = ("circle", "square", "triangle")
# Grid cells (row, column) named as map directions.
DIRECTIONS = {
    (0, 0): "north-west", (0, 1): "north", (0, 2): "north-east",
    (1, 0): "west", (1, 1): "centre", (1, 2): "east",
    (2, 0): "south-west", (2, 1): "south", (2, 2): "south-east",
}  # fmt: skip
CELLS = tuple(DIRECTIONS)

NAMES = (
    "Ava", "Ben", "Carla", "Dev", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jon", "Kira", "Leo", "Maya", "Nina",
    "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Victor", "Wes", "Yara", "Zane",
)  # fmt: skip
PETS = ("dog", "cat", "parrot", "rabbit", "hamster", "turtle", "goldfish", "pony", "lizard", "canary")
TOWNS = (
    "Millbrook", "Ashford", "Riverton", "Oakdale", "Stonebridge", "Fairview", "Elmwood", "Clearwater", "Greenfield",
    "Hillcrest", "Maplewood", "Northgate", "Pinehurst", "Redcliff", "Westbury",
)  # fmt: skip
MEASURES = (
    # (thing, verb phrase with the unit, adjective for more, adjective for less)
    ("ribbon", "is {x} centimetres long", "longer", "shorter"),
    ("rope", "is {x} metres long", "longer", "shorter"),
    ("backpack", "weighs {x} kilograms", "heavier", "lighter"),
    ("sunflower", "is {x} centimetres tall", "taller", "shorter"),
    ("soup", "is {x} degrees Celsius", "warmer", "colder"),
)
ANIMALS = {
    "mammal": ("dog", "whale", "bat", "horse", "rabbit", "elephant", "dolphin", "goat", "lion", "mouse"),
    "bird": ("owl", "penguin", "eagle", "parrot", "duck", "robin", "ostrich", "swan"),
    "fish": ("shark", "salmon", "trout", "goldfish", "tuna", "cod", "eel"),
    "reptile": ("snake", "lizard", "turtle", "crocodile", "gecko", "iguana"),
    "amphibian": ("frog", "toad", "newt", "salamander"),
}
MATERIALS = {
    # object: (material, magnetic)
    "iron nail": ("iron", True), "steel spoon": ("steel", True), "paper clip": ("steel", True),
    "nickel coin": ("nickel", True), "steel key": ("steel", True), "iron pan": ("iron", True),
    "wooden ruler": ("wood", False), "glass jar": ("glass", False), "plastic cup": ("plastic", False),
    "paper bag": ("paper", False), "rubber ball": ("rubber", False), "cotton sock": ("cotton", False),
    "copper wire": ("copper", False), "aluminium can": ("aluminium", False),
}  # fmt: skip
STATES = {
    "solid": ("rock", "ice cube", "brick", "coin", "wooden block", "pencil"),
    "liquid": ("water", "milk", "orange juice", "honey", "olive oil", "vinegar"),
    "gas": ("steam", "air", "oxygen", "helium", "carbon dioxide", "water vapour"),
}
WORD_CLASSES = {
    "noun": ("table", "river", "teacher", "apple", "city", "garden", "book", "mountain", "window", "horse"),
    "verb": ("run", "jump", "sing", "write", "swim", "build", "read", "climb", "laugh", "carry"),
    "adjective": ("happy", "tall", "bright", "soft", "quiet", "cold", "green", "brave", "tiny", "loud"),
}
LECTURES = {
    "count": "Count each shape of the colour once.",
    "colour": "Find the shape, then look at its colour.",
    "map": "On a map, north is up, south is down, west is left and east is right.",
    "compare": "Count both groups; the larger number has more.",
    "measure": "With the same unit, the larger number is the larger amount.",
    "towns": "A town founded earlier is older.",
    "pets": "Find the person in the text.",
    "animals": "Animals are mammals, birds, fish, reptiles or amphibians.",
    "magnets": "Magnets attract iron, steel and nickel, and no other material.",
    "states": "Matter is solid, liquid or gas.",
    "words": "A noun names a thing, a verb an action, and an adjective describes a noun.",
}
# family: (subject, topic, category, lowest grade, highest grade, image?)
FAMILIES = {
    "count": ("natural science", "science-and-engineering-practices", "Count objects in a picture", 1, 3, True),
    "colour": ("natural science", "science-and-engineering-practices", "Identify colours in a picture", 1, 3, True),
    "map": ("social science", "geography", "Read a map: cardinal directions", 2, 5, True),
    "compare": ("natural science", "science-and-engineering-practices", "Compare groups in a picture", 4, 8, True),
    "measure": ("natural science", "units-and-measurement", "Compare measurements", 5, 8, False),
    "towns": ("social science", "us-history", "Compare founding dates", 7, 10, False),
    "pets": ("language science", "reading-comprehension", "Find details in a text", 2, 4, False),
    "animals": ("natural science", "biology", "Classify animals", 2, 7, False),
    "magnets": ("natural science", "physics", "Identify magnetic materials", 3, 8, False),
    "states": ("natural science", "chemistry", "Identify states of matter", 2, 8, False),
    "words": ("language science", "grammar", "Identify word classes", 3, 9, False),
}
# Share of each family: 40 % image, 24 % context, 36 % lecture-only problems.
FAMILY_WEIGHTS = {
    "count": 0.10, "colour": 0.10, "map": 0.10, "compare": 0.10,
    "measure": 0.08, "towns": 0.08, "pets": 0.08,
    "animals": 0.09, "magnets": 0.09, "states": 0.09, "words": 0.09,
}  # fmt: skip


def _plural(count: int, word: str) -> str:
    return word if count == 1 else f"{word}s"


class _Generator:
    """Draws problems; holds the seeded RNG and the answer-position blocks."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self._positions: dict[int, list[int]] = {}

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def sample(self, options, k: int) -> list:
        return [options[i] for i in self.rng.choice(len(options), size=k, replace=False)]

    def answer_position(self, num_choices: int) -> int:
        """Block-balanced: every `num_choices` draws use each position once, in a random order."""
        block = self._positions.setdefault(num_choices, [])
        if not block:
            block.extend(int(p) for p in self.rng.permutation(num_choices))
        return block.pop()

    def arrange(self, answer, distractors: list) -> tuple[list, int]:
        """The options with the answer at a balanced position and the distractors in random order."""
        distractors = [distractors[i] for i in self.rng.permutation(len(distractors))]
        position = self.answer_position(len(distractors) + 1)
        return distractors[:position] + [answer] + distractors[position:], position

    def choose_answer(self, candidates: list) -> tuple[list, int]:
        """Options = `candidates` in random order, answer at a balanced position: for image questions, where the
        scene is then drawn to fit the answer, so the options say nothing about which one is right."""
        order = [candidates[i] for i in self.rng.permutation(len(candidates))]
        position = self.answer_position(len(candidates))
        return order, position

    # -- scenes -------------------------------------------------------------------------------------------------
    def scene(
        self, fixed: list[tuple[str, str]], extra: int, forbid: Callable[[str, str], bool], fixed_cells: list | None = None
    ) -> list[tuple]:
        """`fixed` (colour, kind) shapes (in `fixed_cells` when given) plus `extra` random ones that `forbid` allows,
        each in its own random cell."""
        shapes = list(fixed)
        while len(shapes) < len(fixed) + extra:
            colour, kind = self.choice(tuple(COLOURS)), self.choice(KINDS)
            if not forbid(colour, kind):
                shapes.append((colour, kind))
        cells = list(fixed_cells or [])
        cells += self.sample([cell for cell in CELLS if cell not in cells], len(shapes) - len(cells))
        return [(colour, kind, cell) for (colour, kind), cell in zip(shapes, cells)]


def render_scene(shapes: list[tuple], image_size: int, rng: np.random.Generator) -> Image.Image:
    """Shapes drawn in their grid cells (with a little jitter) on a light, slightly noisy background."""
    scale = 4  # drawn large, then downsampled, for smooth edges at small sizes
    size = image_size * scale
    cell = size / 3
    background = rng.normal(225, 6, size=(image_size, image_size, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background).resize((size, size), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    for colour, kind, (row, column) in shapes:
        radius = cell * rng.uniform(0.28, 0.36)
        jitter = cell * 0.08
        cx = (column + 0.5) * cell + rng.uniform(-jitter, jitter)
        cy = (row + 0.5) * cell + rng.uniform(-jitter, jitter)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        fill = COLOURS[colour]
        if kind == "circle":
            draw.ellipse(box, fill=fill)
        elif kind == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius * 0.85), (cx + radius, cy + radius * 0.85)], fill=fill)
    return image.resize((image_size, image_size), Image.LANCZOS)


def _count(g: _Generator) -> tuple:
    colour = g.choice(tuple(COLOURS))
    options, position = g.choose_answer(g.sample([1, 2, 3, 4, 5], OPTION_COUNTS["count"]))
    answer = options[position]
    shapes = g.scene([(colour, g.choice(KINDS)) for _ in range(answer)], int(g.rng.integers(1, 4)), lambda c, k: c == colour)
    solution = f"The picture shows {answer} {colour} {_plural(answer, 'shape')}. So the answer is {answer}."
    question = f"How many {colour} shapes are in the picture?"
    return question, [str(option) for option in options], position, "", shapes, solution


def _colour(g: _Generator) -> tuple:
    kind = g.choice(KINDS)
    options, position = g.choose_answer(g.sample(tuple(COLOURS), OPTION_COUNTS["colour"]))
    shapes = g.scene([(options[position], kind)], int(g.rng.integers(1, 4)), lambda c, k: k == kind)
    solution = f"The {kind} in the picture is {options[position]}. So the answer is {options[position]}."
    return f"What colour is the {kind}?", options, position, "", shapes, solution


def _map(g: _Generator) -> tuple:
    colour, kind = g.choice(tuple(COLOURS)), g.choice(KINDS)
    cells, position = g.choose_answer(g.sample(CELLS, OPTION_COUNTS["map"]))
    shapes = g.scene(
        [(colour, kind)], int(g.rng.integers(1, 4)), lambda c, k: (c, k) == (colour, kind), [cells[position]]
    )
    direction = DIRECTIONS[cells[position]]
    solution = f"The {colour} {kind} is in the {direction} of the map. So the answer is {direction}."
    question = f"Look at the map. In which part of the map is the {colour} {kind}?"
    return question, [DIRECTIONS[cell] for cell in cells], position, "", shapes, solution


def _compare(g: _Generator) -> tuple:
    first, second = g.sample(tuple(COLOURS), 2)
    options, position = g.choose_answer([f"more {first} shapes", f"more {second} shapes"])
    winner = first if options[position] == f"more {first} shapes" else second
    loser = second if winner == first else first
    more, fewer = sorted(g.sample([1, 2, 3, 4], 2), reverse=True)
    counts = {winner: more, loser: fewer}
    fixed = [(colour, g.choice(KINDS)) for colour in (first, second) for _ in range(counts[colour])]
    shapes = g.scene(fixed, int(g.rng.integers(0, 2)), lambda c, k: c in (first, second))
    solution = (
        f"The picture shows {counts[first]} {first} and {counts[second]} {second} shapes. {more} is more than "
        f"{fewer}, so the answer is more {winner} shapes."
    )
    question = f"Are there more {first} shapes or more {second} shapes in the picture?"
    return question, options, position, "", shapes, solution


def _measure(g: _Generator) -> tuple:
    thing, phrase, more_word, less_word = g.choice(MEASURES)
    first, second = g.sample(NAMES, 2)
    x, y = (int(v) for v in g.rng.choice(np.arange(1, 13), size=2, replace=False))
    ask_more = bool(g.rng.integers(2))
    adjective = more_word if ask_more else less_word
    winner = first if (x > y) == ask_more else second
    loser = second if winner == first else first
    hint = f"{first}'s {thing} {phrase.format(x=x)}. {second}'s {thing} {phrase.format(x=y)}."
    options, position = g.arrange(f"{winner}'s {thing}", [f"{loser}'s {thing}"])
    big, small = max(x, y), min(x, y)
    solution = (
        f"{first}'s {thing} {phrase.format(x=x)} and {second}'s {phrase.format(x=y)}. {big} is more than {small}, "
        f"so {winner}'s {thing} is {adjective}."
    )
    return f"Whose {thing} is {adjective}?", options, position, hint, None, solution


def _towns(g: _Generator) -> tuple:
    first, second = g.sample(TOWNS, 2)
    x, y = (int(v) for v in g.rng.choice(np.arange(1700, 2000, 50), size=2, replace=False))
    ask_older = bool(g.rng.integers(2))
    adjective = "older" if ask_older else "newer"
    winner = first if (x < y) == ask_older else second
    loser = second if winner == first else first
    hint = f"{first} was founded in {x}. {second} was founded in {y}."
    options, position = g.arrange(winner, [loser])
    solution = (
        f"{first} was founded in {x} and {second} in {y}. {min(x, y)} is earlier than {max(x, y)}, so {winner} "
        f"is {adjective}."
    )
    return f"Which town is {adjective}?", options, position, hint, None, solution


def _pets(g: _Generator) -> tuple:
    people = g.sample(NAMES, 3)
    pets = g.sample(PETS, 3)
    asked = int(g.rng.integers(3))
    hint = " ".join(f"{person} has a {pet}." for person, pet in zip(people, pets))
    options, position = g.arrange(pets[asked], [pet for index, pet in enumerate(pets) if index != asked])
    solution = f"The text says {people[asked]} has a {pets[asked]}. So the answer is {pets[asked]}."
    return f"Which pet does {people[asked]} have?", options, position, hint, None, solution


def _classify(g: _Generator, classes: dict, question: str, fact: str, conclusion: str) -> tuple:
    """One item of the asked class and one of each of two other classes; the solution states every item's class.
    `question`, `fact` and `conclusion` are templates over `{cls}` and `{item}` (with an article: `{a_cls}`,
    `{a_item}`)."""
    asked, *others = g.sample(tuple(classes), 3)
    answer = g.choice(classes[asked])
    options, position = g.arrange(answer, [g.choice(classes[other]) for other in others])
    class_of = {item: cls for cls, items in classes.items() for item in items}
    facts = " ".join(
        _capitalised(fact.format(item=item, a_item=_article(item), cls=class_of[item], a_cls=_article(class_of[item]))) for item in options
    )
    solution = f"{facts} {conclusion.format(item=answer, cls=asked, a_cls=_article(asked))}"
    return question.format(cls=asked, a_cls=_article(asked)), options, position, "", None, solution


def _article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _capitalised(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _animals(g: _Generator) -> tuple:
    return _classify(g, ANIMALS, "Which animal is {a_cls}?", "{a_item} is {a_cls}.", "So the answer is {item}.")


def _states(g: _Generator) -> tuple:
    return _classify(g, STATES, "Which is {a_cls}?", "{a_item} is {a_cls}.", "So the answer is {item}.")


def _words(g: _Generator) -> tuple:
    return _classify(g, WORD_CLASSES, "Which word is {a_cls}?", "{item} is {a_cls}.", "So the answer is {item}.")


def _magnets(g: _Generator) -> tuple:
    attract = bool(g.rng.integers(2))
    wanted = [item for item, (_, magnetic) in MATERIALS.items() if magnetic == attract]
    others = [item for item, (_, magnetic) in MATERIALS.items() if magnetic != attract]
    answer = g.choice(wanted)
    options, position = g.arrange(answer, g.sample(others, 2))
    facts = " ".join(f"The {item} is {MATERIALS[item][0]}." for item in options)
    verb = "attract" if attract else "not attract"
    solution = f"{facts} So the answer is {answer}."
    return f"Which object will a magnet {verb}?", options, position, "", None, solution


_BUILDERS = {
    "count": _count, "colour": _colour, "map": _map, "compare": _compare, "measure": _measure, "towns": _towns,
    "pets": _pets, "animals": _animals, "magnets": _magnets, "states": _states, "words": _words,
}  # fmt: skip


def make_scienceqa_problems(
    num_problems: dict[str, int], seed: int = 0, image_size: int = 48
) -> tuple[dict[str, dict], dict[str, list[str]], dict[str, Image.Image]]:
    """
    `(problems, pid_splits, images)`: `problems` maps a problem id ("1", "2", …) to a problem in the ScienceQA
    schema, `pid_splits` each split of `num_problems` (e.g. `{"train": 4000, "test": 800}`) to its ids, and
    `images` the id of every image problem to its rendered `image_size`² picture.
    """
    if image_size < 12:
        raise ValueError(f"image_size must be at least 12 pixels for shapes to be told apart, got {image_size}.")
    generator = _Generator(seed)
    families = list(FAMILY_WEIGHTS)
    weights = np.array([FAMILY_WEIGHTS[family] for family in families])
    problems, pid_splits, images = {}, {}, {}
    for split, count in num_problems.items():
        pid_splits[split] = []
        for _ in range(count):
            family = families[int(generator.rng.choice(len(families), p=weights / weights.sum()))]
            question, choices, answer, hint, shapes, solution = _BUILDERS[family](generator)
            subject, topic, category, low, high, _ = FAMILIES[family]
            pid = str(len(problems) + 1)
            problems[pid] = {
                "question": question,
                "choices": list(choices),
                "answer": int(answer),
                "hint": hint,
                "image": "image.png" if shapes is not None else None,
                "task": "closed choice",
                "grade": f"grade{int(generator.rng.integers(low, high + 1))}",
                "subject": subject,
                "topic": topic,
                "category": category,
                "lecture": LECTURES[family],
                "solution": solution,
                "split": split,
            }
            if shapes is not None:
                images[pid] = render_scene(shapes, image_size, generator.rng)
            pid_splits[split].append(pid)
    return problems, pid_splits, images


def write_synthetic_scienceqa(
    output_dir: str | Path,
    num_train: int = 4000,
    num_val: int = 400,
    num_test: int = 800,
    seed: int = 0,
    image_size: int = 48,
) -> Path:
    """Write the seeded set as `problems.json`, `pid_splits.json` and `images/<split>/<pid>/image.png` under
    `output_dir`, the layout `load_scienceqa` reads; returns `output_dir`."""
    output_dir = Path(output_dir)
    problems, pid_splits, images = make_scienceqa_problems(
        {"train": num_train, "val": num_val, "test": num_test}, seed=seed, image_size=image_size
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    for pid, image in images.items():
        folder = output_dir / "images" / problems[pid]["split"] / pid
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / "image.png")
    (output_dir / "problems.json").write_text(json.dumps(problems, indent=1), encoding="utf-8")
    (output_dir / "pid_splits.json").write_text(json.dumps(pid_splits), encoding="utf-8")
    return output_dir


__all__ = ["FAMILIES", "LECTURES", "SPLITS", "make_scienceqa_problems", "render_scene", "write_synthetic_scienceqa"]
