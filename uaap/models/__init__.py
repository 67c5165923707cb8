"""Models: the family registry and its capability table, the torch networks, and weights on the wire.

* :mod:`uaap.models.registry`: every family a user can pick and where it runs (``uaap models``), checked
  against the run config before anything starts (data only, cheap to import);
* :mod:`uaap.models.nets`: the torch networks, whose federation averages weights (FedAvg/FedProx, CKKS, DP);
* :mod:`uaap.models.weights`: weights as numpy arrays, to and from torch modules and Flower records.
"""

from uaap.models.nets import MODELS, ModelFactory, build_model
from uaap.models.registry import FAMILIES, Capabilities, ModelFamily, capability_table, check_combination, family
from uaap.models.weights import count_parameters, flatten, from_record, get_weights, set_weights, to_record, unflatten

__all__ = [
    "FAMILIES",
    "MODELS",
    "Capabilities",
    "ModelFactory",
    "ModelFamily",
    "build_model",
    "capability_table",
    "check_combination",
    "count_parameters",
    "family",
    "flatten",
    "from_record",
    "get_weights",
    "set_weights",
    "to_record",
    "unflatten",
]
