"""Real sign-language data as a table of sentences plus one `.npy` keypoint (and optional feature) array per sample.

This is the common export format of pose estimators (MediaPipe/OpenPose runs saved with `np.save`) next to a
corpus' CSV/TSV annotations, and it yields the same schema as the synthetic signs. Every file and shape is checked
before anything is loaded into a dataset, so a broken export fails at once with a message naming the files.
Missing keypoints may be NaN and pass through; the processor decides how to handle them.
"""

import csv
from collections import Counter
from pathlib import Path

import numpy as np
from datasets import Dataset

from .synthetic_signs import sign_sequence_features

REQUIRED_COLUMNS = ("id", "sentence")
UNKNOWN_SIGNER = -1
_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_SHOWN_PROBLEMS = 5


def _read_table(table_file: Path) -> list[dict[str, str]]:
    if table_file.suffix.lower() not in _DELIMITERS:
        raise ValueError(f"{table_file} must end in .csv or .tsv to tell its delimiter, got {table_file.suffix!r}.")
    if not table_file.is_file():
        raise FileNotFoundError(f"Annotation table {table_file} does not exist.")
    with table_file.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=_DELIMITERS[table_file.suffix.lower()])
        rows = list(reader)
        columns = reader.fieldnames or []
    missing = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing:
        raise ValueError(f"{table_file} lacks the column(s) {missing}; its columns are {columns}.")
    if not rows:
        raise ValueError(f"{table_file} has a header but no rows.")
    duplicates = sorted(sample_id for sample_id, count in Counter(row["id"] for row in rows).items() if count > 1)
    if duplicates:
        raise ValueError(f"{table_file} repeats the id(s) {duplicates[:_SHOWN_PROBLEMS]}; ids name .npy files.")
    return rows


def _array_paths(ids: list[str], directory: Path, kind: str) -> list[Path]:
    if not directory.is_dir():
        raise FileNotFoundError(f"The {kind} directory {directory} does not exist.")
    paths = [directory / f"{sample_id}.npy" for sample_id in ids]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} {kind} files are missing in {directory}, "
            f"e.g. {missing[:_SHOWN_PROBLEMS]}; every table id needs an `<id>.npy` there."
        )
    return paths


def _load_arrays(paths: list[Path], ndim: int, layout: str) -> list[np.ndarray]:
    """Load float32 arrays of `ndim` dimensions whose trailing dimensions agree across all files."""
    arrays = []
    for path in paths:
        array = np.load(path, allow_pickle=False)
        if array.ndim != ndim:
            raise ValueError(f"{path} has shape {array.shape}; expected {ndim} dimensions {layout}.")
        if arrays and array.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(
                f"{path} has shape {array.shape} but {paths[0].name} has {arrays[0].shape}; "
                f"all files must share the dimensions after T in {layout}."
            )
        arrays.append(array.astype(np.float32, copy=False))
    return arrays


def _signer_ids(rows: list[dict[str, str]]) -> list[int]:
    """Integer signer ids as given; other labels (e.g. "Signer05") numbered by first appearance; -1 when absent."""
    if "signer_id" not in rows[0]:
        return [UNKNOWN_SIGNER] * len(rows)
    labels = [row["signer_id"].strip() for row in rows]
    try:
        return [int(label) for label in labels]
    except ValueError:
        numbering: dict[str, int] = {}
        return [numbering.setdefault(label, len(numbering)) for label in labels]


def load_keypoint_table(
    table_file: str | Path, keypoint_dir: str | Path, feature_dir: str | Path | None = None
) -> Dataset:
    """One sample per table row: `<id>.npy` keypoints (T, K, C), optional `<id>.npy` features (T, F), its sentence.

    `sentence_id` numbers the distinct sentence texts in order of first appearance.
    """
    rows = _read_table(Path(table_file))
    ids = [row["id"] for row in rows]
    keypoint_paths = _array_paths(ids, Path(keypoint_dir), "keypoint")
    feature_paths = None if feature_dir is None else _array_paths(ids, Path(feature_dir), "feature")

    keypoints = _load_arrays(keypoint_paths, 3, "(T, K, C)")
    columns = {"sample_id": ids, "keypoints": keypoints}
    feature_dim = None
    if feature_paths is not None:
        features = _load_arrays(feature_paths, 2, "(T, F)")
        for sample_id, sample_keypoints, sample_features in zip(ids, keypoints, features):
            if len(sample_keypoints) != len(sample_features):
                raise ValueError(
                    f"Sample {sample_id!r} has {len(sample_keypoints)} keypoint frames but {len(sample_features)} "
                    "feature frames; keypoints and features must be extracted from the same frames."
                )
        columns["features"] = features
        feature_dim = features[0].shape[1]

    sentences = [row["sentence"].strip() for row in rows]
    sentence_ids: dict[str, int] = {}
    columns |= {
        "sentence": sentences,
        "sentence_id": [sentence_ids.setdefault(sentence, len(sentence_ids)) for sentence in sentences],
        "signer_id": _signer_ids(rows),
    }
    _, num_keypoints, keypoint_dim = keypoints[0].shape
    return Dataset.from_dict(columns, features=sign_sequence_features(num_keypoints, keypoint_dim, feature_dim))
