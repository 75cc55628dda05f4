"""The sign-language sequence tower shared by the VLP and Sign2Text models."""

import torch
from torch import nn

from configuration.configuration_sequence import SequenceEncoderConfig


class SequenceEncoder(nn.Module):
    """Transformer encoder over a clip's frames: pose keypoints and/or per-frame visual features.

    Each stream is projected to `hidden_size` and the projections are summed frame by frame, so a model trained on
    both still accepts one stream (the missing one contributes zero).
    """

    def __init__(self, config: SequenceEncoderConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.keypoint_projection = (
            nn.Linear(config.num_keypoints * config.keypoint_dim, hidden) if config.use_keypoints else None
        )
        self.feature_projection = nn.Linear(config.feature_dim, hidden) if config.use_visual_features else None
        self.position_embedding = nn.Embedding(config.max_frames, hidden)
        self.input_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            hidden,
            config.num_attention_heads,
            config.intermediate_size,
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, config.num_hidden_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(hidden)

    def forward(
        self,
        keypoints: torch.Tensor | None = None,
        frame_features: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            keypoints: `(batch, frames, num_keypoints, keypoint_dim)`.
            frame_features: `(batch, frames, feature_dim)`.
            frame_mask: `(batch, frames)`, 1 for real frames and 0 for padding.

        Returns:
            `(batch, frames, hidden_size)` frame states.
        """
        streams = []
        if keypoints is not None:
            if self.keypoint_projection is None:
                raise ValueError("This sequence tower was configured with use_keypoints=False; do not pass keypoints.")
            streams.append(self.keypoint_projection(keypoints.flatten(2)))
        if frame_features is not None:
            if self.feature_projection is None:
                raise ValueError(
                    "This sequence tower was configured with use_visual_features=False; do not pass frame_features."
                )
            streams.append(self.feature_projection(frame_features))
        if not streams:
            raise ValueError("The sequence tower needs `keypoints`, `frame_features`, or both.")
        hidden_states = torch.stack(streams).sum(0)
        num_frames = hidden_states.shape[1]
        if num_frames > self.config.max_frames:
            raise ValueError(
                f"Got {num_frames} frames but max_frames is {self.config.max_frames}; let the processor truncate."
            )
        positions = torch.arange(num_frames, device=hidden_states.device)
        hidden_states = self.dropout(self.input_norm(hidden_states + self.position_embedding(positions)))
        padding = None if frame_mask is None else ~frame_mask.bool()
        hidden_states = self.layers(hidden_states, src_key_padding_mask=padding)
        return self.final_norm(hidden_states)


__all__ = ["SequenceEncoder"]
