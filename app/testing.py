"""A real studio for testing a plugin: its registry, run store, worker path and contexts, in a
temporary home. A plugin's tests open one with :func:`open_test_studio` (the one module of the studio
besides the contract, the core ``app.api`` and its kits, that they import; the contract does not hand it
on, since the harness reaches the whole studio, its CLI included)::

    from app.testing import open_test_studio
    import my_plugin

    def test_recipe_trains(tmp_path):
        with open_test_studio(tmp_path, [my_plugin]) as studio:
            assert studio.plugin("my_plugin").status == "ok"
            result = studio.train("my-method", "fit", {"steps": 20})
            assert result.status == "succeeded", result.error
            ctx = studio.demo_context("my-method")
            assert ctx.load_checkpoint("model") is None          # nothing promoted or shipped yet
            studio.promote(result.run_id, "model")
            assert ctx.load_checkpoint("model") is not None
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from app.demo_context import StudioCommandContext, StudioDemoContext
from app.errors import UserError
from app.plugin_manager import PluginStatus, Registry, load_registry
from app.promotion import Promoted, choose_artifact, promote_artifact
from app.settings import ASSETS_DIR, Settings
from trainer.config import config_to_dict, make_config
from trainer.context import RunContext
from trainer.execution import execute_run
from trainer.gitinfo import current_commit
from trainer.records import RunInfo
from trainer.store import RunStatus


@dataclass
class TrainResult:
    """How a run ended: its record, its metric history by key, and its checkpoint files by name."""

    run: RunInfo
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    checkpoints: dict[str, Path] = field(default_factory=dict)

    @property
    def run_id(self) -> int:
        return self.run.id

    @property
    def status(self) -> str:
        return str(self.run.status)

    @property
    def error(self) -> str | None:
        """The first line of the run's error (the message a user sees), or None."""
        return self.run.error.splitlines()[0] if self.run.error else None

    def last(self, key: str) -> float:
        """The last logged value of metric ``key``."""
        return self.metrics[key][-1][1]


@contextmanager
def _interrupted_after(checks: int | None) -> Iterator[None]:
    """Make the running recipe die (KeyboardInterrupt) at its ``checks``-th ``should_stop()``; the
    worker code marks the run interrupted. Nothing happens when ``checks`` is None."""
    if checks is None:
        yield
        return
    original = RunContext.should_stop
    calls = [0]

    def should_stop(ctx: RunContext, *, fresh: bool = False) -> bool:
        calls[0] += 1
        if calls[0] >= checks:
            raise KeyboardInterrupt(f"interrupted by the test at should_stop check {calls[0]}")
        return original(ctx, fresh=fresh)

    RunContext.should_stop = should_stop  # type: ignore[method-assign]
    try:
        yield
    except KeyboardInterrupt:
        pass  # the run is recorded as interrupted
    finally:
        RunContext.should_stop = original  # type: ignore[method-assign]


