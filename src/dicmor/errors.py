"""The errors every layer raises for bad input: each message names the file or key at fault."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""
