"""S3Pool (arXiv:1611.05138): pooling with stochastic spatial sampling, a drop-in for max pooling
that regularises most where training data is scarce."""

from collections.abc import Callable

from app.api import CheckpointSlot, DemoContext, Method, hookimpl
from app.api.demo import rebuild_check
from plugins.s3pool.model import net_from_checkpoint

__version__ = "0.1.0"


# A slot accepts a checkpoint only if the network rebuilds from it exactly.
_check = rebuild_check(net_from_checkpoint, "an S3Pool-plugin network")


SLOTS = [
    CheckpointSlot("resnet-*", "a ResNet with the downsampling its name says (the demo compares max and s3pool)",
                   check=_check),
    CheckpointSlot("nin-*", "a NIN with the downsampling its name says", check=_check),
]


def _build_demo(ctx: DemoContext) -> None:
    from plugins.s3pool.tab import build_demo  # gradio is imported only when the UI is built

    build_demo(ctx)


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    from plugins.s3pool.recipes import RECIPES

    register(Method(
        slug="s3pool",
        title="S3Pool",
        paper="S3Pool: Pooling with Stochastic Spatial Sampling (Zhai, Wu, Kumar et al., CVPR 2017)",
        paper_url="https://arxiv.org/abs/1611.05138",
        summary="Pooling in two steps: a stride-1 max pool, then rows and columns kept at random in every grid "
                "cell instead of every other one. The random distortion regularises like data augmentation.",
        build_demo=_build_demo,
        recipes=list(RECIPES),
        checkpoint_slots=SLOTS,
    ))
