"""The configuration schema under its original import path (`scorekit.config.validate`), and
`compose(overrides, experiment=...)`: the command line's config, from Python.

The code lives in `scorekit.training.config`; this module only re-exports it.
"""

from scorekit.training.config import ConfigError, compose, split_named, validate

__all__ = ["ConfigError", "compose", "split_named", "validate"]
