import json
import re
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image
from sklearn.neighbors import KNeighborsClassifier

from data import (
    IMAGE_CAPTION_FEATURES,
    SENTENCE_POOL,
    VOCABULARY,
    load_coco_karpathy,
    load_keypoint_table,
    make_shapes_dataset,
    make_shapes_splits,
    make_signs_dataset,
    make_signs_splits,
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


@pytest.fixture(scope="module")
def signs():
    splits = make_signs_splits(800, 200, seed=0)
    return {"features": splits["train"].features} | {name: columns(split) for name, split in splits.items()}


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


def test_signs_schema_and_dtypes(signs):
    assert signs["features"] == sign_sequence_features(21, 2, 32)
    train = signs["train"]
    for keypoints, features in zip(train["keypoints"], train["features"]):
        assert keypoints.dtype == features.dtype == np.float32
        assert keypoints.shape[1:] == (21, 2) and features.shape == (len(keypoints), 32)
        assert 15 <= len(keypoints) <= 120 and np.isfinite(keypoints).all()
    assert [SENTENCE_POOL[sentence_id] for sentence_id in train["sentence_id"]] == train["sentence"].tolist()
    plain = make_signs_dataset(3, num_keypoints=5, keypoint_dim=3, feature_dim=None)
    assert "features" not in plain.column_names
    assert columns(plain)["keypoints"][0].shape[1:] == (5, 3)


def test_sign_language_size():
    assert 30 <= len(VOCABULARY) <= 40
    assert 150 <= len(SENTENCE_POOL) <= 300 and len(set(SENTENCE_POOL)) == len(SENTENCE_POOL)
    assert all(3 <= len(sentence.split()) <= 7 for sentence in SENTENCE_POOL)


def test_signs_are_deterministic_per_seed(signs):
    again = columns(make_signs_dataset(30, seed=0))
    other = columns(make_signs_dataset(30, seed=1))
    train = signs["train"]
    for column in ("keypoints", "features"):
        assert all(np.array_equal(a, b) for a, b in zip(again[column], train[column]))
    assert again["sentence"].tolist() == train["sentence"][:30].tolist()
    assert again["signer_id"].tolist() == train["signer_id"][:30].tolist()
    assert not any(np.array_equal(a, b) for a, b in zip(again["keypoints"], other["keypoints"]) if a.shape == b.shape)
    assert again["sentence"].tolist() != other["sentence"].tolist()


def test_sentences_recur_with_different_signers(signs):
    signers_per_sentence = defaultdict(set)
    for sentence_id, signer_id in zip(signs["train"]["sentence_id"], signs["train"]["signer_id"]):
        signers_per_sentence[int(sentence_id)].add(int(signer_id))
    assert sum(len(signers) >= 2 for signers in signers_per_sentence.values()) >= 0.5 * len(signers_per_sentence)
    restricted = columns(make_signs_dataset(40, num_sentences=10))
    assert restricted["sentence_id"].max() < 10
    assert len(set(restricted["sentence"])) == len(set(restricted["sentence_id"]))


def test_signer_tempo_changes_sequence_length(signs):
    train = signs["train"]
    lengths = np.array([len(keypoints) for keypoints in train["keypoints"]])
    sentence_ids, signer_ids = train["sentence_id"], train["signer_id"]
    typical = {sentence_id: np.median(lengths[sentence_ids == sentence_id]) for sentence_id in set(sentence_ids)}
    relative = lengths / np.array([typical[sentence_id] for sentence_id in sentence_ids])
    per_signer = [relative[signer_ids == signer_id].mean() for signer_id in set(signer_ids)]
    assert max(per_signer) / min(per_signer) > 1.25


def test_signs_splits_hold_out_signers(signs):
    train, validation = signs["train"], signs["validation"]
    assert set(train["signer_id"]) == set(range(8)) and set(validation["signer_id"]) == {8, 9}
    assert not set(train["sample_id"]) & set(validation["sample_id"])


def test_first_word_is_recognisable_for_unseen_signers(signs):
    def opening_motion(dataset) -> np.ndarray:
        """The first frames relative to the first wrist position, in units of the first hand's size."""
        rows = []
        for keypoints in dataset["keypoints"]:
            start = keypoints[:6] - keypoints[0, :1]
            rows.append((start / np.linalg.norm(start[0], axis=-1).mean()).ravel())
        return np.stack(rows)

    def first_words(dataset) -> np.ndarray:
        return np.array([sentence.split()[0] for sentence in dataset["sentence"]])

    train, validation = signs["train"], signs["validation"]
    classifier = KNeighborsClassifier(n_neighbors=1).fit(opening_motion(train), first_words(train))
    accuracy = (classifier.predict(opening_motion(validation)) == first_words(validation)).mean()
    majority = max(np.mean(first_words(validation) == word) for word in set(first_words(validation)))
    assert accuracy > max(0.8, 2 * majority)


def test_signs_reject_bad_arguments():
    with pytest.raises(ValueError, match="keypoint_dim"):
        make_signs_dataset(2, keypoint_dim=4)
    with pytest.raises(ValueError, match="num_sentences"):
        make_signs_dataset(2, num_sentences=0)
    with pytest.raises(ValueError, match="num_eval_signers"):
        make_signs_splits(2, 2, num_eval_signers=0)


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
