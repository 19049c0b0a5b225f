"""The one error type for bad configuration or input.

Raised at the boundary where a value enters (a config key, a CLI argument, a file the user named), with a
message of one line that names the key and what is allowed. train.py and infer.py report it the same way:
that line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key or input value that cannot be used: the message names the key and the allowed values."""
