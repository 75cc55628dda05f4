"""Configuration of the Sign2Text encoder–decoder (pose / per-frame features in, sentence out)."""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_sequence import SequenceEncoderConfig

# The sequence tower at the size the Sign2Text design notes settled on: 512 wide, 4 layers, dropout 0.2.
SIGN2TEXT_SEQUENCE_DEFAULTS = {
    "hidden_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "intermediate_size": 2048,
    "dropout": 0.2,
}


class Sign2TextConfig(PreTrainedConfig):
    r"""
    A sign-language translation model: the pose/feature sequence tower shared with the VLP model encodes a clip, a
    transformer decoder cross-attends to its frame states and writes the sentence. Two auxiliary contrastive losses
    shape the encoder through their own projection heads: CLIP between the pooled clip and a text encoder's
    embedding of the target sentence, and SupCon between clips of the same sentence.

    Args:
        sequence_config (`dict` or [`SequenceEncoderConfig`], *optional*):
            The sequence tower. Defaults to 512 wide, 4 layers, 8 heads, dropout 0.2.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the BERT-family text encoder that embeds target sentences for the CLIP loss. Defaults to
            DistilBERT. It is never used to generate, see `get_text_config`.
        decoder_layers (`int`, defaults to 4):
            Transformer decoder layers.
        decoder_attention_heads (`int`, defaults to 8):
            Attention heads per decoder layer (self- and cross-attention). The decoder is as wide as the sequence tower
            (`sequence_config.hidden_size`), so it attends to the raw frame states without a projection; the width must
            be divisible by this.
        decoder_ffn_dim (`int`, defaults to 2048):
            Width of each decoder layer's feed-forward block.
        decoder_dropout (`float`, defaults to 0.1):
            Dropout on the decoder's embeddings, attention weights and residual branches.
        vocab_size (`int`, defaults to 30522):
            Decoder vocabulary: the DistilBERT uncased WordPiece vocabulary by default.
        max_target_length (`int`, defaults to 64):
            Longest target the decoder handles, counting the final [SEP]; sizes the learned position table.
        pad_token_id (`int`, defaults to 0):
            [PAD]; fills decoder inputs after a sentence ends.
        bos_token_id (`int`, defaults to 101):
            [CLS].
        decoder_start_token_id (`int`, defaults to 101):
            [CLS]; the first decoder input, also used to shift `labels` right into `decoder_input_ids`.
        eos_token_id (`int`, defaults to 102):
            [SEP]; ends every target and stops generation.
        tie_word_embeddings (`bool`, defaults to `True`):
            Share the decoder's token embedding with its language-model head.
        projection_dim (`int`, defaults to 256):
            Size of the contrastive embeddings made by the visual and text projection heads (Linear→ReLU→Linear).
            The decoder never sees these heads' outputs.
        freeze_text_encoder (`bool`, defaults to `True`):
            Keep the text encoder's weights fixed. With a pretrained text encoder its embeddings are stable semantic
            targets, so the CLIP loss pulls clips apart instead of both sides collapsing together.
        supcon_weight (`float`, defaults to 1.0):
            Weight of the supervised contrastive loss between clips sharing a `sentence_id`.
        clip_weight (`float`, defaults to 1.0):
            Weight of the symmetric CLIP loss between clips and their target sentences.
        generation_weight (`float`, defaults to 2.0):
            Weight of the decoder's token cross-entropy.
        contrastive_temperature (`float`, defaults to 0.05):
            Fixed (not learned) temperature of both contrastive losses; the design notes lowered it from 0.07 to
            sharpen an embedding space that had collapsed into a narrow cone. Not called `temperature`: generation
            configs copy that name from the model config and would sample at 0.05.
        ctc_weight (`float`, defaults to 0.0):
            Weight of the auxiliary CTC loss of a linear gloss head over the frame states (joint CTC/attention
            training). Needs `gloss_vocabulary`. 0 turns it off.
        gloss_vocabulary (`list[str]`, *optional*):
            Words the CTC head names (index i + 1; 0 is the CTC blank), built from the training sentences. Without it
            the model has no CTC head.
        label_smoothing (`float`, defaults to 0.0):
            Label smoothing of the generation cross-entropy: the target token gets 1 - ε and the rest ε spread
            evenly, which keeps the decoder from betting everything on the language prior.
        memory_size (`int`, defaults to 0):
            Past clip embeddings (with their sentence ids) kept as extra SupCon candidates, MoCo-queue style, for
            more negatives than a small batch holds. 0 turns the memory off.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialiser for the decoder, heads and sequence tower.
        is_encoder_decoder (`bool`, defaults to `True`):
            Tells `generate()` to run the encoder once and decode from `decoder_start_token_id`.
    """

    model_type = "sign2text"
    sub_configs_defaults = {
        "sequence_config": SubConfigSpec(SequenceEncoderConfig, init_kwargs=SIGN2TEXT_SEQUENCE_DEFAULTS),
        "text_config": SubConfigSpec(AutoConfig, model_type="distilbert"),
    }
    # Generic code (cache construction in `generate`) reads these names; here they describe the decoder.
    attribute_map = {"num_hidden_layers": "decoder_layers", "num_attention_heads": "decoder_attention_heads"}

    sequence_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    decoder_layers: int = 4
    decoder_attention_heads: int = 8
    decoder_ffn_dim: int = 2048
    decoder_dropout: float = 0.1
    vocab_size: int = 30522
    max_target_length: int = 64
    pad_token_id: int = 0
    bos_token_id: int = 101
    decoder_start_token_id: int = 101
    eos_token_id: int = 102
    tie_word_embeddings: bool = True
    projection_dim: int = 256
    freeze_text_encoder: bool = True
    supcon_weight: float = 1.0
    clip_weight: float = 1.0
    generation_weight: float = 2.0
    contrastive_temperature: float = 0.05
    ctc_weight: float = 0.0
    gloss_vocabulary: list[str] | None = None
    label_smoothing: float = 0.0
    memory_size: int = 0
    initializer_range: float = 0.02
    is_encoder_decoder: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        hidden_size = self.sequence_config.hidden_size
        if hidden_size % self.decoder_attention_heads:
            raise ValueError(
                f"The decoder is as wide as the sequence tower ({hidden_size}), which must be divisible by "
                f"decoder_attention_heads ({self.decoder_attention_heads})."
            )
        for name in ("decoder_layers", "decoder_ffn_dim", "vocab_size", "max_target_length", "projection_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        for name in ("pad_token_id", "bos_token_id", "decoder_start_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} ({getattr(self, name)}) must lie in [0, vocab_size={self.vocab_size}).")
        if not 0.0 <= self.decoder_dropout < 1.0:
            raise ValueError(f"decoder_dropout must lie in [0, 1), got {self.decoder_dropout}.")
        weights = {name: getattr(self, name) for name in ("generation_weight", "clip_weight", "supcon_weight", "ctc_weight")}
        if any(weight < 0 for weight in weights.values()) or not any(weights.values()):
            raise ValueError(f"Loss weights must be non-negative and not all zero, got {weights}.")
        if self.ctc_weight and not self.gloss_vocabulary:
            raise ValueError("ctc_weight > 0 needs a gloss_vocabulary for the CTC head (the training sentences' words).")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}.")
        if self.memory_size < 0:
            raise ValueError(f"memory_size must be 0 (off) or positive, got {self.memory_size}.")
        if self.contrastive_temperature <= 0:
            raise ValueError(f"contrastive_temperature must be positive, got {self.contrastive_temperature}.")

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        """The config itself: the decoder's fields live here, while `text_config` is the contrastive text encoder.

        transformers' default would return `text_config`, so `generate` would size its caches and read `vocab_size`
        from the wrong model.
        """
        return self


__all__ = ["Sign2TextConfig"]
