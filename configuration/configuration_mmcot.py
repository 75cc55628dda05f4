"""Configuration of the Multimodal-CoT T5 (T5 whose encoder output is fused with vision features by a gated attention)."""

from transformers import AutoConfig, PreTrainedConfig, T5Config
from transformers.configuration_utils import SubConfigSpec

# A T5 small enough to train from scratch on two CPU cores in a few minutes, with the offline Unigram vocabulary
# (pad 0, eos 1, unk 2). Real runs take the config of the checkpoint they start from (e.g. google/flan-t5-base).
TINY_T5_DEFAULTS = {
    "vocab_size": 1024,
    "d_model": 128,
    "d_kv": 32,
    "d_ff": 512,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "dropout_rate": 0.0,  # the embedded run is short and its data varied: dropout slowed learning and cost 14 % of a step
    "feed_forward_proj": "gated-gelu",
    "decoder_start_token_id": 0,
    "pad_token_id": 0,
    "eos_token_id": 1,
}

# Feature shapes (tokens, width) of the precomputed ScienceQA vision features the original Multimodal-CoT ships.
VISION_FEATURE_SHAPES = {"detr": (100, 256), "clip": (49, 2048), "vit": (145, 1024)}


class MMCoTConfig(PreTrainedConfig):
    r"""
    Multimodal chain-of-thought T5: a stock transformers T5 whose encoder output `h` is fused with vision tokens `v`
    before the decoder reads it. `v` is projected to the T5 width, attended to by `h` with one attention head (key
    padding masks hide problems without an image), and mixed in through a sigmoid gate:
    `λ = sigmoid(W_l h + W_v h_attn)`, `fused = (1 − λ)·h + λ·h_attn`. One model writes the rationale and the answer;
    the prompt says which (see `MMCoTProcessor`).

    Args:
        text_config (`dict` or `T5Config`, *optional*):
            The T5. Defaults to a 2+2-layer, 128-wide T5 with a 1,024-piece vocabulary, the size the offline default
            run trains from scratch; `MMCoTForConditionalGeneration.from_pretrained_backbones` takes the config of
            a pretrained checkpoint instead.
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of a transformers vision backbone (CLIP or SigLIP vision, ViT, ...) whose `last_hidden_state`
            (patch states) becomes `v`; the model then takes `pixel_values`. `None` (the default) means no tower:
            the model takes precomputed `vision_features`, as the original Multimodal-CoT does.
        vision_feature_dim (`int`, defaults to 256):
            Width `d_v` of the precomputed features when there is no vision tower; 256 is DETR's, the original's
            default (CLIP grid features are 2048 wide, ViT 1024). Ignored with a vision tower, whose hidden size is
            used instead.
        freeze_vision_tower (`bool`, defaults to `False`):
            Keep the vision tower's weights fixed and run it in eval mode, the usual choice with a pretrained
            backbone. The offline default trains a small tower from scratch, so it stays trainable.
        max_rationale_tokens (`int`, defaults to 128):
            New tokens `solve` lets stage 1 write. ScienceQA lectures plus solutions run to a few hundred pieces of
            the T5 vocabulary; the original generates up to 512. The embedded data's rationales stay under 100.
        max_answer_tokens (`int`, defaults to 16):
            New tokens `solve` lets stage 2 write; "The answer is (B)." takes under ten.
        pad_token_id (`int`, defaults to 0), eos_token_id (`int`, defaults to 1), decoder_start_token_id (`int`,
            defaults to 0):
            T5's conventions, repeated at the top level because `generate` reads them from here; they must equal the
            T5's own.
        is_encoder_decoder (`bool`, defaults to `True`):
            Tells `generate()` to run the (fused) encoder once and decode from `decoder_start_token_id`.
    """

    model_type = "mmcot_t5"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(T5Config, init_kwargs=TINY_T5_DEFAULTS),
        "vision_config": SubConfigSpec(AutoConfig, model_type="clip_vision_model", optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    vision_feature_dim: int = 256
    freeze_vision_tower: bool = False
    max_rationale_tokens: int = 128
    max_answer_tokens: int = 16
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    is_encoder_decoder: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not isinstance(self.text_config, T5Config):
            raise ValueError(
                f"text_config must be a T5 config (model_type 't5'), got {type(self.text_config).__name__}; the model "
                "wraps T5ForConditionalGeneration."
            )
        if self.text_config.num_decoder_layers > self.text_config.num_layers:
            raise ValueError(
                f"The T5 has {self.text_config.num_decoder_layers} decoder layers but {self.text_config.num_layers} "
                "encoder layers; transformers 5 sizes T5's generation cache by the encoder depth, so generate() fails. "
                "Use at least as many encoder layers (num_layers) as decoder layers."
            )
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            if getattr(self.text_config, name, None) != getattr(self, name):
                raise ValueError(
                    f"{name} is {getattr(self, name)} but the T5's is {getattr(self.text_config, name, None)}; "
                    "generation would start or stop on the wrong token. Make them equal."
                )
        for name in ("vision_feature_dim", "max_rationale_tokens", "max_answer_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")

    @property
    def vision_hidden_size(self) -> int:
        """Width `d_v` of the vision tokens the fusion receives."""
        return self.vision_config.hidden_size if self.vision_config is not None else self.vision_feature_dim


__all__ = ["MMCoTConfig", "TINY_T5_DEFAULTS", "VISION_FEATURE_SHAPES"]
