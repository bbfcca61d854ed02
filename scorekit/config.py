"""The configuration schema under its original import path (`scorekit.config.validate`).

The code lives in `scorekit.training.config`; this module only re-exports it.
"""

from scorekit.training.config import ConfigError, split_named, validate

__all__ = ["ConfigError", "split_named", "validate"]
