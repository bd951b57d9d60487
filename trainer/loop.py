"""TrainLoop: the bookkeeping every recipe needs, so a recipe is its training step and little else.

It seeds (torch, Python ``random``, numpy, and a ``torch.Generator`` for shuffling), counts epochs
and steps, checks ``ctx.should_stop()`` before every step, shows progress, logs the metrics of each
epoch and, at the end of each one, saves the user's checkpoint (``ctx.save_checkpoint``) and the
resume state (``ctx.save_state``: weights, optimisers, LR schedulers, step counter, every RNG). A
resumed run restores all of it and continues the same trajectory as a run that was never stopped::

    loop = TrainLoop(ctx, epochs=config.epochs, seed=config.seed, checkpoint="backbone")  # seeds
    net = build_net().to(loop.device)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    loop.resume(modules={"backbone": net}, optimizers=[opt])  # restores them when resuming
    total = config.epochs * loop.num_batches(len(images), config.batch_size)
    for epoch in loop.epochs():                               # starts after the last saved epoch
        net.train()
        for idx in loop.batches(len(images), config.batch_size):  # shuffled; ends early on should_stop
            set_lr(opt, cosine_lr(config.lr, loop.step, total))    # loop.step: the global step
            loss = F.cross_entropy(net(images[idx]), targets[idx])
            opt.zero_grad(); loss.backward(); opt.step()
            loop.track(len(idx), train_loss=loss)                  # epoch mean, weighted by batch size
        loop.end_epoch(evaluate=lambda: {"accuracy": accuracy(net)}, metadata={"kind": "demo"})
    return loop.final_metrics

Under ``torchrun`` (``avstudio train … --nproc N``) the same recipe trains data-parallel, with no change:
``batches`` yields this rank's shard of each global batch of ``batch_size`` (the same shuffled order on every
rank, as DistributedSampler), gradients are averaged over the ranks just before every ``optimizer.step()``,
``resume`` gives every rank rank 0's weights, tracked means are over all ranks, ``evaluate`` runs on rank 0
and its values reach every rank, a stop on any rank stops all (see :mod:`trainer.distributed`).

On an accelerator the same loop trains in mixed precision with the data on the device when the recipe's
step goes through it (see :mod:`trainer.amp` for the settings, ``AVSTUDIO_AMP`` and friends)::

    images, targets = loop.to_device(images, targets)      # once, when they fit in the device's memory
    fwd = loop.compiled(net)                                # torch.compile'd with AVSTUDIO_COMPILE=on
    for idx in loop.batches(len(images), config.batch_size):
        x, y = loop.take(images, idx), loop.take(targets, idx)  # a batch, on loop.device
        with loop.autocast():                               # bf16 / fp16 autocast, or nothing (off)
            logits = fwd(x)
        loss = F.cross_entropy(logits.float(), y)
        loop.minimize(loss, opt)                            # zero_grad, backward, step (fp16: scaled)

With AMP off (the default on a CPU) each of these does exactly what the plain code did.

Duck-typed on the TrainContext protocol (``app.api``): the trainer never imports ``app``.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from trainer import distributed
from trainer.amp import Precision, fits_on_device, resolve_amp, use_channels_last, use_compile
from trainer.checkpoints import load_module_tensors, module_tensors
from trainer.resume_state import flatten, seed_everything, seed_globals, unflatten

log = logging.getLogger(__name__)


def num_batches(n: int, batch_size: int) -> int:
    """Batches per epoch of :meth:`TrainLoop.batches`: the last partial batch is dropped when n > batch_size."""
    return max(n // min(batch_size, n), 1) if n > 0 else 0


class TrainLoop:
    """Epochs, steps, stopping, progress, metrics, checkpoints and exact resume for one recipe.

    ``checkpoint`` names the checkpoint saved at the end of every epoch: the tensors of ``modules``
    under their name (``backbone.conv1.weight``) plus the recipe's metadata, ``epoch`` and ``metrics``
    (and ``amp``, the precision, when it is not float32).

    ``amp`` (auto, off, bf16, fp16), ``compile`` and ``channels_last`` (on, off, auto) choose how the step
    uses an accelerator; None takes ``AVSTUDIO_AMP``, ``AVSTUDIO_COMPILE`` and ``AVSTUDIO_CHANNELS_LAST``
    (:mod:`trainer.amp`). ``data_on_device=False`` keeps :meth:`to_device`'s tensors in host memory.
    """

    def __init__(self, ctx: Any, *, epochs: int, seed: int, checkpoint: str, name: str | None = None,
                 amp: str | None = None, compile: bool | str | None = None, channels_last: bool | str | None = None,
                 data_on_device: bool = True) -> None:
        self.ctx = ctx
        self.num_epochs = int(epochs)
        self.checkpoint = checkpoint
        self.name = name or checkpoint
        self.device = torch.device(ctx.device)
        self.precision = Precision(resolve_amp(amp, self.device), self.device)
        self._channels_last_setting = channels_last
        self.channels_last = use_channels_last(channels_last, self.device, self.amp)
        self.compile = use_compile(compile)
        self._data_allowed = bool(data_on_device)
        self.data_on_device: bool | None = None  # after to_device(): whether the data went to the device
        self._averaged: set[int] = set()  # optimisers whose gradients minimize() already averaged (fp16)
        self.seed = int(seed)
        self.generator = seed_everything(seed)  # the same on every rank: they shuffle alike
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self._hooked: set[int] = set()  # optimisers whose step averages gradients over the ranks
        self._checked_epoch = -1  # the last epoch whose modules were checked to match across the ranks
        self.epoch = 0  # epochs completed
        self.step = 0  # batches completed over the whole run (the global step)
        self.final_metrics: dict[str, float] = {}  # the metrics of the last completed epoch
        self.stopped = False  # should_stop() said so: the current epoch is abandoned
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedulers: list[Any] = []
        self.resumed = False
        self._ready = False
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self.card: dict[str, Any] = {}  # the metadata of the last end_epoch (restored on resume)

    # -- set-up ---------------------------------------------------------------------------------
    def resume(self, modules: Mapping[str, nn.Module], optimizers: Sequence[torch.optim.Optimizer] = (),
               schedulers: Sequence[Any] = ()) -> bool:
        """Register what the loop saves (``modules`` by name, ``optimizers``, LR ``schedulers``) and, when
        the run is being resumed, restore it all from ``ctx.resume_state()``, RNG states included.

        Without a resume state but with a checkpoint of this run (a run saved before resume states
        existed), the weights and epoch come from the checkpoint; optimisers and RNG start afresh.
        Returns whether anything was restored.
        """
        self.modules, self.optimizers, self.schedulers = dict(modules), list(optimizers), list(schedulers)
        self._ready = True
        try:
            state = self.ctx.resume_state()
            if state is not None:
                self._restore_precision(state.metadata.get("amp"))
            self._apply_layout()
            if state is not None:
                self._load_state(state.tensors, state.metadata)
            else:
                checkpoint = self.ctx.resume_checkpoint(self.checkpoint)
                if checkpoint is None:
                    return False
                self._load_modules(checkpoint.tensors, "")
                self.epoch = int(checkpoint.metadata.get("epoch", 0))
                self.final_metrics = dict(checkpoint.metadata.get("metrics") or {})
            self.resumed = True
            return True
        finally:
            self._join_ranks("at the start")

    def _join_ranks(self, when: str) -> None:
        """Several processes: the same modules everywhere, rank 0's weights on all, averaged gradients."""
        if self.world_size == 1:
            return
        distributed.check_same_modules(self.modules, when)
        distributed.broadcast_modules(self.modules)
        for optimizer in self.optimizers:
            if id(optimizer) not in self._hooked:
                optimizer.register_step_pre_hook(self._average_gradients)
                self._hooked.add(id(optimizer))

    def _average_gradients(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        if id(optimizer) not in self._averaged:  # minimize() averaged them already, before unscaling (fp16)
            distributed.average_gradients(optimizer)

    def rebind(self, modules: Mapping[str, nn.Module], optimizers: Sequence[torch.optim.Optimizer] = (),
               schedulers: Sequence[Any] = ()) -> None:
        """Register new modules and optimisers mid-run, when the model changed its shape (a network widened
        between epochs). Nothing is loaded: checkpoints and resume states save the new ones from now on, so a
        recipe that rebuilds the same shape from :meth:`saved_card` before :meth:`resume` resumes exactly."""
        if not self._ready:
            raise RuntimeError("call loop.resume(modules=..., optimizers=...) before loop.rebind()")
        self.modules, self.optimizers, self.schedulers = dict(modules), list(optimizers), list(schedulers)
        self._apply_layout()
        self._join_ranks(f"after epoch {self.epoch}")

    @staticmethod
    def saved_card(ctx: Any) -> dict[str, Any] | None:
        """When the run is being resumed: the ``metadata`` its last completed epoch passed to
        :meth:`end_epoch` (saved with the resume state), so that a recipe can rebuild a model whose shape
        changed during the run before calling :meth:`resume`; None for a fresh run."""
        state = ctx.resume_state()
        if state is None:
            return None
        return dict(state.metadata.get("card") or {})

    # -- the accelerator: precision, layout, data, compilation ------------------------------------
    @property
    def amp(self) -> str:
        """The precision of the training step: ``off`` (float32), ``bf16`` or ``fp16``."""
        return self.precision.mode

    def _restore_precision(self, saved: Mapping[str, Any] | None) -> None:
        """A resumed run trains on in the precision it was saved with (float32 for a state saved before AMP)."""
        mode = str((saved or {}).get("mode", "off"))
        if mode != self.amp:
            log.warning("%s: resumed in the precision it was saved with, %s (not %s)", self.name, mode, self.amp)
            self.precision = Precision(mode, self.device)
            self.channels_last = use_channels_last(self._channels_last_setting, self.device, self.amp)

    def _apply_layout(self) -> None:
        if self.channels_last:  # in place: the optimisers keep the same parameters
            for module in self.modules.values():
                module.to(memory_format=torch.channels_last)

    def autocast(self) -> contextlib.AbstractContextManager:
        """A context for the forward pass (and loss) of a training step: ``torch.autocast`` in the run's
        precision, or nothing with AMP off. Cast what you compute further by hand to ``.float()``."""
        return self.precision.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled by the gradient scaler under fp16."""
        self.precision.scale(loss).backward()

    def optimizer_step(self, *optimizers: torch.optim.Optimizer, max_grad_norm: float | None = None) -> None:
        """Step ``optimizers`` after :meth:`backward`: under fp16 the gradients are unscaled first (a step
        with an inf or NaN gradient is skipped and the scale lowered, the same on every rank); with
        ``max_grad_norm`` the gradients of all their parameters are clipped to that norm first."""
        scaler = self.precision.scaler
        if scaler is None:
            if max_grad_norm is not None:
                nn.utils.clip_grad_norm_(_parameters(optimizers), max_grad_norm)
            for optimizer in optimizers:
                optimizer.step()
            return
        try:
            for optimizer in optimizers:
                if self.world_size > 1:  # every rank then sees the same inf/NaN and skips alike
                    distributed.average_gradients(optimizer)
                    self._averaged.add(id(optimizer))
                if max_grad_norm is not None:
                    scaler.unscale_(optimizer)
            if max_grad_norm is not None:
                nn.utils.clip_grad_norm_(_parameters(optimizers), max_grad_norm)
            for optimizer in optimizers:
                scaler.step(optimizer)
            scaler.update()
        finally:
            self._averaged.clear()

    def minimize(self, loss: torch.Tensor, *optimizers: torch.optim.Optimizer,
                 max_grad_norm: float | None = None) -> None:
        """One update: zero the gradients of ``optimizers``, :meth:`backward` ``loss``, :meth:`optimizer_step`.
        With AMP off it is ``zero_grad(set_to_none=True); loss.backward(); step()``, to the bit."""
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(*optimizers, max_grad_norm=max_grad_norm)

    def to_device(self, *tensors: torch.Tensor, free_bytes: int | None = None) -> Any:
        """A dataset's tensors (uint8 images, targets) on ``loop.device`` once, when together they take at
        most half of the device's free memory (``free_bytes``: measured when None; a CPU or MPS always
        fits); otherwise, or with ``data_on_device=False``, they stay in host memory and :meth:`take`
        copies each batch over. One tensor in, one out; several in, a tuple out."""
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        self.data_on_device = self._data_allowed and fits_on_device(nbytes, self.device, free_bytes)
        if not self.data_on_device and self.device.type != "cpu":
            log.info("%s: %.1f MB of data stay in host memory (batches are copied to %s)",
                     self.name, nbytes / 1e6, self.device)
        moved = tuple(t.to(self.device) if self.data_on_device else t.cpu() for t in tensors)
        return moved[0] if len(moved) == 1 else moved

    def take(self, tensor: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``tensor[idx]`` on ``loop.device``: indexed where the tensor lives (the device, or host memory
        for data that did not fit), then copied to the device if it is not there."""
        if tensor.device != idx.device:
            idx = idx.to(tensor.device)
        return tensor[idx].to(self.device, non_blocking=True)

    def compiled(self, fn: Any) -> Any:
        """``torch.compile(fn)`` (a module or a method, e.g. ``backbone.forward_masked``) with compilation on
        (``AVSTUDIO_COMPILE=on``); ``fn`` itself otherwise. Call the result in the training step; the loop
        keeps saving the modules themselves, so checkpoints are the same either way."""
        return torch.compile(fn) if self.compile else fn

    # -- the loop -------------------------------------------------------------------------------
    @staticmethod
    def num_batches(n: int, batch_size: int) -> int:
        """Batches per epoch of :meth:`batches` (for the length of an LR schedule)."""
        return num_batches(n, batch_size)

    def epochs(self) -> Iterator[int]:
        """The 0-based indices of the epochs still to run; ends early once the run was stopped."""
        if not self._ready:
            raise RuntimeError("call loop.resume(modules=..., optimizers=...) before loop.epochs()")
        log.info("%s on %s: amp %s, channels-last %s, compile %s, data on the device %s", self.name, self.device,
                 self.amp, self.channels_last, self.compile, self.data_on_device)
        while self.epoch < self.num_epochs and not self.stopped:
            current = self.epoch
            if self.rank > 0:  # its own augmentation and dropout draws, the same whether resumed or not
                seed_globals(distributed.rank_seed(self.seed, self.rank, current))
            yield current
            if self.epoch == current and not self.stopped:
                raise RuntimeError("call loop.end_epoch() at the end of every epoch")

    def batches(self, n: int, batch_size: int, desc: str | None = None) -> Iterator[torch.Tensor]:
        """One shuffled epoch of index batches (on ``loop.device``) over ``n`` items, with a progress bar.

        Checks ``ctx.should_stop()`` before every batch and ends the epoch early when it says so;
        ``loop.step`` is the global index of the batch being trained and advances after it.
        With several processes, ``batch_size`` is the global batch: each rank gets every world_size-th
        index of it (its shard; ValueError unless the batch splits evenly), and a stop on one rank stops all.
        """
        order = torch.randperm(n, generator=self.generator).to(self.device)
        size = min(batch_size, n)
        chunks = order[: n - n % size].split(size) if n else ()
        if self.world_size > 1:
            if size % self.world_size:
                raise ValueError(f"batch size {size} does not split evenly over {self.world_size} processes: "
                                 f"use a multiple of {self.world_size} (it is the global batch, over all processes)")
            chunks = tuple(chunk[self.rank::self.world_size] for chunk in chunks)
            if self._checked_epoch != self.epoch:  # a model rebuilt between epochs from one rank's own data
                distributed.check_same_modules(self.modules, f"in epoch {self.epoch + 1}")
                self._checked_epoch = self.epoch
        desc = desc or f"{self.name} epoch {self.epoch + 1}/{self.num_epochs}"
        with self.ctx.progress(len(chunks), desc) as bar:
            for idx in chunks:
                if self._should_stop():
                    self.stopped = True
                    return
                yield idx
                self.step += 1
                bar.update()

    def _should_stop(self) -> bool:
        stop = self.ctx.should_stop()
        if self.world_size == 1 or not distributed.any_rank(stop, self.device) or stop:
            return stop
        # another rank was stopped (a signal): this one ends interrupted too, so rank 0 records the run so
        interrupt = getattr(self.ctx, "interrupt", None)
        if interrupt is not None and hasattr(interrupt, "request"):
            interrupt.request("interrupted: another process of this run was stopped")
            self.ctx.should_stop()
        return True

    def sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the processes of the run (``values`` itself with one process): for
        statistics of the training batches that decide something, so that every rank decides alike."""
        return distributed.sum_over_ranks(values) if self.world_size > 1 else values

    def track(self, n: int, **batch_means: Any) -> None:
        """Accumulate batch means (tensors or numbers) over ``n`` samples; end_epoch logs their epoch means."""
        for key, value in batch_means.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            self._sums[key] = self._sums.get(key, 0) + value * n
        self._count += n

    def end_epoch(self, evaluate: Callable[[], Mapping[str, float]] | None = None,
                  metadata: Mapping[str, Any] | None = None, **metrics: float) -> dict[str, float]:
        """Finish the epoch: the tracked means, ``metrics`` and ``evaluate()`` (run without gradients)
        are logged at step ``epoch + 1``; then the checkpoint (``metadata`` + ``epoch`` + ``metrics``)
        and the resume state are saved. Does nothing once the run was stopped.
        """
        if self.stopped:
            return {}
        if self.world_size > 1:  # means over every rank's samples; rank 0's BatchNorm statistics everywhere
            keys = sorted(self._sums)
            totals = distributed.sum_over_ranks(torch.stack(
                [torch.as_tensor(self._sums[k], dtype=torch.float64).to(self.device) for k in keys]
                + [torch.tensor(float(self._count), dtype=torch.float64, device=self.device)]))
            self._sums, self._count = dict(zip(keys, totals[:-1].cpu(), strict=True)), float(totals[-1])
            distributed.broadcast_modules(self.modules, buffers_only=True)
        values = {key: float(total / max(self._count, 1)) for key, total in self._sums.items()}
        values.update({key: float(value) for key, value in metrics.items()})
        if evaluate is not None and self.rank == 0:
            with torch.no_grad():
                values.update({key: float(value) for key, value in evaluate().items()})
        if evaluate is not None and self.world_size > 1:
            values = distributed.from_rank0(values)
        self._sums, self._count = {}, 0
        self.epoch += 1
        self.final_metrics = values
        self.card = dict(metadata or {})
        self.ctx.log_metrics(self.epoch, **values)
        precision = {"amp": self.amp} if self.amp != "off" else {}
        self.ctx.save_checkpoint(self.checkpoint, self.model_tensors(),
                                 {**dict(metadata or {}), "epoch": self.epoch, "metrics": values, **precision})
        self.ctx.save_state(*self.state())
        return values

    # -- state ----------------------------------------------------------------------------------
    def model_tensors(self) -> dict[str, torch.Tensor]:
        """The state dicts of the modules, each key under the module's name (``backbone.fc.weight``)."""
        return {key: value for name, module in self.modules.items() for key, value in module_tensors(module, name).items()}

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """What ``save_state`` stores: tensors (weights, optimiser tensors, RNG states) and JSON metadata."""
        tensors = {f"model.{key}": value for key, value in self.model_tensors().items()}
        meta: dict[str, Any] = {"epoch": self.epoch, "step": self.step, "metrics": self.final_metrics,
                                "card": self.card}
        for kind, objects in (("optimizer", self.optimizers), ("scheduler", self.schedulers)):
            meta[kind] = [flatten(obj.state_dict(), f"{kind}.{i}", tensors) for i, obj in enumerate(objects)]
        meta["amp"] = flatten(self.precision.state_dict(), "amp", tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.generator"] = self.generator.get_state()
        if torch.cuda.is_available():
            for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = cuda_state
        meta["rng"] = {"python": flatten(random.getstate(), "rng.python", tensors)}
        try:
            import numpy as np

            meta["rng"]["numpy"] = flatten(np.random.get_state(), "rng.numpy", tensors)
        except ImportError:
            pass
        return tensors, meta

    def _load_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        self._load_modules(tensors, "model.")
        for kind, objects in (("optimizer", self.optimizers), ("scheduler", self.schedulers)):
            saved = meta.get(kind) or []
            if len(saved) != len(objects):
                raise ValueError(f"the resume state has {len(saved)} {kind}(s), the recipe {len(objects)}")
            for obj, skeleton in zip(objects, saved, strict=True):
                obj.load_state_dict(unflatten(skeleton, tensors))
        self.epoch, self.step = int(meta.get("epoch", 0)), int(meta.get("step", 0))
        self.final_metrics = dict(meta.get("metrics") or {})
        self.card = dict(meta.get("card") or {})
        if meta.get("amp"):
            self.precision.load_state_dict(unflatten(meta["amp"], tensors))
        torch.set_rng_state(tensors["rng.torch"].cpu())
        self.generator.set_state(tensors["rng.generator"].cpu())
        if torch.cuda.is_available():  # a state saved on another machine restores the devices both have
            for i in range(torch.cuda.device_count()):
                if f"rng.cuda.{i}" in tensors:
                    torch.cuda.set_rng_state(tensors[f"rng.cuda.{i}"].cpu(), i)
        rng = meta.get("rng") or {}
        if "python" in rng:
            random.setstate(unflatten(rng["python"], tensors))
        if "numpy" in rng:
            import numpy as np

            np.random.set_state(unflatten(rng["numpy"], tensors))

    def _load_modules(self, tensors: Mapping[str, torch.Tensor], prefix: str) -> None:
        for name, module in self.modules.items():
            load_module_tensors(module, tensors, f"{prefix}{name}")


def _parameters(optimizers: Sequence[torch.optim.Optimizer]) -> list[torch.Tensor]:
    return [p for optimizer in optimizers for group in optimizer.param_groups for p in group["params"]]


__all__ = ["TrainLoop", "num_batches", "seed_everything"]
