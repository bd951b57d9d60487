"""BlockDrop (arXiv:1711.08393): per-image dynamic residual-block execution that really saves time."""

from collections.abc import Callable

from app.api import Checkpoint, CheckpointSlot, DemoContext, Method, hookimpl
from app.api.demo import rebuild_check
from plugins.blockdrop.model import backbone_from_checkpoint, policy_from_checkpoint

__version__ = "0.1.0"


def _build_demo(ctx: DemoContext) -> None:
    from plugins.blockdrop.demo import build_demo  # gradio is imported only when the UI is built

    build_demo(ctx)


def _both_networks(checkpoint: Checkpoint) -> None:
    backbone_from_checkpoint(checkpoint)
    policy_from_checkpoint(checkpoint)


# A slot accepts a checkpoint only if the BlockDrop networks rebuild from it exactly.
_RESNET = rebuild_check(backbone_from_checkpoint, "a BlockDrop ResNet")
_POLICY = rebuild_check(_both_networks, "a BlockDrop policy checkpoint (backbone + policy network)")

SLOTS = [
    CheckpointSlot("backbone", "the full ResNet the demo compares against", check=_RESNET),
    CheckpointSlot("policy-g*", "a fine-tuned policy with its backbone at penalty γ (shown in the γ selector)",
                   check=_POLICY),
    CheckpointSlot("policy", "the curriculum-trained policy (used when no fine-tuned one exists)", check=_POLICY),
]


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
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
