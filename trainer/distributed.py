"""One run over several processes: data parallelism under ``torchrun`` (``avstudio train … --nproc N``).

What each process does, and who owns what:

* ``launch_run`` (the ``avstudio train`` process) claims the run, starts
  ``python -m torch.distributed.run --standalone --nproc_per_node N -m trainer.distributed`` in a session
  of its own and waits for it; it forwards Ctrl-C (a cancel request) and SIGTERM/SIGHUP (an interrupt).
* Rank 0 executes the run like a single process does (``execute_run``: heartbeat, metrics, checkpoints,
  resume state, final status): it is the only process that writes to the run store and the run directory.
* The other ranks run the same recipe with a :class:`FollowerContext`: it reads (config, datasets,
  checkpoints, the resume state) and writes nothing.
* :class:`trainer.loop.TrainLoop` does the data parallelism, so any recipe built on it gets it: each rank
  trains on its shard of every batch (the global batch is the recipe's ``batch_size``), gradients are
  averaged over the ranks just before each ``optimizer.step()`` (:func:`average_gradients`, a step
  pre-hook), rank 0's weights are broadcast at ``resume``, a stop on any rank stops them all.

Process groups: NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on the CPU.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

SPEC_ENV = "AVSTUDIO_DISTRIBUTED_RUN"  # the launcher's JSON for the ranks (not argv: a database URL may hold a password)
TIMEOUT = timedelta(minutes=60)  # a rank waits this long for the others (rank 0 evaluating, saving a checkpoint)


# -- where this process stands ----------------------------------------------------------------------


def world_size() -> int:
    """How many processes train this run (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without torch.distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def init_from_env(device: str) -> torch.device:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR…); the device of this rank.

    ``device`` is cpu (gloo) or cuda (NCCL, one GPU per process: ``cuda:LOCAL_RANK``)."""
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=torch.device("cuda", local))
        return torch.device("cuda", local)
    dist.init_process_group("gloo", timeout=TIMEOUT)
    return torch.device("cpu")


# -- collectives the loop uses ----------------------------------------------------------------------


def _coalesced(tensors: Sequence[torch.Tensor], collective: Any) -> None:
    """Run ``collective(flat)`` on the tensors packed into one buffer per dtype and device, then unpack:
    one call instead of one per tensor (a ResNet-32 has ~100 parameter tensors)."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    for group in groups.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        collective(flat)
        offset = 0
        for t in group:
            t.data.copy_(flat[offset: offset + t.numel()].view_as(t))
            offset += t.numel()


def broadcast_tensors(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite ``tensors`` with rank 0's values, on every rank."""
    _coalesced(list(tensors), lambda flat: dist.broadcast(flat, 0))


def broadcast_modules(modules: Mapping[str, nn.Module], buffers_only: bool = False) -> None:
    """Give every rank rank 0's parameters and buffers (BatchNorm statistics) of ``modules``."""
    tensors: dict[int, torch.Tensor] = {}
    for module in modules.values():
        params = [] if buffers_only else list(module.parameters())
        for tensor in [*params, *module.buffers()]:
            tensors.setdefault(id(tensor), tensor)  # a module shared by two names goes once
    broadcast_tensors(tensors.values())


def check_same_modules(modules: Mapping[str, nn.Module], when: str) -> None:
    """Raise on every rank when the ranks hold modules of different names or shapes (a recipe that decided
    a model's shape from its own shard of the data): averaging their gradients would be meaningless."""
    shapes = sorted((f"{name}.{key}", tuple(value.shape))
                    for name, module in modules.items() for key, value in module.state_dict().items())
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, shapes)
    if any(other != gathered[0] for other in gathered):
        raise RuntimeError(f"the {world_size()} processes of this run hold different models {when}: the recipe "
                           "chose the model's shape from its own shard of the batches; train it with one process")


