"""ScienceQA in its own release format, and the precomputed vision features Multimodal-CoT ships for it.

A data folder holds `problems.json` (problem id → question, choices, answer index, hint, image file name or null,
lecture, solution, subject, topic, category, grade, split), `pid_splits.json` (split name → problem ids) and the
images at `images/<split>/<pid>/<image>`. Everything is checked up front, so a bad problem fails here with its id
rather than deep inside training. The embedded synthetic set (`data.synthetic_scienceqa`) is written in the same
format and read back through `load_scienceqa`.
"""

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, Image, List, Value

SCIENCEQA_FEATURES = Features(
    {
        "pid": Value("string"),
        "question": Value("string"),
        "choices": List(Value("string")),
        "answer": Value("int64"),
        "hint": Value("string"),
        "image": Image(mode="RGB"),
        "lecture": Value("string"),
        "solution": Value("string"),
        "subject": Value("string"),
        "topic": Value("string"),
        "category": Value("string"),
        "grade": Value("string"),
        "split": Value("string"),
    }
)
# Text fields a problem may leave out (the release always has them; hand-made folders may not).
_OPTIONAL_TEXT = ("hint", "lecture", "solution", "subject", "topic", "category", "grade")
_SHOWN = 5


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; a ScienceQA folder holds problems.json and pid_splits.json ({what}).")
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def _check_problem(pid: str, problem) -> None:
    if not isinstance(problem, dict):
        raise ValueError(f"Problem {pid} in problems.json is a {type(problem).__name__}, not an object.")
    if not isinstance(problem.get("question"), str) or not problem["question"].strip():
        raise ValueError(f"Problem {pid} has no question text.")
    choices = problem.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ValueError(f"Problem {pid} has no choices ({choices!r}); a problem needs at least one option.")
    if not all(isinstance(choice, str) for choice in choices):
        raise ValueError(f"Problem {pid} has a choice that is not a string: {choices!r}.")
    answer = problem.get("answer")
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        raise ValueError(
            f"Problem {pid} has answer {answer!r} but {len(choices)} choices; the answer is an index from 0 to "
            f"{len(choices) - 1}."
        )


def load_scienceqa(data_dir: str | Path, splits: Sequence[str] = ("train", "val", "test")) -> DatasetDict:
    """
    The problems of each split in `splits` (names from `pid_splits.json`: train, val, test, minival, …), in the
    order `pid_splits.json` lists them, with the columns of `SCIENCEQA_FEATURES`. `image` is decoded lazily from
    `images/<split>/<pid>/<file>` (the problem's own `split` field, so `minival` finds its images under `val`), or
    `None` for a problem without an image.

    Raises `FileNotFoundError` for a missing file or image, `ValueError` for an unknown split or id, empty choices,
    or an answer index outside the choices.
    """
    data_dir = Path(data_dir)
    problems = _read_json(data_dir / "problems.json", "problem id → problem")
    pid_splits = _read_json(data_dir / "pid_splits.json", "split → problem ids")
    if isinstance(splits, str):
        splits = [splits]
    unknown = [split for split in splits if split not in pid_splits]
    if unknown:
        raise ValueError(f"Splits {unknown} are not in {data_dir / 'pid_splits.json'}; it has {sorted(pid_splits)}.")

    result = {}
    for split in splits:
        pids = [str(pid) for pid in pid_splits[split]]
        missing = [pid for pid in pids if pid not in problems]
        if missing:
            raise ValueError(
                f"pid_splits.json lists {len(missing)} problems of split {split!r} that problems.json lacks, e.g. "
                f"{missing[:_SHOWN]}."
            )
        columns = {name: [] for name in SCIENCEQA_FEATURES}
        missing_images = []
        for pid in pids:
            problem = problems[pid]
            _check_problem(pid, problem)
            image = None
            if problem.get("image"):
                path = data_dir / "images" / (problem.get("split") or split) / pid / problem["image"]
                if not path.is_file():
                    missing_images.append(str(path))
                image = str(path)
            columns["pid"].append(pid)
            columns["question"].append(problem["question"])
            columns["choices"].append(problem["choices"])
            columns["answer"].append(problem["answer"])
            columns["image"].append(image)
            columns["split"].append(problem.get("split") or split)
            for name in _OPTIONAL_TEXT:
                columns[name].append(problem.get(name) or "")
        if missing_images:
            raise FileNotFoundError(
                f"{len(missing_images)} problems of split {split!r} list an image that does not exist, e.g. "
                f"{missing_images[:_SHOWN]}; images live at images/<split>/<pid>/<image> under {data_dir}."
            )
        result[split] = Dataset.from_dict(columns, features=SCIENCEQA_FEATURES)
    return DatasetDict(result)


