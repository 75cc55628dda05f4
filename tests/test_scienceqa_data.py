"""ScienceQA loader on a tiny folder in the release format, precomputed features, the embedded set, the accuracy module."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.scienceqa import load_scienceqa, load_vision_features
from data.synthetic_scienceqa import FAMILIES, make_scienceqa_problems, write_synthetic_scienceqa
from train.evaluation import load_metric


def problem(question: str, choices: list[str], answer: int, image: str | None, split: str, **fields) -> dict:
    """A problem as `problems.json` of the ScienceQA release holds it."""
    return {
        "question": question, "choices": choices, "answer": answer, "hint": fields.get("hint", ""), "image": image,
        "task": "closed choice", "grade": fields.get("grade", "grade3"), "subject": fields.get("subject", "natural science"),
        "topic": "physics", "category": "Magnets", "lecture": "Magnets attract iron.", "solution": "Iron is magnetic.",
        "split": split,
    }  # fmt: skip


def write_folder(root: Path, problems: dict, pid_splits: dict, images: dict[str, str]) -> Path:
    """`problems.json`, `pid_splits.json` and `images/<split>/<pid>/<file>` for the pids in `images`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps(pid_splits))
    for pid, split in images.items():
        folder = root / "images" / split / pid
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 20, 20)).save(folder / "image.png")
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    problems = {
        "11": problem("Which is magnetic?", ["iron nail", "glass jar"], 0, "image.png", "train"),
        "12": problem("Which is older?", ["Ashford", "Riverton"], 1, None, "train", hint="Ashford: 1900. Riverton: 1800."),
        "13": problem("What colour is the square?", ["red", "blue", "green"], 2, "image.png", "val", grade="grade8"),
    }
    return write_folder(tmp_path / "scienceqa", problems, {"train": ["11", "12"], "val": ["13"], "minival": ["13"]}, {"11": "train", "13": "val"})


def test_loader_reads_the_release_format(folder):
    splits = load_scienceqa(folder, ["train", "minival"])
    train = splits["train"]
    assert train["pid"] == ["11", "12"]
    assert train["choices"] == [["iron nail", "glass jar"], ["Ashford", "Riverton"]]
    assert train["answer"] == [0, 1]
    first, second = train[0], train[1]
    assert first["image"].size == (8, 8) and first["image"].mode == "RGB"
    assert second["image"] is None  # no image: the processor gives it a masked empty vision input
    assert second["hint"] == "Ashford: 1900. Riverton: 1800."
    # minival lists a val problem: its image is found under the problem's own split
    assert splits["minival"][0]["image"] is not None and splits["minival"][0]["grade"] == "grade8"


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda p: p["11"].update(answer=2), ValueError, "Problem 11 has answer 2 but 2 choices"),
        (lambda p: p["11"].update(answer=True), ValueError, "Problem 11 has answer True"),
        (lambda p: p["12"].update(choices=[]), ValueError, "Problem 12 has no choices"),
        (lambda p: p["12"].update(image="image.png"), FileNotFoundError, "list an image that does not exist"),
        (lambda p: p.pop("12"), ValueError, "that problems.json lacks, e.g. ['12']"),
    ],
)
def test_loader_names_the_bad_problem(folder, change, error, message):
    problems = json.loads((folder / "problems.json").read_text())
    change(problems)
    (folder / "problems.json").write_text(json.dumps(problems))
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_scienceqa(folder, ["train"])


def test_loader_errors_on_missing_files_and_splits(folder, tmp_path):
    with pytest.raises(ValueError, match=r"Splits \['test'\] are not in .*pid_splits.json; it has \['minival', 'train', 'val'\]"):
        load_scienceqa(folder, ["test"])
    with pytest.raises(FileNotFoundError, match="problems.json does not exist"):
        load_scienceqa(tmp_path / "empty")


