"""BlockDrop (arXiv:1711.08393): per-image dynamic residual-block execution that really saves time."""

from app.api import Checkpoint, CheckpointSlot, Method, UserError, hookimpl

__version__ = "0.1.0"


def _build_demo(ctx) -> None:
    from plugins.blockdrop.demo import build_demo  # gradio is imported only when the UI is built

    build_demo(ctx)


def _check(checkpoint: Checkpoint, *, policy: bool) -> None:
    """The slot accepts the checkpoint only if the BlockDrop networks rebuild from it exactly."""
    from plugins.blockdrop.model import backbone_from_checkpoint, policy_from_checkpoint

    try:
        backbone_from_checkpoint(checkpoint)
        if policy:
            policy_from_checkpoint(checkpoint)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        what = "a BlockDrop policy checkpoint (backbone + policy network)" if policy else "a BlockDrop ResNet"
        raise UserError(f"not {what}: {type(exc).__name__}: {exc}".splitlines()[0]) from None


SLOTS = [
    CheckpointSlot("backbone", "the full ResNet the demo compares against",
                   check=lambda c: _check(c, policy=False)),
    CheckpointSlot("policy-g*", "a fine-tuned policy with its backbone at penalty γ (shown in the γ selector)",
                   check=lambda c: _check(c, policy=True)),
    CheckpointSlot("policy", "the curriculum-trained policy (used when no fine-tuned one exists)",
                   check=lambda c: _check(c, policy=True)),
]


@hookimpl
def register_methods(register) -> None:
    from plugins.blockdrop.recipes import RECIPES

    register(Method(
        slug="blockdrop",
        title="BlockDrop",
        paper="BlockDrop: Dynamic Inference Paths in Residual Networks (Wu, Nagarajan et al., CVPR 2018)",
        paper_url="https://arxiv.org/abs/1711.08393",
        summary="A small policy network looks at the image once and decides which residual blocks of a "
                "ResNet to run; easy images use fewer blocks.",
        build_demo=_build_demo,
        recipes=list(RECIPES),
        checkpoint_slots=SLOTS,
    ))
