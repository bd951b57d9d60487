"""A tiny method for the multi-process tests: a TrainLoop regression whose network has no batch statistics.

Recipe "fit": an MLP on a fixed random regression (built from the seed, no dataset), SGD with momentum,
one checkpoint ``model`` per epoch. With ``dump_dir`` set, every process also writes its final weights
and the sample indices it trained on to ``dump_dir/rank<RANK>.safetensors`` (what the tests compare).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from app.api import Method, Recipe, config_field, hookimpl
from app.api.training import TrainLoop


@dataclass
class FitConfig:
    epochs: int = config_field(3, "epochs", min=1)
    batch_size: int = config_field(16, "global batch size", min=1)
    num_train: int = config_field(256, "training samples", min=1)
    width: int = config_field(32, "hidden units", min=1)
    lr: float = config_field(0.05, "SGD learning rate", min=0)
    seed: int = config_field(0, "random seed")
    dump_dir: str = config_field("", "write each process's final weights and seen indices here ('' : no)")


def regression(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` inputs (8 features) and noisy non-linear targets, the same for every process."""
    g = torch.Generator().manual_seed(seed + 12345)
    x = torch.randn(n, 8, generator=g)
    return x, torch.sin(x @ torch.linspace(-1, 1, 8)) + 0.05 * torch.randn(n, generator=g)


def train_fit(config: FitConfig, ctx) -> dict[str, float]:
    loop = TrainLoop(ctx, epochs=config.epochs, seed=config.seed, checkpoint="model")
    x, y = regression(config.num_train, config.seed)
    x, y = x.to(loop.device), y.to(loop.device)
    net = nn.Sequential(nn.Linear(8, config.width), nn.Tanh(), nn.Linear(config.width, 1)).to(loop.device)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=0.9)
    loop.resume(modules={"net": net}, optimizers=[optimizer])
    seen = []
    for _ in loop.epochs():
        for idx in loop.batches(len(x), config.batch_size):
            loss = F.mse_loss(net(x[idx]).squeeze(1), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen.append(idx.cpu())
            loop.track(len(idx), train_loss=loss)
        loop.end_epoch(evaluate=lambda: {"mse": float(F.mse_loss(net(x).squeeze(1), y))}, metadata={"kind": "fit"})
    if config.dump_dir:
        tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        tensors["seen"] = torch.cat(seen) if seen else torch.zeros(0, dtype=torch.long)
        Path(config.dump_dir).mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(Path(config.dump_dir) / f"rank{os.environ.get('RANK', '0')}.safetensors"))
    return loop.final_metrics


@hookimpl
def register_methods(register) -> None:
    register(Method(slug="ddpfit", title="DDP fit", paper="-", summary="A regression for multi-process tests.",
                    recipes=[Recipe("fit", FitConfig, train_fit, "an MLP regression with TrainLoop")]))