class StudioForTests:
    """A studio on ``home`` with ``plugins`` (modules or importable module names) registered beside the
    built-ins, as a real studio does. Training runs through the worker's own code path, in this process."""

    def __init__(self, home: Path | str, plugins: Sequence[Any] = (), *, installed: str | None = "") -> None:
        self.home = Path(home)
        self.settings = Settings(home=self.home, db_url=f"sqlite:///{self.home / 'runs.db'}", device="cpu",
                                 demo_device="cpu", enable_training=True, plugins=installed, plugins_dir=None,
                                 assets_dir=ASSETS_DIR, threads=None)
        self.settings.ensure_dirs()
        self._plugin_modules = [p.__name__ if isinstance(p, ModuleType) else str(p) for p in plugins]
        self.registry: Registry = load_registry(plugins=installed, extra_plugins=tuple(plugins))
        self.store = self.settings.open_store()

    # -- plugins -------------------------------------------------------------------------------
    def plugin(self, name: str) -> PluginStatus:
        """How plugin ``name`` (a module name, entry-point name or built-in) fared."""
        status = self.registry.status(name)
        if status is None:
            known = ", ".join(p.name for p in self.registry.plugins)
            raise LookupError(f"no plugin {name!r} was loaded; loaded: {known}")
        return status

    # -- training ------------------------------------------------------------------------------
    def train(self, method: str, recipe: str, config: Mapping[str, Any] | None = None,
              device: str = "cpu", *, interrupt_after: int | None = None) -> TrainResult:
        """Queue a run (validated as the CLI does: a bad value raises ConfigError) and execute it here,
        as a worker would; the result says how it ended (``succeeded``, ``failed`` with its error, ...).

        ``interrupt_after=N`` kills the run at its N-th ``should_stop()`` check, as Ctrl-C or a dead
        worker would (no clean-up in the recipe): the run ends ``interrupted``, ready for :meth:`resume`.
        """
        chosen = self.registry.recipe(method, recipe)
        typed = make_config(chosen.config_cls, dict(config or {}))
        run_id = self.store.enqueue(method, recipe, config_to_dict(typed), device=device, commit=current_commit())
        return self._execute(run_id, device, interrupt_after)

    def resume(self, run_id: int, device: str = "cpu", *, interrupt_after: int | None = None) -> TrainResult:
        """Resume an interrupted, failed or cancelled run from its saved state, as ``avstudio runs resume``.

        Raises UserError when the run cannot resume (it is queued, running or succeeded).
        """
        try:
            self.store.requeue_for_resume(run_id)
        except (KeyError, ValueError) as exc:
            raise UserError(str(exc.args[0] if exc.args else exc)) from None
        return self._execute(run_id, device, interrupt_after)

    def _execute(self, run_id: int, device: str, interrupt_after: int | None = None) -> TrainResult:
        host = socket.gethostname()
        if self.store.claim_run(run_id, f"test-studio-{os.getpid()}", host=host, pid=os.getpid()) is None:
            raise RuntimeError(f"run {run_id} could not be claimed")
        s = self.settings
        with _interrupted_after(interrupt_after):
            execute_run(s.db_url, run_id, lambda: self.registry, data_dir=s.data_dir, runs_dir=s.runs_dir,
                        assets_dir=s.assets_dir, device=device)
        return self.result(run_id)

    def result(self, run_id: int) -> TrainResult:
        """The current record, metric history and checkpoints of run ``run_id``."""
        metrics: dict[str, list[tuple[int, float]]] = {}
        for point in self.store.metrics(run_id):
            metrics.setdefault(point.key, []).append((point.step, point.value))
        checkpoints = {a.name: Path(a.path) for a in self.store.artifacts(run_id, kind="checkpoint")}
        return TrainResult(self.store.get_run(run_id), metrics, checkpoints)

    @contextmanager
    def train_context(self, method: str, recipe: str, config: Mapping[str, Any] | None = None,
                      device: str = "cpu") -> Iterator[RunContext]:
        """A real TrainContext for a new run of ``method``/``recipe``, to call a recipe's pieces directly."""
        import torch

        chosen = self.registry.recipe(method, recipe)
        typed = make_config(chosen.config_cls, dict(config or {}))
        run_id = self.store.enqueue(method, recipe, config_to_dict(typed), device=device)
        run = self.store.claim_run(run_id, "test-studio", host=socket.gethostname(), pid=os.getpid())
        s = self.settings
        try:
            with RunContext(self.store, run, self.registry, device=torch.device(device), data_dir=s.data_dir,
                            runs_dir=s.runs_dir, assets_dir=s.assets_dir, config=typed) as ctx:
                yield ctx
        except BaseException as exc:
            self.store.finish(run_id, RunStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
            raise
        self.store.finish(run_id, RunStatus.SUCCEEDED)

    # -- demos, commands, promotion ----------------------------------------------------------
    def demo_context(self, method: str) -> StudioDemoContext:
        """The DemoContext the studio hands to ``method``'s ``build_demo``."""
        return StudioDemoContext(method, self.settings, self.registry, self.store)

    def command_context(self) -> StudioCommandContext:
        """The CommandContext the studio hands to ``register_commands``."""
        return StudioCommandContext(self.registry, lambda: self.settings)

    def build_demo(self, method: str) -> Any:
        """Build ``method``'s demo in Gradio Blocks (not served); raises what ``build_demo`` raised."""
        import gradio as gr

        with gr.Blocks() as blocks:
            self.registry.method(method).build_demo(self.demo_context(method))
        return blocks

    def promote(self, run_id: int, name: str | None = None, slot: str | None = None) -> Promoted:
        """Promote run ``run_id``'s checkpoint ``name`` into ``slot``, as ``avstudio runs promote`` does."""
        artifact = choose_artifact(self.store, run_id, name)
        return promote_artifact(self.store, self.registry, artifact.id, slot)

    def dataset(self, name: str, split: str, **options: Any) -> Any:
        """Load a registered dataset split from this studio's data directory."""
        return self.registry.load_dataset(name, split, self.settings.data_dir, **options)

    def cli(self, *args: str, env: Mapping[str, str] | None = None) -> Any:
        """Run ``avstudio ARGS`` against this studio (click's CliRunner), with ``env`` over the studio's own
        variables (home, database, plugins, CPU); returns its Result."""
        from click.testing import CliRunner

        from app.cli import cli

        full = {"AVSTUDIO_HOME": str(self.home), "AVSTUDIO_DB_URL": self.settings.db_url,
                "AVSTUDIO_EXTRA_PLUGINS": ",".join(self._plugin_modules), "AVSTUDIO_DEVICE": "cpu"}
        if self.settings.plugins is not None:
            full["AVSTUDIO_PLUGINS"] = self.settings.plugins
        full.update(env or {})
        with environment(full):  # the CLI's global options write os.environ; restore it afterwards
            return CliRunner().invoke(cli, list(args), env=full, catch_exceptions=False)

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> StudioForTests:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def environment(values: Mapping[str, str] | None = None, **more: str) -> Iterator[None]:
    """Set ``values`` (and ``more``) in ``os.environ`` for the block; afterwards each of those variables is
    back as it was (unset again when it was unset), whatever the block wrote to it."""
    values = {**(values or {}), **more}
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def open_test_studio(home: Path | str, plugins: Sequence[Any] = (), *, installed: str | None = "") -> StudioForTests:
    """A :class:`StudioForTests` on ``home`` with ``plugins`` registered beside the built-ins.

    ``plugins`` are modules or importable module names; ``installed`` selects entry-point plugins as
    ``AVSTUDIO_PLUGINS`` does (``""``: none, None: all installed, ``"name"``: that one). Use it as a
    context manager: ``with open_test_studio(tmp_path, [my_plugin]) as studio: studio.train(...)``.
    """
    return StudioForTests(home, plugins, installed=installed)


def wait_for(condition, timeout_s: float = 30.0, every_s: float = 0.1):
    """Poll ``condition()`` until it returns something truthy, and return that; AssertionError after
    ``timeout_s`` seconds (for tests that watch another process: a worker, a run, a server)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a test server)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
