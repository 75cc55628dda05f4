"""Configuration of the VLP dual encoder (contrastive vision–language pretraining)."""

import math

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_sequence import SequenceEncoderConfig

POOLING_TYPES = ("attention", "perceiver")
LOSS_TYPES = ("clip", "siglip")
TEXT_POOLING_TYPES = ("cls", "mean")


class VLPConfig(PreTrainedConfig):
    r"""
    A dual encoder: a visual side (an image backbone, a pose/feature sequence tower, or both), pooled into one vector
    by attention pooling or a Perceiver resampler, and a text encoder; both are projected into a shared Matryoshka
    embedding trained with a symmetric contrastive loss.

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of any transformers vision backbone (CLIP or SigLIP vision, ...) whose `last_hidden_state` becomes
            the visual tokens. `None` means no image tower.
        sequence_config (`dict` or [`SequenceEncoderConfig`], *optional*):
            Config of the pose keypoint / per-frame feature tower for sign-language clips. `None` means no sequence
            tower. With both towers, their tokens are concatenated and pooled together.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of a BERT-family text encoder. Defaults to DistilBERT.
        freeze_vision_tower (`bool`, defaults to `False`):
            Keep the image backbone's weights fixed (the usual choice with a pretrained CLIP).
        freeze_text_tower (`bool`, defaults to `False`):
            Keep the text encoder's weights fixed.
        text_pooling (`str`, defaults to `"mean"`):
            `"mean"` averages the states of non-padding tokens; `"cls"` takes the first token's state. Mean pooling
            is the default because a randomly initialised BERT's [CLS] state barely depends on the text (cosine
            ≈ 0.9999 between different captions), which lets the visual side collapse onto a constant before the
            text side learns anything.
        pooling_type (`str`, defaults to `"attention"`):
            `"attention"`: one learned probe attends over the visual tokens (a MAP head).
            `"perceiver"`: `num_latents` learned latents cross-attend to the tokens, then are averaged.
        pooling_hidden_size (`int`, defaults to 512):
            Width the visual tokens are projected to before pooling.
        num_pooling_heads (`int`, defaults to 8):
            Attention heads of the pooling head.
        num_latents (`int`, defaults to 64):
            Perceiver latents.
        perceiver_depth (`int`, defaults to 2):
            Perceiver cross-attention blocks.
        projection_dim (`int`, defaults to 512):
            Size of the shared embedding; the largest Matryoshka dimension.
        matryoshka_dims (`list[int]`, defaults to `[512, 256, 128, 64]`):
            Nested prefixes of the embedding that are each trained to work on their own.
        matryoshka_weights (`list[float]`, *optional*):
            Loss weight per Matryoshka dimension; all 1 by default.
        loss_type (`str`, defaults to `"clip"`):
            `"clip"`: symmetric InfoNCE. `"siglip"`: pairwise sigmoid loss with a learnable bias.
        logit_scale_init_value (`float`, *optional*):
            Initial log temperature. Defaults to ln(1/0.07) for CLIP and ln(10) for SigLIP.
        logit_scale_max (`float`, defaults to ln(100)):
            The trainer clamps the log temperature to `[0, logit_scale_max]` after each step.
        logit_bias_init_value (`float`, defaults to -10.0):
            Initial bias of the SigLIP loss (unused by CLIP).
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialiser for linear weights outside the backbones.
    """

    model_type = "vlp_dual_encoder"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(AutoConfig, model_type="clip_vision_model", optional=True),
        "sequence_config": SubConfigSpec(SequenceEncoderConfig, optional=True),
        "text_config": SubConfigSpec(AutoConfig, model_type="distilbert"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    sequence_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    freeze_vision_tower: bool = False
    freeze_text_tower: bool = False
    text_pooling: str = "mean"
    pooling_type: str = "attention"
    pooling_hidden_size: int = 512
    num_pooling_heads: int = 8
    num_latents: int = 64
    perceiver_depth: int = 2
    projection_dim: int = 512
    matryoshka_dims: list[int] | None = None
    matryoshka_weights: list[float] | None = None
    loss_type: str = "clip"
    logit_scale_init_value: float | None = None
    logit_scale_max: float = math.log(100.0)
    logit_bias_init_value: float = -10.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.vision_config is None and self.sequence_config is None:
            raise ValueError("VLPConfig needs a visual side: pass `vision_config`, `sequence_config`, or both.")
        for name, value, allowed in (
            ("pooling_type", self.pooling_type, POOLING_TYPES),
            ("loss_type", self.loss_type, LOSS_TYPES),
            ("text_pooling", self.text_pooling, TEXT_POOLING_TYPES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
        if self.pooling_hidden_size % self.num_pooling_heads:
            raise ValueError(
                f"pooling_hidden_size ({self.pooling_hidden_size}) must be divisible by "
                f"num_pooling_heads ({self.num_pooling_heads})."
            )
        if self.matryoshka_dims is None:
            self.matryoshka_dims = [d for d in (512, 256, 128, 64) if d <= self.projection_dim] or [self.projection_dim]
        dims = [int(d) for d in self.matryoshka_dims]
        if self.matryoshka_weights is None:
            self.matryoshka_weights = [1.0] * len(dims)
        if len(self.matryoshka_weights) != len(dims):
            raise ValueError(
                f"matryoshka_weights has {len(self.matryoshka_weights)} entries but matryoshka_dims has "
                f"{len(dims)}; give one weight per dimension."
            )
        if len(set(dims)) != len(dims):
            raise ValueError(f"matryoshka_dims {dims} repeats a dimension.")
        # Largest first; each weight stays with its dimension.
        pairs = sorted(zip(dims, (float(w) for w in self.matryoshka_weights)), reverse=True)
        self.matryoshka_dims, self.matryoshka_weights = [d for d, _ in pairs], [w for _, w in pairs]
        if self.matryoshka_dims[0] != self.projection_dim or self.matryoshka_dims[-1] < 1:
            raise ValueError(
                f"matryoshka_dims {self.matryoshka_dims} must lie in [1, projection_dim] and include "
                f"projection_dim ({self.projection_dim})."
            )
        if self.logit_scale_init_value is None:
            self.logit_scale_init_value = math.log(1 / 0.07) if self.loss_type == "clip" else math.log(10.0)


__all__ = ["VLPConfig"]
