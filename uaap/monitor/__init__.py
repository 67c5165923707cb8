"""Auditing a trained model where the data lives: group fairness (:mod:`uaap.monitor.fairness`) and drift
(:mod:`uaap.monitor.drift`).

Both follow the federated-first rule of the data pipeline: each party computes statistics that add up (per-group
confusion counts; fixed-bin histograms and category counts) and the report is computed once from their sum
(:func:`uaap.data.preprocess.merge`), so a central audit is the federated one with a single party and the
federated numbers equal the pooled ones. :mod:`uaap.monitor.runmodel` loads a run's model with its fitted
preprocessor, so both read raw columns a user knows.
"""
