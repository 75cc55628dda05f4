import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and two threads on two busy cores slow every test down.
torch.set_num_threads(1)

from configuration import SequenceEncoderConfig, VLPConfig  # noqa: E402
from train.backbones import load_tokenizer, tiny_text_config, tiny_vision_config  # noqa: E402


def tiny_vlp_config(**overrides) -> VLPConfig:
    """A VLP config small enough for a unit test: both towers, 32 wide, one or two layers."""
    defaults = dict(
        vision_config=tiny_vision_config(image_size=32, patch_size=8, hidden_size=32, num_layers=1),
        sequence_config=SequenceEncoderConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, dropout=0.0,
            use_visual_features=True, feature_dim=8, max_frames=16,
        ),
        text_config=tiny_text_config(vocab_size=128, hidden_size=32, num_layers=1),
        pooling_hidden_size=32,
        num_pooling_heads=2,
        num_latents=8,
        projection_dim=32,
        matryoshka_dims=[32, 16, 8],
    )
    defaults.update(overrides)
    return VLPConfig(**defaults)


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
