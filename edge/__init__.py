"""Edge exporter: ONNX, TFLite, Core ML and C bundles, each verified against the source model.

Heavy converters (torch.onnx, skl2onnx, TensorFlow, coremltools) are imported inside the functions
that need them; importing ``edge`` costs nothing.
"""

from edge.errors import ExportError, NotApplicable
from edge.pipeline import FORMATS, QUANTIZE, Result, export_model

__all__ = ["FORMATS", "QUANTIZE", "ExportError", "NotApplicable", "Result", "export_model"]
