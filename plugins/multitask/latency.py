"""CPU latency of the multitask networks, as the demo's comparison table reports it: the median of batch-1
forward passes on one CPU thread, the models timed in turns."""

from __future__ import annotations

import copy
import functools
import threading
from contextlib import contextmanager

import torch

from app.api.demo import interleaved_latency_ms
from plugins.multitask.model import BranchedNet

LATENCY_REPEATS, LATENCY_WARMUP = 15, 3  # timed and untimed batch-1 forwards per model
LATENCY_CAPTION = (
    "**How measured.** Mean accuracy: the card's mean attribute accuracy on the validation images of its "
    "run (the epoch the checkpoint was saved at). Parameters: trainable ones. FLOPs: one 64×64 image, "
    "1 multiply-add = 2 FLOPs (`torch.utils.flop_counter`, convolutions and linear layers). Latency: the "
    f"median of {LATENCY_REPEATS} forward passes of one image (batch 1) on one CPU thread "
    f"(`torch.set_num_threads(1)`), after {LATENCY_WARMUP} warm-up passes, the models timed in turns so that "
    "the machine's noise hits them alike, on this server; press *Measure CPU latency* to (re)measure.")

_TIMING_LOCK = threading.Lock()  # one measurement at a time: two would slow each other


@contextmanager
def one_thread():
    """torch on one CPU thread while timing (the table's latency is per thread), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def latency_ms(nets: dict[str, BranchedNet], repeats: int = LATENCY_REPEATS,
               warmup: int = LATENCY_WARMUP) -> dict[str, float]:
    """Median ms of a batch-1 forward of each network on one CPU thread, timed in turns (A, B, A, B, …)."""
    # the table's latency is the CPU's: a network on another demo device is timed as a CPU copy
    nets = {name: net if next(net.parameters()).device.type == "cpu" else copy.deepcopy(net).cpu()
            for name, net in nets.items()}
    forwards = {name: functools.partial(net, torch.rand(1, net.config.channels, net.config.input_size,
                                                        net.config.input_size))
                for name, net in nets.items()}
    with _TIMING_LOCK, one_thread():
        return interleaved_latency_ms(forwards, repeats=repeats, warmup=warmup)
