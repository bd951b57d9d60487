"""One run over several processes: ``avstudio train … --nproc 2`` (torchrun, gloo on the CPU).

The recipe (tests/plugins_for_tests/ddp_plugin.py) is a TrainLoop regression whose MLP has no batch
statistics, so two processes with the global batch must end where one process does: that is what shows
the gradients are averaged (and the shards are the right ones), not merely that the processes agree.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from app.plugin_manager import load_registry
from trainer.checkpoints import load_checkpoint
from trainer.execution import execute_run
from trainer.loop import TrainLoop
from trainer.store import RunStatus, RunStore

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "tests.plugins_for_tests.ddp_plugin"
# float32, and the two orders of summing one batch (a mean of two half-batch means against one mean)
# differ in the last bits; after 48 SGD steps the weights agree to ~1e-7. A batch of 8 instead of 16
# moves them by more than 1e-2 (checked below), so 1e-5 tells the two apart by three orders of magnitude.
TOLERANCE = 1e-5


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVSTUDIO_")}
    return {**env, "AVSTUDIO_HOME": str(home), "AVSTUDIO_PLUGINS": "", "AVSTUDIO_EXTRA_PLUGINS": PLUGIN,
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def _avstudio(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", "--device", "cpu", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _one_process(tmp_path: Path, **config) -> dict[str, torch.Tensor]:
    """The same recipe in this process (no torch.distributed): its final weights, seen indices, metrics."""
    store_url = f"sqlite:///{tmp_path / 'single.db'}"
    store = RunStore(store_url)
    dump = tmp_path / f"single-{config['batch_size']}"
    run_id = store.enqueue("ddpfit", "fit", {**config, "dump_dir": str(dump)}, device="cpu")
    store.claim_run(run_id, "test", host="h", pid=os.getpid())
    dirs = {name: str(tmp_path / name) for name in ("data_dir", "runs_dir", "assets_dir")}
    torch.set_num_threads(1)
    status = execute_run(store_url, run_id, lambda: load_registry(plugins="", extra_plugins=(PLUGIN,)),
                         device="cpu", **dirs)
    assert status == RunStatus.SUCCEEDED
    metrics = {(p.key, p.step): p.value for p in store.metrics(run_id)}
    store.close()
    return {**load_file(str(dump / "rank0.safetensors")), "metrics": metrics}


@pytest.mark.slow  # 68-110 s on the busy 2-core machine (four Python processes start torch)
def test_two_processes_train_one_run_as_one_process_with_the_same_global_batch(tmp_path):
    home, dump = tmp_path / "home", tmp_path / "dump"
    result = _avstudio("train", "ddpfit", "fit", "--nproc", "2", "--set", f"dump_dir={dump}", env=_env(home))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "succeeded" in result.stdout and "(2 processes)" in result.stdout

    store = RunStore(f"sqlite:///{home / 'runs.db'}")
    (run,) = store.list_runs()  # one run row, though two processes trained it
    assert run.status == RunStatus.SUCCEEDED and (run.method, run.recipe) == ("ddpfit", "fit")
    points = store.metrics(run.id)
    keys_steps = [(p.key, p.step) for p in points]
    assert len(keys_steps) == len(set(keys_steps))  # rank 1 logged nothing: no point twice
    assert sorted(set(keys_steps)) == sorted((k, s) for k in ("mse", "train_loss") for s in (1, 2, 3))
    (artifact,) = store.artifacts(run.id)
    checkpoint = load_checkpoint(artifact.path)  # a checkpoint that loads, with rank 0's final weights
    assert checkpoint.metadata["epoch"] == 3 and checkpoint.metadata["kind"] == "fit"

    rank0, rank1 = load_file(str(dump / "rank0.safetensors")), load_file(str(dump / "rank1.safetensors"))
    weights = [k for k in rank0 if k.startswith("net.")]
    for key in weights:
        assert torch.equal(checkpoint.tensors[key], rank0[key])
        assert torch.equal(rank0[key], rank1[key]), key  # the ranks never drifted apart

    # each rank trained on its half of every batch: equal shards, disjoint, together every sample once per epoch
    seen0, seen1 = rank0["seen"].view(3, 16, 8), rank1["seen"].view(3, 16, 8)
    for epoch in range(3):
        both = torch.cat([seen0[epoch].flatten(), seen1[epoch].flatten()])
        assert sorted(both.tolist()) == list(range(256))

    single = _one_process(tmp_path, batch_size=16)
    assert torch.equal(torch.stack([seen0, seen1], -1).flatten(), single["seen"])  # the same batches, split in two
    gap = max(float((rank0[k] - single[k]).abs().max()) for k in weights)
    assert gap < TOLERANCE, f"weights differ by {gap:.2e} from one process with the same global batch"
    other_batch = _one_process(tmp_path, batch_size=8)
    assert max(float((other_batch[k] - single[k]).abs().max()) for k in weights) > 1e-2  # the tolerance can fail
    for point in points:  # rank 0 logged the means over both ranks' samples
        assert point.value == pytest.approx(single["metrics"][(point.key, point.step)], rel=1e-4)


def test_nproc_refuses_what_cannot_work_before_a_run_exists(tmp_path, monkeypatch):
    from app import cli

    for name in [k for k in os.environ if k.startswith("AVSTUDIO_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AVSTUDIO_HOME", str(tmp_path))
    monkeypatch.setenv("AVSTUDIO_PLUGINS", "")
    monkeypatch.setenv("AVSTUDIO_EXTRA_PLUGINS", PLUGIN)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cases = {("--device", "mps"): "--nproc runs on cpu or cuda (one process per GPU), not 'mps'",
             ("--device", "cuda"): "--nproc with --device cuda: no CUDA GPU here; use --device cpu",
             ("--device", "cpu", "--detach"): "--nproc trains in the foreground"}
    for options, message in cases.items():
        result = CliRunner().invoke(cli.cli, ["train", "ddpfit", "fit", "--nproc", "2", *options])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1].startswith(f"Error: {message}")
    assert RunStore(f"sqlite:///{tmp_path / 'runs.db'}").list_runs() == []


@pytest.mark.parametrize(("status", "exit_code"), [(RunStatus.FAILED, 1), (RunStatus.INTERRUPTED, 128 + 15),
                                                   (RunStatus.CANCELLED, 130), (RunStatus.SUCCEEDED, 0)])
def test_nproc_exits_as_a_one_process_run_does_after_a_stop_signal(tmp_path, monkeypatch, status, exit_code):
    """A SIGTERM came (torchrun was told to stop), but how the run ended decides the exit code: 128 + signal
    only for an interrupted run, as ``_run_inline`` does; a run that failed meanwhile exits 1."""
    from app import cli
    from trainer import distributed

    for name in [k for k in os.environ if k.startswith("AVSTUDIO_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AVSTUDIO_HOME", str(tmp_path))
    monkeypatch.setenv("AVSTUDIO_PLUGINS", "")
    monkeypatch.setenv("AVSTUDIO_EXTRA_PLUGINS", PLUGIN)

    def ends_as(store, run_id, **_):
        store.claim_run(run_id, "test", host="h", pid=os.getpid())
        store.finish(run_id, status, error=None if status == RunStatus.SUCCEEDED else "a rank said so")
        return signal.SIGTERM

    monkeypatch.setattr(distributed, "launch_run", ends_as)
    result = CliRunner().invoke(cli.cli, ["train", "ddpfit", "fit", "--nproc", "2", "--device", "cpu"])
    assert result.exit_code == exit_code, result.output
    assert f"run 1 {status} on cpu (2 processes)" in result.output


def test_a_batch_that_does_not_split_evenly_over_the_processes_is_refused(tmp_path):
    from tests.blockdrop_fakes import FakeTrainContext

    loop = TrainLoop(FakeTrainContext(tmp_path), epochs=1, seed=0, checkpoint="model")
    loop.resume(modules={})
    loop.world_size = 2  # as under torchrun (the error comes before any collective)
    with pytest.raises(ValueError, match="batch size 15 does not split evenly over 2 processes: use a multiple of 2"):
        next(loop.batches(100, 15))


@pytest.mark.slow
def test_sigterm_interrupts_every_process_and_the_run_ends_interrupted(tmp_path):
    home = tmp_path / "home"
    env = _env(home)
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "--device", "cpu", "train", "ddpfit", "fit",
                                "--nproc", "2", "--set", "epochs=400", "--set", "num_train=4096"],
                               env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = RunStore(f"sqlite:///{home / 'runs.db'}")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # until rank 0 saved an epoch
        runs = store.list_runs()
        if runs and store.artifacts(runs[0].id):
            break
        time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("the run saved no checkpoint in time")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    (run,) = store.list_runs()
    assert run.status == RunStatus.INTERRUPTED and "SIGTERM" in run.error


# Every recipe of every built-in plugin, unchanged, with two processes: tiny budgets (one or two epochs);
# a chain where one recipe needs another's checkpoint. The tree's λ is huge so that its widening does not
# hang on the two ranks' task affinities (a mid λ decides from them: see docs/plugins.md).
TINY_GAN = "width=4 hidden=16 experts=6 latent_dim=8 gen_width=4 dataset=shapes train_size=128 steps=4 batch_size=16 sample_every=2"
MULTITASK = "dataset_options=num_train=128,num_val=64,num_test=8 train_size=128 val_size=64 batch_size=32"
BUILT_IN_RECIPES = [
    ("blockdrop", "backbone", "depth=8 epochs=1 batch_size=32 num_train=256"),
    ("blockdrop", "policy", "backbone=run:{blockdrop/backbone}/backbone epochs=1 batch_size=32 num_train=256 cl_step_iters=2"),
    ("blockdrop", "finetune", "policy=run:{blockdrop/policy}/policy epochs=1 batch_size=32 num_train=256 gamma=2"),
    ("s3pool", "classifier", "depth=8 width=8 train_size=256 val_size=64 steps=8 batch_size=32"),
    ("vgan", "vgan", TINY_GAN), ("vgan", "vcd", TINY_GAN), ("vgan", "gan", TINY_GAN),
    ("multitask", "wide", f"{MULTITASK} epochs=2 widths=4,8,8,8,16,16,16"),
    ("multitask", "tree", f"{MULTITASK} epochs=3 divisor=2 widen_after=1 lam=0.5 wide=run:{{multitask/wide}}/wide"),
]


@pytest.mark.slow
def test_every_built_in_recipe_runs_unchanged_with_two_processes(tmp_path):
    env = {**_env(tmp_path / "home"), "AVSTUDIO_EXTRA_PLUGINS": ""}
    runs: dict[str, int] = {}
    for method, recipe, settings in BUILT_IN_RECIPES:
        for key, run_id in runs.items():  # run:{blockdrop/backbone} -> run:7
            settings = settings.replace("{" + key + "}", str(run_id))
        sets = [a for item in settings.split() for a in ("--set", item)]
        result = _avstudio("train", method, recipe, "--nproc", "2", *sets, env=env, timeout=900)
        assert result.returncode == 0, f"{method}/{recipe}: {result.stderr[-3000:]}"
        store = RunStore(f"sqlite:///{tmp_path / 'home' / 'runs.db'}")
        newest = store.list_runs(limit=1)[0]
        assert (newest.method, newest.recipe, newest.status) == (method, recipe, RunStatus.SUCCEEDED)
        assert store.artifacts(newest.id, kind="checkpoint"), f"{method}/{recipe} saved no checkpoint"
        keys_steps = [(p.key, p.step) for p in store.metrics(newest.id)]
        assert len(keys_steps) == len(set(keys_steps)), f"{method}/{recipe}: a metric point logged twice"
        store.close()
        runs[f"{method}/{recipe}"] = newest.id
    assert len(runs) == len(BUILT_IN_RECIPES)
