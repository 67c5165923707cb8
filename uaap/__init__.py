"""UAAP: a federated-first ML library on Flower and Ray.

The package import stays light: heavy dependencies (torch, Flower, Ray, TenSEAL, Opacus, MLflow)
are imported inside the functions that need them.
"""

from uaap.errors import UaapError

__all__ = ["UaapError", "__version__"]
__version__ = "0.1.0"
