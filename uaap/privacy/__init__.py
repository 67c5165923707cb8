"""Differential privacy: accountants, client DP-SGD, central-DP clipping, the privacy ledger and reports.

* :mod:`uaap.privacy.accountant` - Opacus RDP/PRV accountants by name, state as data, offline queries;
* :mod:`uaap.privacy.dpsgd` - the clients' DP-SGD engine (``make_private``), accountant kept across rounds;
* :mod:`uaap.privacy.fastdp` - DP-SGD for linear stacks from per-example norms, no per-example gradients;
* :mod:`uaap.privacy.clip` - clipping of a client's update for client-level (central) DP;
* :mod:`uaap.privacy.ledger` - one SQL row per release (``ledger.db`` in the workspace, or a SQLAlchemy URL);
* :mod:`uaap.privacy.report` - budget tables (``uaap privacy report RUN``).

The server side is ``strategies.dp_noise.CentralDPNoise`` (Poisson client sampling, noise) and
``strategies.dp_accounting.PrivacyAccounting`` (accountants, ledger, budget stop).
"""
