"""Tests for `train.plots`: both plots write valid, non-trivial PNGs atomically and reject bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from train.plots import plot_embedding_projection, plot_similarity_distributions


def _paired_embeddings(num_images=15, texts_per_image=2, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((num_images, dim)).astype(np.float32)
    text_to_image = np.repeat(np.arange(num_images), texts_per_image)
    texts = images[text_to_image] + 0.5 * rng.standard_normal((len(text_to_image), dim)).astype(np.float32)
    return images, texts, text_to_image


def _assert_valid_png(path, min_bytes=10_000):
    assert path.stat().st_size > min_bytes
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= 400 and height >= 300
        # A plot with content uses many colours; an empty canvas would be nearly uniform.
        assert len(image.convert("RGB").getcolors(maxcolors=1_000_000)) > 50
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file may be left behind"


def test_embedding_projection_writes_png(tmp_path):
    images, texts, text_to_image = _paired_embeddings()
    path = tmp_path / "projection.png"
    returned = plot_embedding_projection(images, torch.from_numpy(texts), path, text_to_image=text_to_image)
    assert returned == str(path)
    _assert_valid_png(path)


def test_embedding_projection_pairs_rows_by_default_and_subsamples(tmp_path):
    images, texts, _ = _paired_embeddings(num_images=60, texts_per_image=1)
    path = tmp_path / "nested" / "projection.png"
    plot_embedding_projection(torch.from_numpy(images), texts, path, max_points=12, seed=1)
    _assert_valid_png(path)


def test_embedding_projection_is_deterministic_for_a_seed(tmp_path):
    images, texts, text_to_image = _paired_embeddings(num_images=8)
    first = plot_embedding_projection(images, texts, tmp_path / "a" / "p.png", text_to_image=text_to_image, seed=3)
    second = plot_embedding_projection(images, texts, tmp_path / "b" / "p.png", text_to_image=text_to_image, seed=3)
    with Image.open(first) as a, Image.open(second) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_similarity_distributions_writes_png(tmp_path):
    images, texts, text_to_image = _paired_embeddings()
    path = tmp_path / "similarities.png"
    returned = plot_similarity_distributions(torch.from_numpy(images), texts, text_to_image, path)
    assert returned == str(path)
    _assert_valid_png(path)


@pytest.mark.parametrize(
    "plot", [plot_embedding_projection, plot_similarity_distributions], ids=["projection", "similarities"]
)
def test_invalid_inputs_raise(tmp_path, plot):
    images, texts, text_to_image = _paired_embeddings(num_images=10)
    path = tmp_path / "plot.png"
    with pytest.raises(ValueError, match="dimensions differ"):
        plot(images[:, :8], texts, text_to_image=text_to_image, path=path)
    with pytest.raises(ValueError, match=r"values must lie in \[0, 9\]"):
        plot(images, texts, text_to_image=text_to_image + 1, path=path)
    with pytest.raises(ValueError, match="NaN"):
        plot(np.full_like(images, np.nan), texts, text_to_image=text_to_image, path=path)
    with pytest.raises(ValueError, match="text i is paired with image i"):
        plot(images, texts, text_to_image=None, path=path)
    assert not path.exists()
