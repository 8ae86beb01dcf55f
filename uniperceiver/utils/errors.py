"""Errors every layer may raise (a leaf module: it imports nothing of ours)."""


class ConfigError(ValueError):
    """A user error in a config file or a command-line override: the message names the file, key or value at
    fault and what to do; main.py prints it in one line and exits 2.  Re-exported as
    ``uniperceiver.config.ConfigError``."""
