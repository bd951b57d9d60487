"""Errors a user can cause; the UI shows their message, never a traceback."""


class UserError(ValueError):
    """A problem the user can fix (bad config value, unreadable image, missing dataset files)."""


class ConfigError(UserError):
    """A recipe config key or value is invalid; the message names the valid choices."""