def _problems_with_images(problems: Dataset | Iterable[dict]) -> list[str]:
    if isinstance(problems, Dataset):
        # Reading the image column would decode every picture; its raw storage says whether there is one.
        images = problems.data.column("image").to_pylist()
        return [pid for pid, image in zip(problems["pid"], images) if image is not None]
    return [str(problem["pid"]) for problem in problems if problem.get("image") is not None]


def load_vision_features(
    source: str | Path,
    problems: Dataset | Iterable[dict],
    expected_shape: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """
    Precomputed vision features `{pid: (tokens, width) array}` for every problem of `problems` that has an image
    (a problem without one gets a masked empty input from the processor instead).

    `source` is either a folder with one `<pid>.npy` per problem, or an `.npy` array `(N, tokens, width)` with
    `name_map.json` (pid → row) beside it, the layout Multimodal-CoT ships (`detr.npy`, `clip.npy`, `vit.npy`);
    the array is memory-mapped, not read whole. `expected_shape` (e.g. `VISION_FEATURE_SHAPES["detr"]`) is checked
    when given; otherwise every array must have the shape of the first.

    Raises `FileNotFoundError` when a problem with an image has no features, `ValueError` for a wrong shape, or a
    name map whose rows the array does not have.
    """
    source = Path(source)
    wanted = _problems_with_images(problems)
    if source.is_dir():
        missing = [pid for pid in wanted if not (source / f"{pid}.npy").is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(wanted)} problems with an image have no <pid>.npy in {source}, e.g. "
                f"{missing[:_SHOWN]}."
            )
        features = {pid: np.load(source / f"{pid}.npy", mmap_mode="r") for pid in wanted}
    elif source.is_file() and source.suffix == ".npy":
        name_map = _read_json(source.parent / "name_map.json", f"pid → row of {source.name}")
        array = np.load(source, mmap_mode="r")
        if array.ndim != 3:
            raise ValueError(f"{source} has shape {array.shape}; expected (problems, tokens, width).")
        rows = {str(pid): int(row) for pid, row in name_map.items()}
        outside = [pid for pid, row in rows.items() if not 0 <= row < len(array)]
        if outside:
            raise ValueError(
                f"name_map.json maps {len(outside)} problems to rows outside {source.name}'s {len(array)} rows, e.g. "
                f"{outside[:_SHOWN]}; the array and the name map do not belong together."
            )
        missing = [pid for pid in wanted if pid not in rows]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(wanted)} problems with an image are not in {source.parent / 'name_map.json'}, "
                f"e.g. {missing[:_SHOWN]}."
            )
        features = {pid: array[rows[pid]] for pid in wanted}
    else:
        raise FileNotFoundError(
            f"{source} is neither a folder of <pid>.npy files nor an .npy array with a name_map.json beside it."
        )

    reference = tuple(expected_shape) if expected_shape is not None else None
    for pid, array in features.items():
        if reference is None:
            reference = array.shape
        if array.shape != reference or len(reference) != 2:
            raise ValueError(
                f"Vision features of problem {pid} have shape {array.shape}; expected {reference} (tokens, width), "
                "the shape of " + ("expected_shape." if expected_shape is not None else "the first problem's features.")
            )
    return features


__all__ = ["SCIENCEQA_FEATURES", "load_scienceqa", "load_vision_features"]
