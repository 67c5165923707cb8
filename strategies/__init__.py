"""Flower strategies and wrappers: plain FedAvg/FedProx, reply validation, HE aggregation, central DP.

Wrappers compose with any ``flwr.serverapp.strategy.Strategy`` (wrap, don't fork), the same shape
as Flower's own ``DifferentialPrivacyServerSideFixedClipping(strategy, ...)``. ``build_strategy`` stacks,
from the inside out: ``ValidateReplies`` (validation), ``SecureAggregation`` (secure), ``CentralDPNoise``
(dp_noise) and ``PrivacyAccounting`` (dp_accounting); under ``secure-aggregation = "secagg+"``, ``SecAggPlus``
(secagg: pairwise masking, its stages run inside one round) takes SecureAggregation's place and
``DistributedNoise`` central DP's (the clients add the noise before masking). The round loop's optional hooks are
the protocols in :mod:`strategies.wrapper`.
"""

from strategies.base import build_strategy, sort_replies, wrap_privacy

__all__ = ["build_strategy", "sort_replies", "wrap_privacy"]
