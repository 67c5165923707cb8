"""A small text classifier over a bag of hashed words: ``torch.nn.EmbeddingBag``.

The table's text columns arrive as word-count buckets (``--text-columns hashing``: the words of each row hashed into
buckets on its own client, log(1 + count) per bucket) or, centrally, as TF-IDF weights. Each input column is one
token id (a bucket, or a TF-IDF word) and its value the token's weight in the row, so the row is a weighted bag of
token ids: the bag's embedding is the weighted sum of the tokens' embeddings (``nn.EmbeddingBag(mode="sum")``,
``per_sample_weights``), then a ReLU and a linear layer give the class scores. Other columns of the table join the
bag as tokens of their own (a number's weight is its scaled value).

Federated like every torch family (the embeddings are weights: FedAvg/FedProx, CKKS sums); no differential privacy:
Opacus computes per-example gradients of an ``EmbeddingBag`` only without per-token weights.
This module imports torch: :mod:`uaap.models.nets` imports it lazily.
"""

from __future__ import annotations

import torch
from torch import nn

EMBEDDING = 32  # the embedding width


class EmbeddingBagNet(nn.Module):
    """Class scores of a weighted bag of token ids: one token per input column, the column's value its weight."""

    def __init__(self, n_features: int, n_outputs: int, dim: int = EMBEDDING) -> None:
        super().__init__()
        self.n_features = n_features
        self.bag = nn.EmbeddingBag(n_features, dim, mode="sum")
        self.head = nn.Linear(dim, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores for a batch of rows ``(batch, n_features)`` of token weights."""
        x = x.reshape(x.shape[0], self.n_features)
        ids = torch.arange(self.n_features, device=x.device).expand(x.shape[0], self.n_features)
        return self.head(torch.relu(self.bag(ids, per_sample_weights=x)))  # type: ignore[no-any-return]
