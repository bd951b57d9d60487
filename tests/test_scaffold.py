"""`avstudio new-plugin`: the scaffolded package installs, is discovered, and its own tests pass."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from app.errors import UserError
from app.scaffold import create_plugin, example_images, render, template_values
from app.settings import REPO_ROOT


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVSTUDIO_") and k != "PYTHONPATH"}
    env.update(extra)
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _generated_tests(package: Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests")],
                cwd=cwd, env=env, timeout=600)  # eight tests, five short trainings: minutes on a busy 2-core machine


def test_scaffolded_plugin_installs_is_discovered_and_passes_its_tests(tmp_path):
    env = _env(AVSTUDIO_HOME=str(tmp_path / "home"))
    made = _run([sys.executable, "-m", "app.cli", "new-plugin", "edge-gain", "--dir", str(tmp_path)],
                cwd=REPO_ROOT, env=env)
    assert made.returncode == 0, made.stderr
    package = tmp_path / "avstudio-edge-gain"
    assert {p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()} == {
        "pyproject.toml", "README.md", "avstudio_edge_gain/__init__.py", "tests/test_edge_gain.py",
        *(f"avstudio_edge_gain/assets/examples/{stem}.png" for stem in ("bright", "dark", "ramp"))}
    pyproject = tomllib.loads((package / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["avstudio"] == {"edge-gain": "avstudio_edge_gain"}

    # Not installed: the entry-point test must fail (so it tests something); the others pass.
    bare = _generated_tests(package, cwd=tmp_path, env={**env, "PYTHONPATH": str(package)})
    assert bare.returncode == 1, bare.stdout
    assert "1 failed, 7 passed" in bare.stdout and "entry_point" in bare.stdout

    # Installed into a private target (never the shared site-packages): everything passes.
    site = tmp_path / "site"
    installed = _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                      "--target", str(site), str(package)], cwd=tmp_path, env=env)
    assert installed.returncode == 0, installed.stderr
    env_installed = {**env, "PYTHONPATH": str(site)}
    result = _generated_tests(package, cwd=tmp_path, env=env_installed)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 passed" in result.stdout

    # ... and `avstudio plugins` lists it as a working entry-point plugin with its hook.
    listed = _run([sys.executable, "-m", "app.cli", "plugins"], cwd=REPO_ROOT, env=env_installed)
    assert listed.returncode == 0, listed.stderr
    assert '"name": "edge-gain"' in listed.stdout and '"source": "entrypoint"' in listed.stdout
    assert '"register_methods"' in listed.stdout and '"failed"' not in listed.stdout
    assert '"register_commands"' in listed.stdout and '"edge-gain-patches"' in listed.stdout


def test_the_scaffold_follows_the_demo_and_training_conventions():
    """docs/plugins.md, "Demo conventions" and "The training loop": what a new author copies is the documented way."""
    files = render("edge-gain")
    code, tests = files["avstudio_edge_gain/__init__.py"], files["tests/test_edge_gain.py"]
    for piece in ("image_input(", ".examples(ctx.assets_dir)", ".wire(", "ModelCache(", "enlarge(", "@user_errors",
                  "add_css(pixelated_css(", "what the network sees", "TrainLoop(", "loop.resume(", "loop.end_epoch(",
                  "rebuild_check(", "CommandContext", "ctx: DemoContext", "ctx: TrainContext"):
        assert piece in code, piece
    # no gr.Image(type="pil") nor a cached gr.Examples (the kit's lenient upload and examples panel instead),
    # no hand-made resume or stop loop (the TrainLoop does both)
    for piece in ('type="pil"', "gr.Examples(", "resume_checkpoint", "should_stop", "ctx.progress("):
        assert piece not in code, piece
    # the tests use the documented harness only (docs/plugins.md, "Testing a plugin")
    assert "registry.recipe" not in tests and "from app.testing import open_test_studio" in tests
    examples = example_images("edge-gain")
    assert sorted(examples) == [f"avstudio_edge_gain/assets/examples/{s}.png" for s in ("bright", "dark", "ramp")]
    assert all(Image.open(io.BytesIO(data)).size == (16, 16) for data in examples.values())


@pytest.mark.slow  # mypy's first run over torch's types takes a minute or more
def test_the_scaffolded_plugin_and_its_tests_pass_the_type_check(tmp_path):
    pytest.importorskip("mypy")
    package = create_plugin("edge-gain", tmp_path)
    checked = _run([sys.executable, "-m", "mypy", "--config-file", str(REPO_ROOT / "pyproject.toml"),
                    str(package / "avstudio_edge_gain"), str(package / "tests")], cwd=REPO_ROOT, env=_env(),
                   timeout=900)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_names_map_to_a_distribution_a_module_and_a_title():
    assert template_values("edge-gain") == {"name": "edge-gain", "ident": "edge_gain",
                                            "module": "avstudio_edge_gain", "title": "Edge Gain"}
    files = render("blur_net")
    assert set(files) == {"pyproject.toml", "README.md", "avstudio_blur_net/__init__.py",
                          "tests/test_blur_net.py"}
    assert all("${" not in text for text in files.values())
    compile(files["avstudio_blur_net/__init__.py"], "__init__.py", "exec")
    compile(files["tests/test_blur_net.py"], "test_blur_net.py", "exec")


@pytest.mark.parametrize("name", ["My Plugin", "1abc", "abc-", "a..b", "UPPER", ""])
def test_invalid_names_are_refused(name, tmp_path):
    with pytest.raises(UserError, match="invalid plugin name"):
        create_plugin(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_directory_is_never_overwritten(tmp_path):
    root = create_plugin("thing", tmp_path)
    (root / "README.md").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        create_plugin("thing", tmp_path)
    assert (root / "README.md").read_text() == "mine"


def test_a_name_that_would_collide_is_refused_saying_with_whom(tmp_path):
    result = _run([sys.executable, "-m", "app.cli", "new-plugin", "blockdrop", "--dir", str(tmp_path)],
                  cwd=REPO_ROOT, env=_env(AVSTUDIO_HOME=str(tmp_path / "home"), AVSTUDIO_PLUGINS=""))
    assert result.returncode == 2, result.stderr
    assert "'blockdrop' is already taken: method of the builtin plugin 'plugins.blockdrop'" in result.stderr
    assert not (tmp_path / "avstudio-blockdrop").exists()


def test_the_scaffold_declares_its_test_extra_and_ships_its_assets():
    pyproject = tomllib.loads(render("edge-gain")["pyproject.toml"])
    assert any(dep.startswith("pytest") for dep in pyproject["project"]["optional-dependencies"]["test"])
    assert "assets/*.safetensors" in pyproject["tool"]["setuptools"]["package-data"]["avstudio_edge_gain"]


def test_cli_reports_a_bad_name_in_one_line(tmp_path):
    result = _run([sys.executable, "-m", "app.cli", "new-plugin", "Bad Name", "--dir", str(tmp_path)],
                  cwd=REPO_ROOT, env=_env(AVSTUDIO_HOME=str(tmp_path / "home")))
    assert result.returncode == 2
    assert result.stderr.startswith("Error: invalid plugin name") and result.stderr.count("\n") == 1


def test_templates_ship_as_package_data():
    package_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = {p for values in package_data.values() for p in values}
    templates = [p.name for p in (REPO_ROOT / "app" / "templates").glob("*.tmpl")]
    assert templates
    assert "*.tmpl" in patterns, "add '*.tmpl' to [tool.setuptools.package-data] so new-plugin works when installed"
