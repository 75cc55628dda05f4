"""COCO captions in the Karpathy split (`dataset_coco.json`), the standard image–text retrieval benchmark split.

Returns the same schema as the synthetic shapes, so the same processors and training scripts run on both.
Images stay file paths decoded lazily by `datasets.Image`, and all of them are checked up front, because a
missing file would otherwise surface as a crash deep inside a training or evaluation loop.
"""

import json
from pathlib import Path

from datasets import Dataset

from .synthetic_shapes import IMAGE_CAPTION_FEATURES

KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "validation": ("val",), "test": ("test",)}
_SHOWN_MISSING = 5


def load_coco_karpathy(
    annotation_file: str | Path, image_root: str | Path, split: str = "test", max_captions: int | None = None
) -> Dataset:
    """Images of one Karpathy split with their raw captions; `train` includes `restval`.

    Some images carry more than five captions; the 5k retrieval protocol scores the first five of each test image,
    which `max_captions=5` keeps (`None` keeps all, e.g. for training). Image paths are
    `image_root / filepath / filename` (`filepath` is absent in the Flickr variants of the file).
    """
    annotation_file, image_root = Path(annotation_file), Path(image_root)
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"Unknown Karpathy split {split!r}; expected one of {sorted(KARPATHY_SPLITS)}.")
    if not annotation_file.is_file():
        raise FileNotFoundError(
            f"Karpathy annotation file {annotation_file} does not exist; pass the path of dataset_coco.json."
        )
    with annotation_file.open(encoding="utf-8") as handle:
        annotations = json.load(handle)
    if not isinstance(annotations, dict) or "images" not in annotations:
        raise ValueError(f"{annotation_file} has no top-level 'images' list; is it the Karpathy dataset_coco.json?")

    entries = [entry for entry in annotations["images"] if entry["split"] in KARPATHY_SPLITS[split]]
    if not entries:
        found = sorted({entry["split"] for entry in annotations["images"]})
        raise ValueError(f"{annotation_file} has no images in split {split!r}; its splits are {found}.")
    paths = [image_root / entry.get("filepath", "") / entry["filename"] for entry in entries]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} images of split {split!r} are missing under {image_root}, "
            f"e.g. {missing[:_SHOWN_MISSING]}; check image_root (it should contain the COCO image folders)."
        )
    return Dataset.from_dict(
        {
            "image_id": [entry["imgid"] for entry in entries],
            "image": [str(path) for path in paths],
            "captions": [[sentence["raw"].strip() for sentence in entry["sentences"][:max_captions]] for entry in entries],
        },
        features=IMAGE_CAPTION_FEATURES,
    )
