"""Serving: the inference API over MLflow's model registry, and its ``uaap`` commands.

A floor above the library (imports point down: ``serving -> uaap``), like server/ and client/:

* :mod:`serving.registry`: ``uaap register RUN --name NAME`` puts a finished run's model in MLflow's model
  registry with what serving needs (input schema of raw columns, fitted preprocessing, metrics, privacy
  epsilon, an ONNX export when the run has one), optionally encrypted at rest (:mod:`uaap.at_rest`);
* :mod:`serving.model`: one registered version loaded for inference (onnxruntime, or the native model);
* :mod:`serving.keys`: API keys (hashed at rest, scopes, rate limits);
* :mod:`serving.app`: the FastAPI app (``uaap serve``); :mod:`serving.cache` its row cache,
  :mod:`serving.telemetry` its Prometheus metrics and JSON logs;
* :mod:`serving.commands`: the ``register``, ``serve`` and ``api-keys`` commands (entry points).

Nothing heavy (FastAPI, MLflow, onnxruntime, torch) is imported at package import.
"""
