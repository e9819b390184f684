"""Typed errors raised by library code; only the CLI turns them into exit codes."""


class Face2hbeError(Exception):
    """Base class for every error this package raises on purpose."""


class BadImageError(Face2hbeError):
    """An input file is not a usable image (corrupt, truncated, too large, not an image)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelRepositoryError(Face2hbeError):
    """The model repository is missing a file or disagrees with the contract."""


class ServerUnavailableError(Face2hbeError):
    """The inference server could not be reached (after retries)."""


class InferenceError(Face2hbeError):
    """The server answered a request with an error."""


class DetectorUnavailableError(Face2hbeError):
    """The chosen face detector's package is not installed."""


class OutputError(Face2hbeError):
    """A results file or folder cannot be written (missing folder, a directory, disk full, ...)."""


class CatalogError(Face2hbeError):
    """The SKU catalog file is missing or malformed."""


class DataError(Face2hbeError):
    """A training/evaluation data set is missing or malformed."""


class InputError(Face2hbeError):
    """A list of inputs (paths file, manifest) is missing or malformed."""
