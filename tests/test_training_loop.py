"""TrainLoop (``app.api.TrainLoop``): a run killed mid-epoch and resumed follows the same trajectory as a
run never stopped (weights, optimisers, LR schedule, every RNG), through the real worker path.

This module is also a small plugin (``register_methods`` / ``register_datasets`` below): a tiny recipe
that uses every RNG, and a tiny dataset for the BlockDrop backbone recipe.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from app.api import DatasetSpec, Method, Recipe, config_field, hookimpl
from app.api.training import TrainLoop
from app.plugin_manager import load_registry
from tests.blockdrop_fakes import FakeTrainContext, random_dataset
from trainer.checkpoints import load_checkpoint
from trainer.context import RunContext
from trainer.execution import execute_run
from trainer.resume_state import flatten, unflatten

# -- the plugin ---------------------------------------------------------------------------------------


@dataclass
class FitConfig:
    epochs: int = config_field(4, "epochs", min=1)
    batch_size: int = config_field(8, "batch size", min=1)
    lr: float = config_field(0.05, "SGD learning rate", min=0)
    seed: int = config_field(0, "random seed")
    step_sleep_s: float = config_field(0.0, "seconds to sleep after each step (to kill a run mid-epoch)", min=0)


def train_fit(config: FitConfig, ctx) -> dict[str, float]:
    """A regression whose every step draws from torch (dropout, shuffling), Python ``random`` and numpy."""
    loop = TrainLoop(ctx, epochs=config.epochs, seed=config.seed, checkpoint="model")
    x = torch.randn(64, 5)
    y = x @ torch.arange(5.0) + 0.1 * torch.randn(64)
    net = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.7)
    loop.resume(modules={"net": net}, optimizers=[optimizer], schedulers=[schedule])
    for _ in loop.epochs():
        net.train()
        for idx in loop.batches(len(x), config.batch_size):
            jitter = random.gauss(0.0, 0.01) + float(np.random.normal(0.0, 0.01))
            loss = F.mse_loss(net(x[idx]).squeeze(1) + jitter, y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            ctx.log_metrics(loop.step, step_loss=loss.item(), lr=schedule.get_last_lr()[0])
            loop.track(len(idx), train_loss=loss)
            time.sleep(config.step_sleep_s)
        net.eval()
        loop.end_epoch(evaluate=lambda: {"val_loss": F.mse_loss(net(x).squeeze(1), y)}, metadata={"kind": "fit"})
    return loop.final_metrics


def _load_tiny(split: str, root: Path, **options):
    return {"train": random_dataset(64, num_classes=4, seed=0), "val": random_dataset(32, num_classes=4, seed=1)}[split]


@hookimpl
def register_methods(register) -> None:
    register(Method(slug="looptest", title="Loop test", paper="-", summary="TrainLoop resume tests.",
                    recipes=[Recipe("fit", FitConfig, train_fit)]))


@hookimpl
def register_datasets(register) -> None:
    register(DatasetSpec(name="tinyrandom", title="Tiny random", task="classification", description="64 images",
                         load=_load_tiny, labels=[f"c{i}" for i in range(4)], splits=("train", "val")))


def _registry():
    return load_registry(plugins="", extra_plugins=(__name__,))


# -- through the worker: kill, requeue, resume ----------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, str]:
    return {name: str(tmp_path / name) for name in ("data_dir", "runs_dir", "assets_dir")}


pytestmark = pytest.mark.usefixtures("one_thread")  # small nets: one thread is fastest and repeatable


def _execute(store, store_url, dirs, run_id: int) -> str:
    assert store.claim_run(run_id, "inline", host="h", pid=os.getpid()) is not None
    return execute_run(store_url, run_id, _registry, **dirs, device="cpu")


def _killed_at(monkeypatch, call: int):
    """Make the run die (KeyboardInterrupt, as Ctrl-C) at its ``call``-th should_stop check, i.e. mid-step."""
    calls = {"n": 0}
    original = RunContext.should_stop

    def should_stop(self, *, fresh: bool = False) -> bool:
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(self, fresh=fresh)

    monkeypatch.setattr(RunContext, "should_stop", should_stop)


def _history(store, run_id: int) -> dict[tuple[str, int], list[float]]:
    history: dict[tuple[str, int], list[float]] = defaultdict(list)
    for point in store.metrics(run_id):
        history[(point.key, point.step)].append(point.value)
    return dict(history)


def _assert_same_trajectory(store, straight: int, resumed: int) -> None:
    expected, got = _history(store, straight), _history(store, resumed)
    assert set(got) == set(expected)
    for key, values in got.items():
        # A step logged before the kill and again after the resume must log the same value both times.
        assert values == pytest.approx([expected[key][0]] * len(values), rel=1e-5, abs=1e-7), key


def _kill_and_resume(store, store_url, dirs, monkeypatch, method: str, recipe: str, config: dict,
                     kill_at_call: int) -> tuple[int, int]:
    straight = store.enqueue(method, recipe, config, device="cpu")
    assert _execute(store, store_url, dirs, straight) == "succeeded"
    killed = store.enqueue(method, recipe, config, device="cpu")
    with monkeypatch.context() as patch:
        _killed_at(patch, kill_at_call)
        with pytest.raises(KeyboardInterrupt):
            _execute(store, store_url, dirs, killed)
    assert store.get_run(killed).status == "interrupted"
    store.requeue_for_resume(killed)
    assert _execute(store, store_url, dirs, killed) == "succeeded"
    return straight, killed


def test_a_killed_run_resumes_on_the_same_trajectory(store, store_url, dirs, monkeypatch):
    config = {"epochs": 4, "batch_size": 8}  # 8 steps per epoch: call 21 is step 5 of epoch 3
    straight, killed = _kill_and_resume(store, store_url, dirs, monkeypatch, "looptest", "fit", config, 21)
    history = _history(store, killed)
    # epochs 1-4, then the final metrics the worker logs at the last step
    assert sorted(step for key, step in history if key == "val_loss") == [1, 2, 3, 4, 31]
    assert len(history[("step_loss", 20)]) in (1, 2)  # logged before the kill (if flushed), then again
    _assert_same_trajectory(store, straight, killed)
    a = load_checkpoint(Path(dirs["runs_dir"]) / str(straight) / "model.safetensors")
    b = load_checkpoint(Path(dirs["runs_dir"]) / str(killed) / "model.safetensors")
    assert b.metadata == {**a.metadata} and b.metadata["epoch"] == 4
    assert all(torch.allclose(a.tensors[k], b.tensors[k], atol=1e-6) for k in a.tensors)


def test_blockdrop_backbone_resumes_exactly(store, store_url, dirs, monkeypatch):
    config = {"dataset": "tinyrandom", "depth": 8, "epochs": 3, "batch_size": 16, "lr": 0.05}
    # 4 steps per epoch: call 10 is the second step of epoch 3.
    straight, killed = _kill_and_resume(store, store_url, dirs, monkeypatch, "blockdrop", "backbone", config, 10)
    assert sorted(step for key, step in _history(store, killed) if key == "accuracy")[:3] == [1, 2, 3]
    _assert_same_trajectory(store, straight, killed)
    a = load_checkpoint(Path(dirs["runs_dir"]) / str(straight) / "backbone.safetensors")
    b = load_checkpoint(Path(dirs["runs_dir"]) / str(killed) / "backbone.safetensors")
    assert all(torch.allclose(a.tensors[k], b.tensors[k], atol=1e-5) for k in a.tensors)


def test_a_run_killed_with_sigkill_resumes_on_the_same_trajectory(tmp_path):
    """The real thing: `avstudio train` killed with SIGKILL mid-epoch, then `avstudio runs resume --inline`."""
    from app.settings import REPO_ROOT
    from trainer.store import RunStore

    env = {k: v for k, v in os.environ.items() if not k.startswith("AVSTUDIO_")}
    env.update(AVSTUDIO_HOME=str(tmp_path / "home"), AVSTUDIO_PLUGINS="", AVSTUDIO_EXTRA_PLUGINS=__name__,
               AVSTUDIO_DEVICE="cpu", AVSTUDIO_THREADS="1", PYTHONPATH=str(REPO_ROOT))

    def avstudio(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=180)

    straight = avstudio("train", "looptest", "fit", "--set", "epochs=4")
    assert straight.returncode == 0, straight.stderr
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "train", "looptest", "fit", "--set", "epochs=4",
                             "--set", "step_sleep_s=0.1"], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = RunStore(f"sqlite:///{tmp_path / 'home' / 'runs.db'}")
    try:
        state = tmp_path / "home" / "runs" / "2" / "resume-state.safetensors"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (state.is_file() and _logged_steps(store, 2) >= 12):
            time.sleep(0.05)
        assert state.is_file(), "the run did not reach the end of its first epoch"
        proc.send_signal(signal.SIGKILL)  # mid-epoch 2: no chance to clean up
        proc.wait(timeout=30)
        assert store.get_run(2).status == "running"  # nobody could record the end
        marked = avstudio("worker", "--exit-when-idle")  # a worker notices the dead process
        assert marked.returncode == 0, marked.stderr
        assert store.get_run(2).status == "interrupted"
        resumed = avstudio("runs", "resume", "2", "--inline")
        assert resumed.returncode == 0, resumed.stderr
        assert store.get_run(2).status == "succeeded" and store.get_run(2).resume_count == 1
        _assert_same_trajectory(store, 1, 2)
    finally:
        proc.kill()
        store.close()


def _logged_steps(store, run_id: int) -> int:
    try:
        return len({p.step for p in store.metrics(run_id, ["step_loss"])})
    except Exception:  # the run is not in the store yet
        return 0


# -- TrainLoop on its own -------------------------------------------------------------------------------


def _toy(seed: int = 0) -> tuple[nn.Module, list[torch.optim.Optimizer], list]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    optimizers = [torch.optim.SGD(net[0].parameters(), lr=0.1, momentum=0.9, nesterov=True),
                  torch.optim.Adam([*net[1].parameters(), *net[2].parameters()], lr=1e-2, betas=(0.8, 0.9))]
    schedulers = [torch.optim.lr_scheduler.StepLR(optimizers[0], step_size=2, gamma=0.5)]
    return net, optimizers, schedulers


def _epochs(loop: TrainLoop, net: nn.Module, optimizers, schedulers, x: torch.Tensor) -> None:
    for _ in loop.epochs():
        for idx in loop.batches(len(x), 4):
            loss = net(x[idx]).pow(2).mean()
            for opt in optimizers:
                opt.zero_grad()
            loss.backward()
            for opt in optimizers:
                opt.step()
            for schedule in schedulers:
                schedule.step()
            loop.track(len(idx), loss=loss)
        loop.end_epoch(metadata={"kind": "toy"})


def test_optimiser_schedule_and_counters_round_trip(tmp_path):
    ctx = FakeTrainContext(tmp_path)
    net, optimizers, schedulers = _toy()
    loop = TrainLoop(ctx, epochs=2, seed=3, checkpoint="toy")
    assert loop.resume(modules={"net": net}, optimizers=optimizers, schedulers=schedulers) is False
    _epochs(loop, net, optimizers, schedulers, torch.randn(12, 3))
    assert (loop.epoch, loop.step, ctx.states_saved) == (2, 6, 2)
    assert [step for step, _ in ctx.metrics] == [1, 2] and set(ctx.metrics[0][1]) == {"loss"}
    assert ctx.load_checkpoint("x/toy").metadata == {"kind": "toy", "epoch": 2, "metrics": loop.final_metrics}

    ctx.resuming = True
    net2, optimizers2, schedulers2 = _toy(seed=1)  # other weights: everything must come from the state
    again = TrainLoop(ctx, epochs=5, seed=3, checkpoint="toy")
    assert again.resume(modules={"net": net2}, optimizers=optimizers2, schedulers=schedulers2) is True
    assert (again.epoch, again.step, again.final_metrics) == (2, 6, loop.final_metrics)
    for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for opt, opt2 in zip(optimizers, optimizers2, strict=True):
        s, s2 = opt.state_dict(), opt2.state_dict()
        assert s["param_groups"] == s2["param_groups"] and s["state"].keys() == s2["state"].keys()
        for key, state in s["state"].items():
            assert all(torch.equal(value, s2["state"][key][name]) for name, value in state.items())
    assert schedulers[0].state_dict() == schedulers2[0].state_dict()
    assert optimizers2[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_rng_states_are_restored(tmp_path):
    ctx = FakeTrainContext(tmp_path)
    net, optimizers, _ = _toy()
    loop = TrainLoop(ctx, epochs=1, seed=7, checkpoint="toy")
    loop.resume(modules={"net": net}, optimizers=optimizers)
    _epochs(loop, net, optimizers, [], torch.randn(8, 3))

    def draws(generator: torch.Generator) -> tuple:
        return (torch.rand(3).tolist(), torch.randperm(10, generator=generator).tolist(), random.random(),
                float(np.random.rand()))

    expected = draws(loop.generator)
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    ctx.resuming = True
    again = TrainLoop(ctx, epochs=1, seed=7, checkpoint="toy")
    fresh = draws(again.generator)
    again = TrainLoop(ctx, epochs=1, seed=7, checkpoint="toy")
    again.resume(modules={"net": _toy()[0]}, optimizers=_toy()[1])
    assert draws(again.generator) == expected != fresh
    assert list(again.epochs()) == []  # every epoch done: nothing left to run


def test_should_stop_ends_the_epoch_within_a_step(tmp_path):
    ctx = FakeTrainContext(tmp_path, stop_after=3)
    net, optimizers, _ = _toy()
    loop = TrainLoop(ctx, epochs=5, seed=0, checkpoint="toy")
    loop.resume(modules={"net": net}, optimizers=optimizers)
    seen = []
    for epoch in loop.epochs():
        for idx in loop.batches(40, 4):
            seen.append((epoch, len(idx)))
        assert loop.end_epoch() == {}
    assert seen == [(0, 4)] * 3 and ctx.stop_calls == 4 and loop.stopped and loop.step == 3
    assert ctx.metrics == [] and ctx.saved == {} and ctx.states_saved == 0 and loop.final_metrics == {}
    assert ctx.bars[0].count == 3


def test_loop_misuse_is_explained(tmp_path):
    loop = TrainLoop(FakeTrainContext(tmp_path), epochs=2, seed=0, checkpoint="toy")
    with pytest.raises(RuntimeError, match="resume"):
        next(loop.epochs())
    loop.resume(modules={"net": nn.Linear(2, 2)})
    with pytest.raises(RuntimeError, match="end_epoch"):
        for _ in loop.epochs():
            pass


def test_batches_shuffle_and_drop_the_last_partial_batch(tmp_path):
    loop = TrainLoop(FakeTrainContext(tmp_path), epochs=1, seed=0, checkpoint="toy")
    batches = list(loop.batches(10, 4))
    assert [len(b) for b in batches] == [4, 4] == [4] * loop.num_batches(10, 4)
    assert len(set(torch.cat(batches).tolist())) == 8 and torch.cat(batches).tolist() != list(range(8))
    assert [len(b) for b in loop.batches(3, 8)] == [3] and TrainLoop.num_batches(3, 8) == 1


def test_nested_state_flattens_to_tensors_and_json():
    tensors: dict[str, torch.Tensor] = {}
    value = {"state": {0: {"step": torch.tensor(3.0), "buf": torch.ones(2)}}, "betas": (0.9, 0.99),
             "best": math.inf, "groups": [{"params": [0, 1], "lr": 0.1}], "arr": np.arange(4, dtype=np.uint32)}
    skeleton = flatten(value, "optimizer.0", tensors)
    assert set(tensors) == {"optimizer.0.state.0.step", "optimizer.0.state.0.buf", "optimizer.0.arr"}
    import json

    back = unflatten(json.loads(json.dumps(skeleton)), tensors)
    assert back["betas"] == (0.9, 0.99) and back["best"] == math.inf and back["groups"] == value["groups"]
    assert list(back["state"]) == [0] and torch.equal(back["state"][0]["buf"], torch.ones(2))
    assert back["arr"].dtype == np.uint32 and back["arr"].tolist() == [0, 1, 2, 3]
