"""Flower strategies and wrappers: plain FedAvg/FedProx, HE aggregation, central DP.

Wrappers compose with any ``flwr.serverapp.strategy.Strategy`` (wrap, don't fork), the same shape
as Flower's own ``DifferentialPrivacyServerSideFixedClipping(strategy, ...)``.
"""

from strategies.base import build_strategy, sort_replies

__all__ = ["build_strategy", "sort_replies"]
