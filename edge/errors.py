"""Errors of the edge exporter (part of the ``UaapError`` family)."""

from uaap.errors import UaapError


class ExportError(UaapError):
    """A model cannot be exported to a target, or its export failed verification."""


class NotApplicable(ExportError):
    """The target format cannot express this model family (e.g. a tree ensemble as TFLite)."""
