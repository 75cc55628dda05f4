"""Configuration of the pose / per-frame-feature sequence tower shared by the VLP and Sign2Text models."""

from transformers import PreTrainedConfig


class SequenceEncoderConfig(PreTrainedConfig):
    r"""
    A transformer over a sign-language clip: per frame, pose keypoints and/or a precomputed visual feature vector
    (e.g. SigLIP features) are projected to `hidden_size`, summed, given a learned position embedding and encoded.

    Args:
        use_keypoints (`bool`, defaults to `True`):
            Feed pose keypoints of shape `(frames, num_keypoints, keypoint_dim)`.
        use_visual_features (`bool`, defaults to `False`):
            Feed per-frame visual feature vectors of shape `(frames, feature_dim)`. With both inputs on, the two
            projections are summed frame by frame (early fusion), so either stream can carry the signal.
        num_keypoints (`int`, defaults to 21):
            Keypoints per frame.
        keypoint_dim (`int`, defaults to 2):
            Coordinates per keypoint (2 for x/y, 3 with depth or confidence).
        feature_dim (`int`, defaults to 32):
            Size of a per-frame visual feature vector.
        max_frames (`int`, defaults to 128):
            Longest clip the position embedding covers; the processor truncates (or refuses) longer clips.
        hidden_size (`int`, defaults to 256):
            Width of the encoder.
        num_hidden_layers (`int`, defaults to 4):
            Transformer encoder layers.
        num_attention_heads (`int`, defaults to 4):
            Attention heads per layer.
        intermediate_size (`int`, defaults to 1024):
            Width of each layer's feed-forward block.
        dropout (`float`, defaults to 0.2):
            Dropout in the input projection and in every layer. The seed notes found 0.4 too aggressive for
            contrastive training.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialiser for linear and embedding weights.
    """

    model_type = "pose_sequence_encoder"

    use_keypoints: bool = True
    use_visual_features: bool = False
    num_keypoints: int = 21
    keypoint_dim: int = 2
    feature_dim: int = 32
    max_frames: int = 128
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    dropout: float = 0.2
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not (self.use_keypoints or self.use_visual_features):
            raise ValueError("SequenceEncoderConfig needs `use_keypoints=True`, `use_visual_features=True`, or both.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})."
            )
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be positive, got {self.max_frames}.")


__all__ = ["SequenceEncoderConfig"]
