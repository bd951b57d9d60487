"""VGAN (arXiv:1611.01799): GAN training as variational training of an energy-based model — a bounded
multi-modal energy of K binary experts, an entropy proxy against mode collapse, and VCD transitions."""

from collections.abc import Callable

from app.api import Checkpoint, CheckpointSlot, DemoContext, Method, UserError, hookimpl
from app.api.demo import rebuild_check
from plugins.vgan.model import models_from_checkpoint

__version__ = "0.1.0"


def _check(kind: str) -> Callable[[Checkpoint], None]:
    """A slot accepts a checkpoint only if both networks rebuild from it and it is of the slot's kind."""
    def rebuild(checkpoint: Checkpoint) -> None:
        cfg, _, _ = models_from_checkpoint(checkpoint)
        if cfg.kind != kind:
            raise UserError(f"this is a {cfg.kind} model; the slot takes a {kind} model")

    return rebuild_check(rebuild, "a VGAN-plugin model")


SLOTS = [
    CheckpointSlot("vgan", "the VGAN model (energy of K experts + generator from noise) the demo shows",
                   check=_check("vgan")),
    CheckpointSlot("vcd", "the VCD model (energy + transition autoencoder) for the demo's transitions",
                   check=_check("vcd")),
    CheckpointSlot("gan", "the plain GAN baseline the demo compares with", check=_check("gan")),
]


def _build_demo(ctx: DemoContext) -> None:
    from plugins.vgan.tab import build_demo  # gradio is imported only when the UI is built

    build_demo(ctx)


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    from plugins.vgan.recipes import RECIPES

    register(Method(
        slug="vgan",
        title="VGAN",
        paper="Generative Adversarial Networks as Variational Training of Energy Based Models "
              "(Zhai, Cheng, Feris, Zhang, 2016)",
        paper_url="https://arxiv.org/abs/1611.01799",
        summary="A GAN read as variational training of an energy-based model: the discriminator is a bounded "
                "energy of K binary experts with many minima, the generator also maximises an entropy proxy "
                "against mode collapse, and VCD learns transitions of real images instead of samples from noise.",
        build_demo=_build_demo,
        recipes=list(RECIPES),
        checkpoint_slots=SLOTS,
    ))
