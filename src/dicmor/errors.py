"""The errors every layer raises for bad input: each message names the file or key at fault.

The command line turns any :class:`InputError` into one line and exit code 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """Something the user gave is invalid; the message names the file, key or value."""


class ConfigError(InputError):
    """A configuration file or override is invalid; the message names the key."""


class CheckpointError(InputError):
    """A checkpoint or training-state file cannot be used; the message names the file."""


class OutputError(InputError):
    """An output cannot be written where asked; the message names the path."""