def average_gradients(optimizer: torch.optim.Optimizer, *_: Any) -> None:
    """Replace the gradients of ``optimizer``'s parameters by their mean over the ranks (the gradient of
    the global batch when each rank's loss is the mean over its equal shard).

    A parameter without a gradient on some ranks (a block no sample of theirs used) counts as zero
    there; one without a gradient on every rank keeps none, as in a single process."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not params:
        return
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(present)
    grads = []
    for param, count in zip(params, present.tolist(), strict=True):
        if count == 0:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        grads.append(param.grad)
    n = world_size()

    def mean(flat: torch.Tensor) -> None:
        dist.all_reduce(flat)
        flat.div_(n)

    _coalesced(grads, mean)


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank (every rank gets the same answer)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the ranks (a new tensor)."""
    total = values.clone()
    dist.all_reduce(total)
    return total


def from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object), on every rank."""
    box = [value]
    dist.broadcast_object_list(box, 0)
    return box[0]


def rank_seed(seed: int, rank_: int, epoch: int) -> int:
    """The seed of rank ``rank_``'s own random draws (augmentation, dropout) in ``epoch``: a function of the
    three alone, so a resumed run draws what a run never stopped would have drawn."""
    return (seed * 1_000_003 + rank_ * 7_919 + epoch * 104_729) % 2**63


# -- the context of ranks other than 0 --------------------------------------------------------------


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def follower_context(store: Any, run: Any, registry: Any, **options: Any) -> Any:
    """A :class:`FollowerContext` (built here so that importing this module does not import the store)."""
    from trainer.context import RunContext

    class FollowerContext(RunContext):
        """The TrainContext of ranks 1…N-1: reads like rank 0's, writes nothing (metrics, checkpoints,
        images, resume state and progress are rank 0's), and stops only when its own process is asked to
        (rank 0 watches for cancel requests; the loop makes every rank stop together)."""

        def log_metrics(self, step: int, **values: float) -> None:
            self.last_step = max(self.last_step, int(step))

        def flush(self) -> None:
            pass

        def save_checkpoint(self, name: str, tensors: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> Path:
            return self.run_dir / f"{name}.safetensors"

        def save_image(self, name: str, image: Any, step: int | None = None) -> Path:
            stem = f"{name}-{int(step):06d}" if step is not None else name
            return self.run_dir / "images" / f"{stem}.png"

        def save_state(self, tensors: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> Path:
            from trainer.context import RESUME_STATE

            return self.run_dir / RESUME_STATE

        def should_stop(self, *, fresh: bool = False) -> bool:
            if self.interrupt is not None and self.interrupt.is_set():
                self.interrupted = True
                return True
            return False

        def progress(self, total: int, desc: str = "") -> Any:
            return _NoProgress()

    return FollowerContext(store, run, registry, **options)


# -- one rank's process (python -m trainer.distributed, started by torchrun) -----------------------


def _import_factory(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def rank_main() -> int:
    """Entry point of each rank: join the group, then rank 0 executes the run and the others follow it."""
    import logging

    from trainer.config import make_config
    from trainer.devices import apply_threads
    from trainer.execution import StopRequest, execute_run
    from trainer.store import RunStore

    spec = json.loads(os.environ[SPEC_ENV])
    interrupt = StopRequest()

    def on_signal(signum: int, _frame: Any) -> None:  # torchrun forwards the launcher's SIGTERM to every rank
        interrupt.request(f"interrupted by {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = init_from_env(spec["device"])
    registry_factory = _import_factory(spec["registry"])
    options = {"data_dir": spec["data_dir"], "runs_dir": spec["runs_dir"], "assets_dir": spec["assets_dir"]}
    try:
        if rank() == 0:
            retry = {"db_retry_s": spec["db_retry_s"]} if spec.get("db_retry_s") is not None else {}
            execute_run(spec["store_url"], spec["run_id"], registry_factory, device=str(device),
                        show_progress=spec.get("show_progress", False), threads=spec.get("threads"),
                        interrupt=interrupt, **options, **retry)
            return 0
        apply_threads(spec.get("threads"))
        store = RunStore(spec["store_url"], runs_dir=spec["runs_dir"])
        try:
            run = store.get_run(spec["run_id"])
            registry = registry_factory()
            recipe = registry.recipe(run.method, run.recipe)
            config = make_config(recipe.config_cls, run.config)
            ctx = follower_context(store, run, registry, device=device, config=config, interrupt=interrupt, **options)
            recipe.train(config, ctx)
        finally:
            store.close()
        return 0
    finally:
        dist.destroy_process_group()


# -- the launcher (avstudio train … --nproc N) ------------------------------------------------------


def check_nproc(nproc: int, device: str) -> str:
    """The device every rank uses for ``nproc`` processes on ``device`` (cpu or cuda); ValueError, one line,
    for what cannot work."""
    if nproc < 2:
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--nproc with --device cuda: no CUDA GPU here; use --device cpu")
        if torch.cuda.device_count() < nproc:
            raise ValueError(f"--nproc {nproc} runs one process per GPU and this machine has "
                             f"{torch.cuda.device_count()}; use --nproc {torch.cuda.device_count()} or --device cpu")
        return device
    raise ValueError(f"--nproc runs on cpu or cuda (one process per GPU), not {device!r}")


def launch_run(store: Any, run_id: int, *, nproc: int, device: str, registry: str, data_dir: Path | str,
               runs_dir: Path | str, assets_dir: Path | str, threads: int | None = None,
               show_progress: bool = True, db_retry_s: float | None = None) -> int | None:
    """Claim run ``run_id`` and train it with ``nproc`` processes (torchrun); block until it ends.

    ``registry`` names the registry factory every rank calls (``module:function``). Ctrl-C asks the run
    to cancel (a second one stops it at once, cancelled); SIGTERM or SIGHUP interrupt it, resumable
    (forwarded to torchrun, which forwards them to the ranks). A run the ranks left unfinished (a rank
    killed) is recorded failed, or interrupted after a stop signal. Returns the stop signal's number, if any.
    """
    from trainer.store import RunStatus

    host, pid = socket.gethostname(), os.getpid()
    if store.claim_run(run_id, f"cli-{host}-{pid}", host=host, pid=pid) is None:
        raise ValueError(f"run {run_id} was taken by a worker; follow it with `avstudio runs show {run_id}`")
    spec = {"store_url": store.url, "run_id": run_id, "device": device, "registry": registry,
            "data_dir": str(data_dir), "runs_dir": str(runs_dir), "assets_dir": str(assets_dir),
            "threads": threads, "show_progress": show_progress, "db_retry_s": db_retry_s}
    env = {**os.environ, SPEC_ENV: json.dumps(spec)}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)  # torchrun would set 1 otherwise
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "--max_restarts=0", "-m", "trainer.distributed"]
    # its own session: a Ctrl-C in the terminal reaches this process alone, which turns it into a cancel
    try:
        launcher = subprocess.Popen(command, env=env, start_new_session=True)
    except OSError as exc:
        store.finish(run_id, RunStatus.FAILED, error=f"could not start torchrun: {exc}")
        raise ValueError(f"could not start torchrun: {exc}") from None
    got: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        got.append(signum)
        if signum == signal.SIGINT and got.count(signal.SIGINT) == 1:
            print("\ncancelling… (Ctrl-C again to stop at once)", file=sys.stderr)
            threading.Thread(target=store.request_cancel, args=(run_id,), daemon=True).start()
            return
        if signum == signal.SIGINT:
            threading.Thread(target=store.finish, args=(run_id, RunStatus.CANCELLED),
                             kwargs={"error": "cancelled with Ctrl-C"}, daemon=True).start()
        launcher.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        code = launcher.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    stop = next((s for s in got if s != signal.SIGINT), None)
    if store.get_run(run_id).status == RunStatus.RUNNING:
        if stop is not None:
            store.finish(run_id, RunStatus.INTERRUPTED, error=f"interrupted by {signal.Signals(stop).name}; "
                         "resume the run to continue")
        else:
            store.finish(run_id, RunStatus.FAILED, error=f"the {nproc} training processes exited with code {code} "
                         "before the run ended (see their output above)")
    return stop


if __name__ == "__main__":
    sys.exit(rank_main())
