"""Errors whose message tells the user what to change; the CLI prints them as one line."""

from __future__ import annotations

__all__ = ["BackendUnavailableError", "ConfigError"]


class ConfigError(ValueError):
    """A setting contradicts the data, a checkpoint or this machine; the message says how."""


class BackendUnavailableError(ConfigError, RuntimeError):
    """The requested attention backend cannot run on this machine or these inputs."""
