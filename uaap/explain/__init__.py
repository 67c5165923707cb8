"""Explanations of a run's model on the raw columns a user knows (:mod:`uaap.explain.shapley`)."""
