"""Errors a user can cause (defined in :mod:`trainer.errors`, so the worker shares them)."""

from trainer.errors import ConfigError, UserError

__all__ = ["ConfigError", "UserError"]
