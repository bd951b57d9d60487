"""BlockDrop (arXiv:1711.08393): per-image dynamic residual-block execution that really saves time."""

from app.api import Method, hookimpl

__version__ = "0.1.0"


def _build_demo(ctx) -> None:
    from plugins.blockdrop.demo import build_demo  # gradio is imported only when the UI is built

    build_demo(ctx)


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
    ))
