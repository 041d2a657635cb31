"""Error types that callers can catch by meaning rather than by message text."""


class ConsortiaError(Exception):
    """Base of every error consortia raises on purpose."""


class ConfigError(ConsortiaError):
    """A job file or setting is invalid; the message names the field path."""


class SpecMismatchError(ConsortiaError):
    """A vector or model does not match the ModelSpec it is used with."""


class ModelFileError(ConsortiaError):
    """A model file is malformed, tampered with, or for another model."""


class RoundFailedError(ConsortiaError):
    """A round could not complete (too few replies); the last good model is kept."""


class BudgetExhausted(ConsortiaError):
    """The next round would take the job past its epsilon limit; the run stops before it."""


class PartitionError(ConsortiaError):
    """A data partition cannot be made as asked."""
