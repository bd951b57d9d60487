"""TrainLoop on an accelerator (docs/gpu.md): mixed precision, data on the device, channels-last, torch.compile.

On the CPU: the settings, bf16 autocast (it runs on the CPU) through the real worker path — a run trains,
resumes exactly in the precision it was saved with, and its checkpoint is float32 — the fp16 gradient
scaler's state in the resume state, and that with AMP off the loop's step is the plain step to the bit.
The ``test_cuda_*`` tests need a GPU (they skip without one); ``benchmarks/gpu.py`` runs every one of them.

This module is also a small plugin (``register_methods``): a conv net trained through the loop's API.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from app.api import ConfigError, Method, Recipe, config_field, hookimpl
from app.api.training import TrainLoop, load_checkpoint, load_module_tensors
from app.testing import open_test_studio
from tests.blockdrop_fakes import FakeTrainContext
from tests.trajectories import assert_same_trajectory
from trainer import amp as amp_settings
from trainer.amp import Precision, check_amp, fits_on_device, resolve_amp, use_channels_last, use_compile

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytestmark = pytest.mark.usefixtures("one_thread")

# -- the plugin: a tiny conv net whose step goes through the loop's accelerator API ---------------------------


def conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.1),
                         nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 2))


def conv_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    bright = torch.randint(0, 2, (n,), generator=g)
    images = (torch.randint(0, 160, (n, 3, 8, 8), generator=g) + 90 * bright.view(n, 1, 1, 1)).to(torch.uint8)
    return images, bright


@dataclass
class ConvConfig:
    epochs: int = config_field(3, "epochs", min=1)
    batch_size: int = config_field(16, "batch size", min=1)
    lr: float = config_field(0.1, "SGD learning rate", min=0)
    seed: int = config_field(0, "random seed")


def train_conv(config: ConvConfig, ctx) -> dict[str, float]:
    loop = TrainLoop(ctx, epochs=config.epochs, seed=config.seed, checkpoint="model")
    net = conv_net().to(loop.device)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=0.9)
    loop.resume(modules={"net": net}, optimizers=[optimizer])
    images, targets = loop.to_device(*conv_data())
    forward = loop.compiled(net)

    def evaluate() -> dict[str, float]:
        return {"val_loss": F.cross_entropy(net(images.to(loop.device).float() / 255), targets.to(loop.device))}

    for _ in loop.epochs():
        net.train()
        for idx in loop.batches(len(images), config.batch_size):
            x, y = loop.take(images, idx).float() / 255, loop.take(targets, idx)
            with loop.autocast():
                logits = forward(x)
            loss = F.cross_entropy(logits.float(), y)
            loop.minimize(loss, optimizer)
            ctx.log_metrics(loop.step, step_loss=loss.item())
            loop.track(len(idx), train_loss=loss)
        net.eval()
        loop.end_epoch(evaluate=evaluate, metadata={"kind": "conv"})
    return loop.final_metrics


@hookimpl
def register_methods(register) -> None:
    register(Method(slug="amptest", title="AMP test", paper="-", summary="TrainLoop precision tests.",
                    recipes=[Recipe("fit", ConvConfig, train_conv)]))


def _last_by_step(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """One value per step (a resumed run logs the steps of its unfinished epoch again), in step order."""
    return sorted(dict(points).items())


# -- settings --------------------------------------------------------------------------------------------------


def test_precision_settings_and_their_defaults(monkeypatch):
    monkeypatch.delenv("AVSTUDIO_AMP", raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert check_amp(None) == "auto" and check_amp(" BF16 ") == "bf16" and check_amp("float16") == "fp16"
    assert resolve_amp("auto", cpu) == "off" and resolve_amp("bf16", cpu) == "bf16" and resolve_amp("fp16", cpu) == "fp16"
    monkeypatch.setenv("AVSTUDIO_AMP", "fp16")
    assert resolve_amp(None, cpu) == "fp16" and resolve_amp("off", cpu) == "off"  # the argument wins
    with pytest.raises(ConfigError, match="unknown precision 'fp8'.*auto, off, bf16, fp16"):
        check_amp("fp8")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_amp("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)  # pre-Ampere
    assert resolve_amp("auto", cuda) == "off" and resolve_amp("fp16", cuda) == "fp16"
    with pytest.raises(ConfigError, match="no bfloat16.*use fp16 or off"):
        resolve_amp("bf16", cuda)


def test_layout_compile_and_data_settings(monkeypatch):
    for name in ("AVSTUDIO_CHANNELS_LAST", "AVSTUDIO_COMPILE"):
        monkeypatch.delenv(name, raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_channels_last(None, cpu, "bf16") and use_channels_last(None, cuda, "bf16")
    assert not use_channels_last(None, cuda, "off") and use_channels_last(True, cpu, "off")
    monkeypatch.setenv("AVSTUDIO_CHANNELS_LAST", "off")
    assert not use_channels_last(None, cuda, "bf16")
    assert not use_compile(None) and use_compile("on") and use_compile(True)
    monkeypatch.setenv("AVSTUDIO_COMPILE", "1")
    assert use_compile(None) and not use_compile(False)
    with pytest.raises(ConfigError, match="AVSTUDIO_COMPILE: use on, off or auto"):
        use_compile("sometimes")
    # data goes to a GPU when it takes at most half of the free memory; a CPU always holds it
    assert fits_on_device(10**12, torch.device("cpu")) and fits_on_device(500, cuda, free=1000)
    assert not fits_on_device(501, cuda, free=1000)
    assert amp_settings.DATA_FRACTION == 0.5


# -- AMP off: the plain step, to the bit -------------------------------------------------------------------------


def test_with_amp_off_the_loop_step_is_the_plain_step(tmp_path):
    images, targets = conv_data(32)
    torch.manual_seed(0)
    plain = conv_net()
    through_loop = copy.deepcopy(plain)
    opt_a = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(through_loop.parameters(), lr=0.1, momentum=0.9)
    loop = TrainLoop(FakeTrainContext(tmp_path), epochs=1, seed=0, checkpoint="net", amp="off")
    loop.resume(modules={"net": through_loop}, optimizers=[opt_b])
    on_device = loop.to_device(images, targets)
    assert loop.amp == "off" and loop.data_on_device and on_device[0] is images and loop.compiled(plain) is plain
    for step in range(3):
        idx = torch.arange(step * 8, step * 8 + 8)
        torch.manual_seed(step)
        loss = F.cross_entropy(plain(images[idx].float() / 255), targets[idx])
        opt_a.zero_grad(set_to_none=True)
        loss.backward()
        opt_a.step()
        torch.manual_seed(step)
        with loop.autocast():
            logits = through_loop(loop.take(on_device[0], idx).float() / 255)
        loop.minimize(F.cross_entropy(logits.float(), loop.take(on_device[1], idx)), opt_b)
    for a, b in zip(plain.state_dict().values(), through_loop.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# -- bf16 on the CPU, through the worker: trains, resumes exactly, checkpoints in float32 -------------------------


def test_a_bf16_run_trains_resumes_exactly_and_its_checkpoint_is_float32(tmp_path, monkeypatch):
    import tests.test_amp as this

    monkeypatch.setenv("AVSTUDIO_AMP", "bf16")
    with open_test_studio(tmp_path, [this]) as studio:
        straight = studio.train("amptest", "fit", {"epochs": 3})
        assert straight.status == "succeeded", straight.error
        losses = [v for _, v in straight.metrics["train_loss"]]
        assert losses[-1] < losses[0]  # it learns
        killed = studio.train("amptest", "fit", {"epochs": 3}, interrupt_after=7)  # step 3 of epoch 2
        assert killed.status == "interrupted"
        monkeypatch.setenv("AVSTUDIO_AMP", "off")  # ignored on resume: the run keeps its saved precision
        resumed = studio.resume(killed.run_id)
        assert resumed.status == "succeeded", resumed.error
        for key in ("train_loss", "val_loss", "step_loss"):
            assert_same_trajectory(_last_by_step(resumed.metrics[key]), _last_by_step(straight.metrics[key]),
                                   rel=1e-6, label=key)
        state = load_checkpoint(studio.settings.runs_dir / str(resumed.run_id) / "resume-state.safetensors")
        assert state.metadata["amp"] == {"mode": "bf16", "scaler": None}
        a, b = (load_checkpoint(result.checkpoints["model"]) for result in (straight, resumed))
    assert a.metadata["amp"] == b.metadata["amp"] == "bf16" and a.metadata["epoch"] == 3
    assert {t.dtype for t in a.tensors.values() if t.is_floating_point()} == {torch.float32}
    for key, tensor in a.tensors.items():
        assert torch.equal(tensor, b.tensors[key]), key
    net = load_module_tensors(conv_net(), a.tensors, "net").eval()  # a float32 model, used without autocast
    images, targets = conv_data()
    with torch.no_grad():
        val_loss = F.cross_entropy(net(images.float() / 255), targets).item()
    assert net[0].weight.dtype == torch.float32
    assert val_loss == pytest.approx(straight.metrics["val_loss"][-1][1], rel=1e-5)  # the run's own evaluation


def test_a_state_saved_before_amp_resumes_in_float32(tmp_path):
    ctx = FakeTrainContext(tmp_path)
    loop = TrainLoop(ctx, epochs=1, seed=0, checkpoint="net", amp="off")
    net = conv_net()
    loop.resume(modules={"net": net}, optimizers=[torch.optim.SGD(net.parameters(), lr=0.1)])
    tensors, meta = loop.state()
    assert meta["amp"] == {"mode": "off", "scaler": None}
    del meta["amp"]
    ctx.save_state(tensors, meta)
    ctx.resuming = True
    again = TrainLoop(ctx, epochs=2, seed=0, checkpoint="net", amp="bf16")
    net = conv_net()
    assert again.resume(modules={"net": net}, optimizers=[torch.optim.SGD(net.parameters(), lr=0.1)])
    assert again.amp == "off"


# -- fp16: the gradient scaler -------------------------------------------------------------------------------------


def _fit(loop: TrainLoop, net: nn.Module, optimizer: torch.optim.Optimizer, scale_loss: float = 1.0) -> None:
    images, targets = loop.to_device(*conv_data(32))
    for _ in loop.epochs():
        for idx in loop.batches(len(images), 8):
            with loop.autocast():
                logits = net(loop.take(images, idx).float() / 255)
            loop.minimize(F.cross_entropy(logits.float(), loop.take(targets, idx)) * scale_loss, optimizer,
                          max_grad_norm=10.0)
            loop.track(len(idx), loss=logits.float().mean())
        loop.end_epoch()


def test_the_fp16_scaler_state_is_in_the_resume_state(tmp_path):
    ctx = FakeTrainContext(tmp_path)
    loop = TrainLoop(ctx, epochs=1, seed=0, checkpoint="net", amp="fp16")
    torch.manual_seed(0)
    net = conv_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    loop.resume(modules={"net": net}, optimizers=[optimizer])
    loop.precision.scaler.load_state_dict({**loop.precision.scaler.state_dict(), "growth_interval": 3})
    _fit(loop, net, optimizer)
    saved = loop.precision.scaler.state_dict()
    assert loop.amp == "fp16" and saved["scale"] == 2.0**17 and saved["_growth_tracker"] == 1  # grew once in 4 steps
    assert torch.isfinite(torch.cat([p.flatten() for p in net.parameters()])).all()

    ctx.resuming = True
    again = TrainLoop(ctx, epochs=2, seed=0, checkpoint="net", amp="bf16")  # the saved fp16 wins
    net2 = conv_net()
    again.resume(modules={"net": net2}, optimizers=[torch.optim.SGD(net2.parameters(), lr=0.05)])
    assert again.amp == "fp16" and again.precision.scaler.state_dict() == saved


def test_an_fp16_step_with_an_overflow_is_skipped_and_the_scale_lowered(tmp_path):
    loop = TrainLoop(FakeTrainContext(tmp_path), epochs=1, seed=0, checkpoint="net", amp="fp16")
    net = conv_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    loop.resume(modules={"net": net}, optimizers=[optimizer])
    before = copy.deepcopy(net.state_dict())
    x = torch.rand(4, 3, 8, 8)
    with loop.autocast():
        logits = net(x)
    loop.minimize(logits.float().sum() * 1e35, optimizer)  # × 65536: inf gradients in any precision
    assert loop.precision.scaler.get_scale() == 2.0**15
    for key, value in net.state_dict().items():
        if value.is_floating_point() and "running" not in key:
            assert torch.equal(value, before[key]), key


# -- data, layout, compilation --------------------------------------------------------------------------------------


def test_data_kept_in_host_memory_trains_alike(tmp_path):
    results = []
    for on_device in (True, False):
        loop = TrainLoop(FakeTrainContext(tmp_path / str(on_device)), epochs=1, seed=0, checkpoint="net",
                         data_on_device=on_device)
        torch.manual_seed(0)
        net = conv_net()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
        loop.resume(modules={"net": net}, optimizers=[optimizer])
        _fit(loop, net, optimizer)
        assert loop.data_on_device is on_device
        results.append(net.state_dict())
    for key, value in results[0].items():
        assert torch.equal(value, results[1][key]), key
    loop = TrainLoop(FakeTrainContext(tmp_path / "tiny"), epochs=1, seed=0, checkpoint="net")
    assert loop.take(torch.arange(10) * 2, torch.tensor([3, 1])).tolist() == [6, 2]


def test_channels_last_keeps_the_optimisers_parameters_and_saves_loadable_weights(tmp_path):
    ctx = FakeTrainContext(tmp_path)
    loop = TrainLoop(ctx, epochs=1, seed=0, checkpoint="net", channels_last=True, amp="bf16")
    net = conv_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    params = list(net.parameters())
    loop.resume(modules={"net": net}, optimizers=[optimizer])
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last) and not net[0].weight.is_contiguous()
    assert all(a is b for a, b in zip(net.parameters(), params, strict=True))
    assert optimizer.param_groups[0]["params"][0] is net[0].weight
    _fit(loop, net, optimizer)
    saved = load_checkpoint(ctx.saved["net"])
    fresh = load_module_tensors(conv_net(), saved.tensors, "net")
    assert torch.equal(fresh[0].weight, net[0].weight) and saved.metadata["amp"] == "bf16"


def test_compile_wraps_the_forward_only_when_asked(tmp_path):
    net = conv_net()
    assert TrainLoop(FakeTrainContext(tmp_path), epochs=1, seed=0, checkpoint="n", compile=False).compiled(net) is net
    compiled = TrainLoop(FakeTrainContext(tmp_path), epochs=1, seed=0, checkpoint="n", compile=True).compiled(net)
    assert compiled is not net and compiled._orig_mod is net  # compiled on its first call; the module is saved


def test_precision_state_refuses_another_mode():
    with pytest.raises(ValueError, match="resolve the precision first"):
        Precision("auto", torch.device("cpu"))
    with pytest.raises(ValueError, match="precision 'fp16'"):
        Precision("bf16", torch.device("cpu")).load_state_dict({"mode": "fp16", "scaler": {}})


# -- on a GPU (benchmarks/gpu.py runs these) ---------------------------------------------------------------------------


def _cuda_run(tmp_path, stop_after: int | None, **loop_options) -> tuple[FakeTrainContext, dict]:
    """Three epochs of the conv net on the GPU (stopped after ``stop_after`` steps, then resumed)."""
    ctx = FakeTrainContext(tmp_path, device="cuda", stop_after=stop_after)

    def run(epochs: int) -> TrainLoop:
        loop = TrainLoop(ctx, epochs=epochs, seed=0, checkpoint="net", **loop_options)
        torch.manual_seed(1)
        net = conv_net().to(loop.device)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        loop.resume(modules={"net": net}, optimizers=[optimizer])
        _fit(loop, net, optimizer)
        return loop

    loop = run(3)
    if stop_after is not None:
        ctx.stop_after, ctx.resuming = None, True
        loop = run(3)
    return ctx, {"metrics": dict(ctx.metrics), "weights": loop.model_tensors(), "amp": loop.amp}


@needs_cuda
@pytest.mark.parametrize("mode", ["off", "bf16", "fp16"])
def test_cuda_a_run_resumes_exactly_in_each_precision(tmp_path, mode, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    if mode == "bf16" and not amp_settings.bf16_supported(torch.device("cuda")):
        pytest.skip("this GPU has no bfloat16")
    _, straight = _cuda_run(tmp_path / "straight", None, amp=mode)
    _, resumed = _cuda_run(tmp_path / "resumed", 6, amp=mode)  # stopped in epoch 2
    assert straight["amp"] == resumed["amp"] == mode
    assert_same_trajectory(sorted(resumed["metrics"].items()), sorted(straight["metrics"].items()), rel=1e-6)
    for key, value in straight["weights"].items():
        assert value.dtype == resumed["weights"][key].dtype
        assert torch.equal(value, resumed["weights"][key]), key


@needs_cuda
def test_cuda_auto_is_bf16_on_a_gpu_that_has_it():
    device = torch.device("cuda")
    assert resolve_amp("auto", device) == ("bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "off")
    assert use_channels_last("auto", device, resolve_amp("auto", device)) == (resolve_amp("auto", device) != "off")


@needs_cuda
def test_cuda_data_in_host_memory_trains_as_data_on_the_device(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    _, on_device = _cuda_run(tmp_path / "device", None, amp="bf16")
    _, on_host = _cuda_run(tmp_path / "host", None, amp="bf16", data_on_device=False)
    for key, value in on_device["weights"].items():
        assert torch.equal(value, on_host["weights"][key]), key
    loop = TrainLoop(FakeTrainContext(tmp_path / "fit", device="cuda"), epochs=1, seed=0, checkpoint="n")
    kept = loop.to_device(torch.zeros(10, dtype=torch.uint8), free_bytes=10)  # more than half the "free" memory
    assert not loop.data_on_device and kept.device.type == "cpu"
    assert loop.take(kept, torch.tensor([1, 2], device="cuda")).device.type == "cuda"


@needs_cuda
def test_cuda_compiled_channels_last_bf16_training_saves_a_float32_checkpoint(tmp_path):
    from torch.utils._triton import has_triton

    if not has_triton():
        pytest.skip("torch.compile on a GPU needs triton (pip install triton)")
    ctx, result = _cuda_run(tmp_path, None, amp="bf16", compile=True, channels_last=True)
    saved = load_checkpoint(ctx.saved["net"])
    assert {t.dtype for t in saved.tensors.values() if t.is_floating_point()} == {torch.float32}
    net = load_module_tensors(conv_net(), saved.tensors, "net").eval()  # on the CPU, in float32
    x = conv_data()[0].float() / 255
    trained = conv_net().cuda()
    load_module_tensors(trained, result["weights"], "net").eval()
    with torch.no_grad():
        assert torch.allclose(net(x), trained(x.cuda()).cpu(), atol=1e-2)
