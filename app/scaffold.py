"""``avstudio new-plugin NAME``: scaffold an installable plugin package whose own tests pass.

The files come from ``app/templates/*.tmpl`` (``string.Template``: ``${name}``, ``${module}``,
``${ident}``, ``${title}``), and the example images the demo ships from :func:`example_images`.
"""

from __future__ import annotations

import io
import re
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from app.errors import UserError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*([-_][a-z0-9]+)*$")

# file in the new package -> template in app/templates
FILES = {
    "pyproject.toml": "plugin_pyproject.toml.tmpl",
    "README.md": "plugin_readme.md.tmpl",
    "{module}/__init__.py": "plugin_init.py.tmpl",
    "tests/test_{ident}.py": "plugin_test.py.tmpl",
}


def template_values(name: str) -> dict[str, str]:
    """The substitutions for plugin ``name``; a UserError if it cannot name a package and a method."""
    if not NAME_PATTERN.match(name):
        raise UserError(f"invalid plugin name {name!r}: use lowercase letters, digits, '-' or '_', "
                        "starting with a letter (e.g. 'my-method')")
    ident = name.replace("-", "_")
    title = " ".join(part.capitalize() for part in re.split(r"[-_]", name))
    return {"name": name, "ident": ident, "module": f"avstudio_{ident}", "title": title}


def check_name_is_free(name: str, registry: Any) -> None:
    """A UserError when ``name`` is already a loaded plugin, method or dataset (it would then collide)."""
    for status in registry.plugins:
        if name in (status.name, *status.methods, *status.datasets):
            what = "plugin" if name == status.name else "method" if name in status.methods else "dataset"
            raise UserError(f"{name!r} is already taken: {what} of the {status.source} plugin {status.name!r}; "
                            "choose another name")
    if name in registry.methods or name in registry.datasets:
        raise UserError(f"{name!r} is already a registered method or dataset; choose another name")


def render(name: str) -> dict[str, str]:
    """The new package's files (relative path -> text) for plugin ``name``."""
    values = template_values(name)
    templates = resources.files("app.templates")
    return {
        path.format(**values): Template(templates.joinpath(template).read_text()).substitute(values)
        for path, template in FILES.items()
    }


def example_images(name: str) -> dict[str, bytes]:
    """The example images the new plugin's demo ships (``MODULE/assets/examples/*.png``, PNG bytes by path):
    16×16 patches like its dataset's, a dark one and a bright one, and a grey ramp."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.broadcast_to(np.linspace(30, 220, 16).astype(np.uint8)[None, :, None], (16, 16, 3))
    images = {"dark": 40 + rng.integers(0, 60, (16, 16, 3)), "bright": 180 + rng.integers(0, 60, (16, 16, 3)),
              "ramp": ramp}
    out = {}
    for stem, array in images.items():
        buffer = io.BytesIO()
        Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
        out[f"{template_values(name)['module']}/assets/examples/{stem}.png"] = buffer.getvalue()
    return out


def create_plugin(name: str, directory: Path | str = ".") -> Path:
    """Write ``avstudio-NAME/`` under ``directory`` and return its path; never overwrites anything."""
    root = Path(directory) / f"avstudio-{name}"
    files = render(name)
    if root.exists():
        raise UserError(f"{root} already exists; choose another name or --dir")
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for relative, data in example_images(name).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root
