"""The JSON report every benchmark writes: {benchmark, command, commit, machine, figures, targets}."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/x.py` from the repo root
    sys.path.insert(0, str(REPO_ROOT))


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def write_report(name: str, out: Path | str, figures: dict[str, Any], targets: dict[str, Any],
                 **extra: Any) -> Path:
    """Write the report to ``out`` and return its path; ``command`` is this process's argv."""
    from trainer.gitinfo import current_commit

    report = {
        "benchmark": name,
        "command": "python " + " ".join(sys.argv),
        "commit": current_commit(REPO_ROOT),
        "machine": machine(),
        "figures": figures,
        "targets": targets,
        **extra,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=False, default=float) + "\n")
    return out
