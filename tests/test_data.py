import json
import re

import numpy as np
import pytest
from PIL import Image

from data import (
    IMAGE_CAPTION_FEATURES,
    load_coco_karpathy,
    load_keypoint_table,
    make_shapes_dataset,
    make_shapes_splits,
    sign_sequence_features,
)
from data.synthetic_shapes import COLOURS, ShapeSpec, _distinct_captions


def pixels(dataset) -> list[np.ndarray]:
    return [np.asarray(image) for image in dataset["image"]]


def named_colours(caption: str) -> set[str]:
    return {colour for colour in COLOURS if re.search(rf"\b{colour}\b", caption)}


@pytest.fixture(scope="module")
def shapes():
    return make_shapes_dataset(200, seed=0)


def columns(dataset) -> dict[str, np.ndarray]:
    """All rows at once as numpy columns (variable-length arrays as object arrays); fast to compare and mask."""
    return dataset.with_format("numpy")[:]


def test_shapes_schema(shapes):
    assert shapes.features == IMAGE_CAPTION_FEATURES
    assert shapes["image_id"] == list(range(200))
    image = shapes[0]["image"]
    assert image.mode == "RGB" and image.size == (64, 64)
    for captions in shapes["captions"]:
        assert len(captions) == 5 and all(isinstance(text, str) for text in captions)


def test_shapes_are_deterministic_per_seed(shapes):
    again = make_shapes_dataset(20, seed=0)
    other = make_shapes_dataset(20, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(pixels(again), pixels(shapes.select(range(20)))))
    assert again["captions"] == shapes["captions"][:20]
    assert not any(np.array_equal(a, b) for a, b in zip(pixels(again), pixels(other)))
    assert not set(map(tuple, again["captions"])) & set(map(tuple, other["captions"]))


def test_shape_captions_are_distinct_paraphrases_grounded_in_pixels(shapes):
    for image, captions in zip(shapes["image"], shapes["captions"]):
        assert len(set(captions)) == len(captions)
        colours = named_colours(captions[0])
        assert colours and all(named_colours(caption) == colours for caption in captions)
        flat = np.asarray(image).reshape(-1, 3)
        for colour in colours:
            assert (flat == COLOURS[colour]).all(axis=1).sum() >= 5, f"{colour} named but not drawn: {captions[0]}"
    first_captions = [captions[0] for captions in shapes["captions"]]
    assert len(set(first_captions)) >= 0.95 * len(first_captions)


def test_shapes_caption_count_is_bounded_by_phrasings():
    shape = ShapeSpec(colour="red", kind="triangle", size="large", cell=(1, 1))
    with pytest.raises(ValueError, match="captions_per_image"):
        _distinct_captions([shape], "plain", 300, np.random.default_rng(0))
    with pytest.raises(ValueError, match="captions_per_image"):
        make_shapes_dataset(1, captions_per_image=0)


def test_shapes_splits_use_disjoint_streams():
    splits = make_shapes_splits(6, 4, seed=3, image_size=32, captions_per_image=2)
    train = make_shapes_dataset(6, seed=3, image_size=32, captions_per_image=2)
    assert splits["train"]["captions"] == train["captions"]
    assert splits["validation"]["image_id"] == [6, 7, 8, 9]
    assert splits["validation"][0]["image"].size == (32, 32)
    assert not set(map(tuple, splits["validation"]["captions"])) & set(map(tuple, train["captions"]))


@pytest.fixture
def karpathy(tmp_path):
    image_dir = tmp_path / "coco" / "val2014"
    image_dir.mkdir(parents=True)
    entries = []
    for imgid, (split, mode) in enumerate([("test", "L"), ("train", "RGB"), ("restval", "RGB")]):
        filename = f"COCO_val2014_{imgid:012d}.png"
        Image.new(mode, (8 + imgid, 6), color=100).save(image_dir / filename)
        sentences = [{"raw": f"Picture {imgid}, caption {index}. "} for index in range(2)]
        entries.append(
            {"filepath": "val2014", "filename": filename, "split": split, "imgid": imgid, "sentences": sentences}
        )
    annotation_file = tmp_path / "dataset_coco.json"
    annotation_file.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return annotation_file, tmp_path / "coco"


def test_coco_karpathy_loads_a_split(karpathy):
    test = load_coco_karpathy(*karpathy)
    assert test.features == IMAGE_CAPTION_FEATURES
    assert test["image_id"] == [0] and test["captions"] == [["Picture 0, caption 0.", "Picture 0, caption 1."]]
    image = test[0]["image"]
    assert image.mode == "RGB" and image.size == (8, 6)
    assert load_coco_karpathy(*karpathy, split="train")["image_id"] == [1, 2]


