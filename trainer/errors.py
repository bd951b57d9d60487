"""Errors a user can cause; the UI shows their message, never a traceback."""


class UserError(ValueError):
    """A problem the user can fix (bad config value, unreadable image, missing dataset files)."""


class ConfigError(UserError):
    """A recipe config key or value is invalid; the message names the valid choices."""


def failure_line(where: str, exc: BaseException) -> str:
    """The one-line form of a failure everywhere it is shown (a plugin's status, a failed run's error):
    ``WHERE: ExcType: message``."""
    text = f"{exc.__class__.__name__}: {exc}".strip().splitlines()[0] if str(exc) else exc.__class__.__name__
    return f"{where}: {text}"[:300] if where else text[:300]
