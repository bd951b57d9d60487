"""Fully-adaptive feature sharing (arXiv:1611.05377): a thin multi-task network, initialised from a wide
one by SOMP and widened top-down by task affinity, so that similar tasks share layers longer.

- :mod:`plugins.multitask.model`: branched multi-task networks (:class:`TreeConfig`, :class:`BranchedNet`);
- :mod:`plugins.multitask.somp`: thin initialisation from a wide network by SOMP;
- :mod:`plugins.multitask.affinity`: per-example margins, task and branch affinity;
- :mod:`plugins.multitask.widening`: the top-down greedy widening decision and step;
- :mod:`plugins.multitask.recipes`: the ``wide`` and ``tree`` recipes;
- :mod:`plugins.multitask.demo`: the demo tab's handlers; :mod:`plugins.multitask.tab` its Gradio wiring,
  :mod:`plugins.multitask.drawings` its tree figure, affinity heatmap and probability panels,
  :mod:`plugins.multitask.latency` its CPU latency measurement, :mod:`plugins.multitask.names` its
  checkpoints by name (λ, labels, how to train a missing one).

docs/multitask.md says how the method works here ("The method") and where and why it departs from the
paper's description; no equation numbers of the paper are quoted. Where the description leaves room,
each module's docstring says what was chosen.
"""

from collections.abc import Callable

from app.api import CheckpointSlot, DemoContext, Method, hookimpl
from app.api.demo import rebuild_check
from plugins.multitask.model import net_from_checkpoint

__version__ = "0.1.0"


# A slot accepts a checkpoint only if the network rebuilds from it exactly.
_check = rebuild_check(net_from_checkpoint, "a multitask-plugin network")


SLOTS = [
    CheckpointSlot("wide", "the wide single-trunk network (the reference, and SOMP's source)", check=_check),
    CheckpointSlot("thin", "the thin network, SOMP start, never widened", check=_check),
    CheckpointSlot("thin-random", "the thin network, random start, never widened", check=_check),
    CheckpointSlot("branched-*", "a widened (branched) network; the name records λ", check=_check),
]


def _build_demo(ctx: DemoContext) -> None:
    from plugins.multitask.tab import build_demo  # gradio is imported only when the UI is built

    build_demo(ctx)


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    from plugins.multitask.recipes import RECIPES

    register(Method(
        slug="multitask",
        title="Multi-task widening",
        paper="Fully-adaptive Feature Sharing in Multi-Task Networks with Applications in Person Attribute "
              "Classification (Lu, Kumar, Zhai, Cheng, Javidi, Feris, CVPR 2017)",
        paper_url="https://arxiv.org/abs/1611.05377",
        summary="A thin multi-task network, its filters picked from a wide one by SOMP, widened greedily from the "
                "top layer down: at each layer the tasks that find the same examples hard or easy keep sharing, "
                "the others get their own copy of the layer. The result is a tree of branches.",
        build_demo=_build_demo,
        recipes=list(RECIPES),
        checkpoint_slots=SLOTS,
    ))