def test_coco_karpathy_errors(karpathy, tmp_path):
    annotation_file, image_root = karpathy
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_coco_karpathy(tmp_path / "missing.json", image_root)
    with pytest.raises(ValueError, match="Unknown Karpathy split 'dev'"):
        load_coco_karpathy(annotation_file, image_root, split="dev")
    with pytest.raises(ValueError, match="no images in split 'val'"):
        load_coco_karpathy(annotation_file, image_root, split="val")
    (image_root / "val2014" / "COCO_val2014_000000000002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 2 images .*COCO_val2014_000000000002\.png"):
        load_coco_karpathy(annotation_file, image_root, split="train")
    annotation_file.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="'images'"):
        load_coco_karpathy(annotation_file, image_root)


def write_keypoint_table(tmp_path, rows: list[str], lengths=(4, 7, 5), suffix=".tsv"):
    keypoint_dir, feature_dir = tmp_path / "keypoints", tmp_path / "features"
    keypoint_dir.mkdir(exist_ok=True)
    feature_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for sample_id, num_frames in zip(("a", "b", "c"), lengths):
        np.save(keypoint_dir / f"{sample_id}.npy", rng.normal(size=(num_frames, 5, 3)))
        np.save(feature_dir / f"{sample_id}.npy", rng.normal(size=(num_frames, 4)).astype(np.float32))
    table_file = tmp_path / f"table{suffix}"
    table_file.write_text("\n".join(rows) + "\n")
    return table_file, keypoint_dir, feature_dir


TSV_ROWS = ["id\tsentence\tsigner_id", "a\thello there\t3", "b\tgood morning\t5", "c\thello there\t3"]


def test_keypoint_table_loads_arrays_and_ids(tmp_path):
    table_file, keypoint_dir, feature_dir = write_keypoint_table(tmp_path, TSV_ROWS)
    with_nan = np.load(keypoint_dir / "b.npy")
    with_nan[2, 1] = np.nan
    np.save(keypoint_dir / "b.npy", with_nan)

    dataset = load_keypoint_table(table_file, keypoint_dir, feature_dir)
    assert dataset.features == sign_sequence_features(5, 3, 4)
    assert dataset["sample_id"] == ["a", "b", "c"]
    assert dataset["sentence"] == ["hello there", "good morning", "hello there"]
    assert dataset["sentence_id"] == [0, 1, 0] and dataset["signer_id"] == [3, 5, 3]
    loaded = columns(dataset)
    assert [len(keypoints) for keypoints in loaded["keypoints"]] == [4, 7, 5]
    assert loaded["keypoints"][1].dtype == np.float32
    np.testing.assert_array_equal(loaded["keypoints"][1], with_nan.astype(np.float32))
    np.testing.assert_array_equal(loaded["features"][1], np.load(feature_dir / "b.npy"))


def test_keypoint_table_csv_without_features_or_numeric_signers(tmp_path):
    rows = ["id,sentence,signer_id", "a,one,Signer07", "b,two,Signer02", "c,three,Signer07"]
    table_file, keypoint_dir, _ = write_keypoint_table(tmp_path, rows, suffix=".csv")
    dataset = load_keypoint_table(table_file, keypoint_dir)
    assert "features" not in dataset.column_names
    assert dataset["signer_id"] == [0, 1, 0]
    (tmp_path / "table.csv").write_text("id,sentence\na,one\nb,two\nc,three\n")
    assert load_keypoint_table(table_file, keypoint_dir)["signer_id"] == [-1, -1, -1]


def test_keypoint_table_errors(tmp_path):
    table_file, keypoint_dir, feature_dir = write_keypoint_table(tmp_path, TSV_ROWS)
    with pytest.raises(FileNotFoundError, match="nowhere.tsv"):
        load_keypoint_table(tmp_path / "nowhere.tsv", keypoint_dir)
    with pytest.raises(ValueError, match=r"\.csv or \.tsv"):
        load_keypoint_table(tmp_path / "table.json", keypoint_dir)
    with pytest.raises(FileNotFoundError, match="feature directory"):
        load_keypoint_table(table_file, keypoint_dir, tmp_path / "absent")

    np.save(feature_dir / "c.npy", np.zeros((9, 4)))
    with pytest.raises(ValueError, match="'c' has 5 keypoint frames but 9 feature frames"):
        load_keypoint_table(table_file, keypoint_dir, feature_dir)

    np.save(keypoint_dir / "b.npy", np.zeros((7, 6, 3)))
    with pytest.raises(ValueError, match=r"b\.npy has shape \(7, 6, 3\)"):
        load_keypoint_table(table_file, keypoint_dir)
    np.save(keypoint_dir / "b.npy", np.zeros((7, 15)))
    with pytest.raises(ValueError, match=r"b\.npy .* expected 3 dimensions"):
        load_keypoint_table(table_file, keypoint_dir)

    (keypoint_dir / "b.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 3 keypoint files .* \['b\.npy'\]"):
        load_keypoint_table(table_file, keypoint_dir)

    table_file.write_text("id\ttext\na\thello\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['sentence'\]"):
        load_keypoint_table(table_file, keypoint_dir)
    table_file.write_text("id\tsentence\na\thello\na\tagain\n")
    with pytest.raises(ValueError, match=r"repeats the id\(s\) \['a'\]"):
        load_keypoint_table(table_file, keypoint_dir)
