"""One error family for everything a user can get wrong.

Messages name the bad value, what was expected and what to do.
"""


class UaapError(Exception):
    """Base class of every error UAAP raises on purpose."""

    exit_code = 2  # what the command line exits with: 2 is bad input


class ConfigError(UaapError, ValueError):
    """A run configuration value is invalid."""


class DataError(UaapError, ValueError):
    """Input data cannot be used as given."""


class WorkspaceError(UaapError):
    """A run, checkpoint or workspace file is missing or unreadable."""


class KeyMaterialError(UaapError):
    """HE key material is missing, of the wrong kind, or does not match."""


class PrivacyBudgetExceeded(UaapError):
    """The next release would exceed the privacy budget."""


class RunFailedError(UaapError):
    """A run ended without a result (every round failed, or the server stopped on an error)."""

    exit_code = 1
