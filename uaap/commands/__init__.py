"""Command groups of the ``uaap`` CLI (see :mod:`uaap.cli`)."""
