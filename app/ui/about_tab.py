"""The About tab: what the studio is, the papers, versions, where the data lives, whether training is on."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

import gradio as gr

PAPERS = (
    ("BlockDrop: Dynamic Inference Paths in Residual Networks", "https://arxiv.org/abs/1711.08393"),
    ("Fully-adaptive Feature Sharing in Multi-Task Networks", "https://arxiv.org/abs/1611.05377"),
    ("S3Pool: Pooling with Stochastic Spatial Sampling", "https://arxiv.org/abs/1611.05138"),
    ("Deep Variational Generative Adversarial Networks (VGAN)", "https://arxiv.org/abs/1611.01799"),
)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparseable database URL)"


def about_markdown(settings: Any, registry: Any) -> str:
    """The About page's text."""
    papers = "\n".join(f"- [{title}]({url})" for title, url in PAPERS)
    methods = "\n".join(f"- **{m.title}** — {m.summary} ({m.paper})" for m in registry.methods.values()) or "- none"
    training = ("**on**: the Runs tab can queue, cancel, resume and promote runs" if settings.enable_training
                else "**off** (set `AVSTUDIO_ENABLE_TRAINING=1` to turn it on)")
    if settings.enable_training and getattr(settings, "admin_token", ""):
        training += ", for holders of the admin token (`AVSTUDIO_ADMIN_TOKEN`)"
    versions = ", ".join(f"{d} {_version(d)}" for d in ("adaptive-vision-studio", "gradio", "torch", "torchvision",
                                                        "sqlalchemy"))
    return f"""## Adaptive Vision Studio

See what adaptive and efficient vision networks do with your own images, and retrain them: every method
is a plugin with its own tab; training runs in a background worker and is tracked in a SQL run store.

### Papers
{papers}

### Methods loaded
{methods}

### This studio
- Training from the web UI: {training}
- Home (`AVSTUDIO_HOME`): `{settings.home}`
- Datasets: `{settings.data_dir}`
- Runs database: `{_safe_url(settings.db_url)}`
- Shipped checkpoints: `{settings.assets_dir}`
- Demo device: `{settings.demo_device}`; training device: `{settings.device}`
- Versions: {versions}, Python {platform.python_version()}
"""


def build_about_tab(settings: Any, registry: Any) -> None:
    """Add the About tab (call inside ``gr.Tab``)."""
    gr.Markdown(about_markdown(settings, registry), elem_id="about")
