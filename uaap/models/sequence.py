"""Recurrent networks over fixed-length windows: each row of ``n_features`` values is read as a sequence of that
many steps, one value a step (a window of lags, a sensor trace), and the last hidden state gives the outputs.

The recurrent layers are Opacus' ``DPLSTM`` / ``DPGRU`` in every run, private or not: they compute what
``torch.nn.LSTM`` / ``GRU`` compute, with the same parameter names (``weight_ih_l0``...), from linear layers
whose per-example gradients Opacus knows, so DP-SGD, FedAvg/FedProx and CKKS sums see one architecture
whichever way a client trains. This module imports torch and Opacus: :mod:`uaap.models.nets` imports it lazily.
"""

from __future__ import annotations

import torch
from opacus.layers import DPGRU, DPLSTM
from torch import nn

HIDDEN = 32


class RecurrentNet(nn.Module):
    """An LSTM or GRU over a row read as a sequence, then a linear layer from the last hidden state."""

    def __init__(self, cell: str, n_features: int, n_outputs: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        layer = {"lstm": DPLSTM, "gru": DPGRU}[cell]
        self.cell = cell
        self.n_features = n_features
        self.rnn = layer(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs for a batch of rows ``(batch, n_features)`` (any trailing shape is flattened to the sequence)."""
        seq = x.reshape(x.shape[0], self.n_features, 1)
        out, _ = self.rnn(seq)
        return self.head(out[:, -1])  # type: ignore[no-any-return]  # nn.Module.__call__ is untyped
