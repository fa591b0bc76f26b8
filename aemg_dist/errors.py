"""The error every layer raises for a setting the user must change, in the lowest layer of the package.

`storage` (whose StorageError is one) sits below `config`, which reads YAML files and URIs through it, so the
error cannot live in `config` without an import circle; `config` re-exports it, where callers have always found it.
"""


class ConfigError(ValueError):
    """A config file or override does not fit the config's schema or values."""
