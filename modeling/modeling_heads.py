"""Projection heads shared by all models: the Matryoshka embedding head and the MLP head for auxiliary losses."""

import torch
from torch import nn


class MatryoshkaProjection(nn.Module):
    """A linear map into an embedding whose leading `d` dimensions, for each nested `d`, are trained to work alone.

    The head itself is one linear layer; the nesting comes from the loss (`matryoshka_prefixes`), so a deployed
    embedding can simply be truncated to any trained dimension and re-normalised.
    """

    def __init__(self, in_features: int, dims: list[int]):
        super().__init__()
        self.dims = sorted(dims, reverse=True)
        self.linear = nn.Linear(in_features, self.dims[0], bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


def matryoshka_prefixes(embeddings: torch.Tensor, dims: list[int]) -> dict[int, torch.Tensor]:
    """L2-normalised prefixes `embeddings[..., :d]` for every nested dimension `d`."""
    return {d: nn.functional.normalize(embeddings[..., :d], dim=-1) for d in dims}


class ProjectionHead(nn.Module):
    """Linear → ReLU → Linear. Feeds a contrastive loss without reshaping the features another head consumes."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.relu(self.fc1(features)))


__all__ = ["MatryoshkaProjection", "ProjectionHead", "matryoshka_prefixes"]
