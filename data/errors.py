"""The data modules' error for settings that cannot work, which the CLI prints as one line."""

__all__ = ["DataConfigError"]


class DataConfigError(ValueError):
    """A data setting that cannot work with this source or this run (e.g. rank count)."""