def test_features_from_a_folder_and_from_the_released_array(folder, tmp_path):
    train = load_scienceqa(folder, ["train"])["train"]
    per_problem = tmp_path / "per_problem"
    per_problem.mkdir()
    np.save(per_problem / "11.npy", np.ones((4, 6), dtype=np.float32))
    features = load_vision_features(per_problem, train, expected_shape=(4, 6))
    assert list(features) == ["11"]  # problem 12 has no image and needs no features

    released = tmp_path / "released"
    released.mkdir()
    np.save(released / "detr.npy", np.arange(3 * 4 * 6, dtype=np.float32).reshape(3, 4, 6))
    (released / "name_map.json").write_text(json.dumps({"13": 0, "11": 2, "12": 1}))
    features = load_vision_features(released / "detr.npy", train)
    np.testing.assert_array_equal(features["11"], np.arange(48, 72, dtype=np.float32).reshape(4, 6))

    with pytest.raises(ValueError, match=r"problem 11 have shape \(4, 6\); expected \(100, 256\)"):
        load_vision_features(per_problem, train, expected_shape=(100, 256))
    (released / "name_map.json").write_text(json.dumps({"11": 3}))
    with pytest.raises(ValueError, match="rows outside detr.npy's 3 rows"):
        load_vision_features(released / "detr.npy", train)
    (per_problem / "11.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 1 problems with an image have no <pid>.npy"):
        load_vision_features(per_problem, train)


def test_embedded_set_round_trips_through_the_loader(tmp_path):
    folder = write_synthetic_scienceqa(tmp_path / "embedded", num_train=24, num_val=4, num_test=8, seed=3, image_size=24)
    splits = load_scienceqa(folder)
    assert [len(splits[name]) for name in ("train", "val", "test")] == [24, 4, 8]
    again, _, _ = make_scienceqa_problems({"train": 24, "val": 4, "test": 8}, seed=3, image_size=24)
    assert json.loads((folder / "problems.json").read_text()) == again  # one seed, one set of files


def test_embedded_set_balances_answers_and_hides_image_answers_from_the_text():
    problems, _, images = make_scienceqa_problems({"train": 1200}, seed=0, image_size=24)
    by_count = Counter((len(p["choices"]), p["answer"]) for p in problems.values())
    for (num_choices, position), count in by_count.items():
        share = count / sum(c for (n, _), c in by_count.items() if n == num_choices)
        assert abs(share - 1 / num_choices) < 0.02, (num_choices, position, share)
    image_problems = [pid for pid, p in problems.items() if p["image"]]
    assert set(image_problems) == set(images)
    # The same question text with the same options has different answers: the picture decides.
    answers_by_text = {}
    for pid in image_problems:
        p = problems[pid]
        answers_by_text.setdefault((p["question"], tuple(sorted(p["choices"]))), set()).add(p["choices"][p["answer"]])
    assert sum(len(answers) > 1 for answers in answers_by_text.values()) > 0.2 * len(answers_by_text)
    kinds = Counter((bool(p["image"]), bool(p["hint"])) for p in problems.values())
    assert kinds[(True, False)] and kinds[(False, True)] and kinds[(False, False)] and not kinds[(True, True)]
    assert {p["subject"] for p in problems.values()} == {family[0] for family in FAMILIES.values()}


def test_accuracy_module_counts_unparsed_as_wrong_and_groups_by_category():
    accuracy = load_metric("scienceqa_accuracy")
    result = accuracy.compute(
        predictions=[1, -1, 0, 2],
        references=[1, 0, 0, 1],
        subjects=["natural science", "language science", "social science", "natural science"],
        has_context=[False, True, False, False],
        has_image=[True, False, False, True],
        grades=["grade2", "grade8", "grade5", "grade12"],
    )
    assert result["accuracy"] == 50.0 and result["unparsed"] == 1
    assert (result["IMG"], result["TXT"], result["NO"]) == (50.0, 0.0, 100.0)
    assert (result["NAT"], result["SOC"], result["LAN"]) == (50.0, 100.0, 0.0)
    assert (result["G1-6"], result["G7-12"], result["num_G7-12"]) == (100.0, 0.0, 2)
    with pytest.raises(ValueError, match="predictions are option indices, or -1"):
        accuracy.compute(predictions=[-2], references=[0], subjects=["x"], has_context=[False], has_image=[False], grades=["grade1"])
