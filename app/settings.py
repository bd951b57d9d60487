"""Settings from environment variables (CLI flags override them where they exist)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import parse_flag
from trainer.store import DB_RETRY_S as DEFAULT_DB_RETRY_S
from trainer.store import STALE_AFTER_S as DEFAULT_STALE_AFTER_S

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"


def env_flag(name: str, env: Mapping[str, str] | None = None) -> bool:
    """The yes/no variable ``name`` of ``env`` (default: the environment); unset or empty is off.

    Raises ValueError naming the variable for anything but 1/true/yes/on or 0/false/no/off (any
    case), so a typo such as ``AVSTUDIO_ENABLE_TRAINING=ture`` never silently reads as off.
    """
    value = (os.environ if env is None else env).get(name, "")
    try:
        return parse_flag(value)
    except ValueError:
        raise ValueError(f"{name} must be 1, true, yes or on (or 0, false, no, off), got {value!r}") from None


def parse_threads(value: str | int | None) -> int | None:
    """``AVSTUDIO_THREADS`` / ``--threads``: a positive integer, or empty / "auto" for torch's default."""
    text = "" if value is None else str(value).strip().lower()
    if text in ("", "auto", "0"):
        return None
    if not text.isdigit():
        raise ValueError(f"AVSTUDIO_THREADS must be a positive integer or 'auto', got {value!r}")
    return int(text)


DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_UPLOAD_MEGAPIXELS = 16.0


@dataclass(frozen=True)
class UploadLimits:
    """The largest image a visitor may send: file size in bytes and pixel count (width × height)."""

    max_bytes: int
    max_pixels: int


def _positive_number(name: str, env: Mapping[str, str], default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive number, got {text!r}")
    return value


def upload_limits(env: Mapping[str, str] | None = None) -> UploadLimits:
    """``AVSTUDIO_MAX_UPLOAD_MB`` (default 10) and ``AVSTUDIO_MAX_UPLOAD_MEGAPIXELS`` (default 16) of ``env``
    (default: the environment). Uploads over either are refused with a clear message; the pixel count
    is read from the file's header, before decoding, so a decompression bomb never reaches memory.

    Raises ValueError naming the variable for a value that is not a positive number.
    """
    env = os.environ if env is None else env
    megabytes = _positive_number("AVSTUDIO_MAX_UPLOAD_MB", env, DEFAULT_MAX_UPLOAD_MB)
    megapixels = _positive_number("AVSTUDIO_MAX_UPLOAD_MEGAPIXELS", env, DEFAULT_MAX_UPLOAD_MEGAPIXELS)
    return UploadLimits(max_bytes=int(megabytes * 1_000_000), max_pixels=int(megapixels * 1_000_000))


@dataclass
class Settings:
    """Where the studio keeps its state and how it behaves."""

    home: Path = field(default_factory=lambda: Path(os.environ.get("AVSTUDIO_HOME", "~/.avstudio")).expanduser())
    db_url: str = ""
    device: str = field(default_factory=lambda: os.environ.get("AVSTUDIO_DEVICE", "auto"))
    demo_device: str = field(default_factory=lambda: os.environ.get("AVSTUDIO_DEMO_DEVICE", "auto"))
    """Where demos run: ``auto`` follows ``device`` (a CUDA GPU when the server has one, else the CPU)."""
    enable_training: bool = field(default_factory=lambda: env_flag("AVSTUDIO_ENABLE_TRAINING"))
    admin_token: str = field(default_factory=lambda: os.environ.get("AVSTUDIO_ADMIN_TOKEN", ""), repr=False)
    """When set, the web UI's training and run-management actions also need this token (the CLI does not)."""
    plugins: str | None = field(default_factory=lambda: os.environ.get("AVSTUDIO_PLUGINS"))
    plugins_dir: Path | None = field(
        default_factory=lambda: Path(d) if (d := os.environ.get("AVSTUDIO_PLUGINS_DIR")) else None
    )
    assets_dir: Path = field(default_factory=lambda: Path(os.environ.get("AVSTUDIO_ASSETS", str(ASSETS_DIR))))
    threads: int | None = field(default_factory=lambda: parse_threads(os.environ.get("AVSTUDIO_THREADS")))
    """CPU threads for recipes, workers and demos (None: torch's default, one per core)."""
    stale_after_s: float = field(default_factory=lambda: _positive_number(
        "AVSTUDIO_STALE_AFTER_S", os.environ, DEFAULT_STALE_AFTER_S))
    """A running run whose heartbeat is older than this is marked interrupted (its worker was lost)."""
    db_retry_s: float = field(default_factory=lambda: _positive_number(
        "AVSTUDIO_DB_RETRY_S", os.environ, DEFAULT_DB_RETRY_S))
    """How long a worker and its runs retry a database they cannot reach before they give up."""

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser()
        if not self.db_url:
            self.db_url = os.environ.get("AVSTUDIO_DB_URL") or f"sqlite:///{self.home / 'runs.db'}"

    @property
    def data_dir(self) -> Path:
        return Path(os.environ.get("AVSTUDIO_DATA", str(self.home / "data")))

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    def open_store(self) -> Any:
        """The run store at ``db_url`` for the CLI and the web UI: its calls fail at once when the
        database is unreachable (a worker's store retries instead), and artifact paths are read under
        this machine's ``runs_dir``."""
        from trainer.store import RunStore

        return RunStore(self.db_url, stale_after_s=self.stale_after_s, runs_dir=self.runs_dir)

    def ensure_dirs(self) -> None:
        for path in (self.home, self.data_dir, self.runs_dir):
            path.mkdir(parents=True, exist_ok=True)
