"""Settings from environment variables (CLI flags override them where they exist)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Settings:
    """Where the studio keeps its state and how it behaves."""

    home: Path = field(default_factory=lambda: Path(os.environ.get("AVSTUDIO_HOME", "~/.avstudio")).expanduser())
    db_url: str = ""
    device: str = field(default_factory=lambda: os.environ.get("AVSTUDIO_DEVICE", "auto"))
    demo_device: str = field(default_factory=lambda: os.environ.get("AVSTUDIO_DEMO_DEVICE", "cpu"))
    enable_training: bool = field(default_factory=lambda: _flag("AVSTUDIO_ENABLE_TRAINING"))
    plugins: str | None = field(default_factory=lambda: os.environ.get("AVSTUDIO_PLUGINS"))
    plugins_dir: Path | None = field(
        default_factory=lambda: Path(d) if (d := os.environ.get("AVSTUDIO_PLUGINS_DIR")) else None
    )
    assets_dir: Path = field(default_factory=lambda: Path(os.environ.get("AVSTUDIO_ASSETS", str(ASSETS_DIR))))

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

    def ensure_dirs(self) -> None:
        for path in (self.home, self.data_dir, self.runs_dir):
            path.mkdir(parents=True, exist_ok=True)
