"""A tiny method for tests: counts steps, logs a falling loss, checkpoints every step.

Recipes: "count" (cooperative: stops when asked) and "stubborn" (ignores should_stop, to test
the worker's hard stop). Its demo echoes a number with the step of the checkpoint the demo uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from app.api import CheckpointSlot, Method, Recipe, UserError, config_field, hookimpl


@dataclass
class CountConfig:
    steps: int = config_field(5, "number of steps")
    sleep_s: float = config_field(0.0, "seconds to sleep after each step")
    fail_at: int = config_field(-1, "raise RuntimeError at this step (-1: never)")
    dataset: str = config_field("none", "a dataset to load and count ('none': no data)")


def _count(config: CountConfig, ctx, *, cooperative: bool) -> dict[str, float]:
    start = 0
    resumed = ctx.resume_checkpoint("model")
    if resumed is not None:
        start = int(resumed.tensors["step"].item()) + 1
    ctx.log_metrics(start, start_step=start)
    if config.dataset != "none":
        ctx.log_metrics(start, dataset_size=len(ctx.dataset(config.dataset, "train")))
    with ctx.progress(config.steps - start, "counting") as bar:
        for step in range(start, config.steps):
            if cooperative and ctx.should_stop():
                return {"final_step": step}
            if step == config.fail_at:
                raise RuntimeError(f"boom at step {step}")
            ctx.log_metrics(step, loss=1.0 / (step + 1), counted=step)
            ctx.save_checkpoint("model", {"step": torch.tensor([step])}, {"step": step})
            bar.update()
            time.sleep(config.sleep_s)
    return {"final_step": config.steps}


def train_count(config: CountConfig, ctx) -> dict[str, float]:
    return _count(config, ctx, cooperative=True)


def train_stubborn(config: CountConfig, ctx) -> dict[str, float]:
    return _count(config, ctx, cooperative=False)


def build_demo(ctx) -> None:
    import gradio as gr

    def echo(value: float) -> str:
        checkpoint = ctx.load_checkpoint("model")
        step = int(checkpoint.tensors["step"].item()) if checkpoint is not None else None
        return f"value={float(value or 0):g} checkpoint_step={step}"

    number = gr.Number(label="value", value=1)
    text = gr.Textbox(label="echo")
    gr.Button("Echo").click(echo, number, text, api_name="counter_echo")


def _check_model(checkpoint) -> None:
    if "step" not in checkpoint.tensors:
        raise UserError("not a counter checkpoint: it has no 'step' tensor")


@hookimpl
def register_methods(register) -> None:
    register(Method(
        slug="counter", title="Counter", paper="-", summary="Counts steps (a plugin for tests).",
        build_demo=build_demo,
        recipes=[Recipe("count", CountConfig, train_count, "count to `steps`, checkpointing each step"),
                 Recipe("stubborn", CountConfig, train_stubborn, "like count, but never checks should_stop")],
        checkpoint_slots=[CheckpointSlot("model", "the counter's step", check=_check_model)],
    ))
