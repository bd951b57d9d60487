"""The BlockDrop tab: which residual blocks ran for this image, what it cost, and the dataset view.

The handlers (:meth:`BlockDropDemo.predict`, :meth:`BlockDropDemo.dataset_panel`) are plain
functions returning dicts, so tests and the API use them directly; :func:`build_demo` wraps them
for Gradio and turns a UserError into a ``gr.Error``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import torch

from app.api import CheckpointInfo, DemoContext, UserError
from app.api.demo import (
    ModelCache,
    add_css,
    image_input,
    image_to_tensor,
    load_rgb_image,
    model_input_update,
    pixelated_css,
    refreshed_choices,
    user_errors,
)
from plugins.blockdrop import analysis
from plugins.blockdrop.inference import deployed_layout, fast_blockdrop, fast_full, prepare
from plugins.blockdrop.model import backbone_from_checkpoint, policy_from_checkpoint

DATASET = "shapes"
# The operating point the γ selector opens on: benchmarks/results/blockdrop.json (docs/blockdrop.md,
# "Targets") picks γ = 1, the fine-tuned policy that meets every target of the issue (accuracy within
# 1 pt of the full ResNet at < 50 % of the blocks). Other policies stay selectable.
RECOMMENDED_POLICY = "policy-g1"
READABLE_PX = 256  # small inputs are shown enlarged (nearest neighbour) to about this many pixels
PANEL_IMAGES = 2000  # the panel evaluates the first N test images (CPU-friendly); cached afterwards
NO_CHECKPOINT = (
    "No BlockDrop checkpoint found. Train one (GPU: ~5 minutes) with:\n\n"
    "    avstudio train blockdrop backbone\n"
    "    avstudio train blockdrop policy\n"
    "    avstudio train blockdrop finetune --set gamma=1\n\n"
    "then promote the run's `backbone` and `policy-g1` checkpoints in the Runs tab "
    "(or place them in assets/blockdrop/). See docs/blockdrop.md."
)


# How the tab names the policy network of each architecture a card records (model.PolicyNetConfig.arch).
POLICY_ARCHS = {"strided": "A small policy network (three wide stride-2 convolutions)",
                "resnet8": "A ResNet-8 policy network"}


def gamma_of(info: CheckpointInfo) -> float | None:
    """γ of a fine-tuned policy, from its card (the recipe writes it beside the networks); None without one."""
    gamma = info.metadata.get("gamma")
    return float(gamma) if isinstance(gamma, (int, float)) and not isinstance(gamma, bool) else None


def intro(card: dict[str, Any]) -> str:
    """The tab's first line, naming the networks that policy ``card`` (its metadata) holds."""
    policy, backbone = card.get("policy") or {}, card.get("backbone") or {}
    who = POLICY_ARCHS.get(str(policy.get("arch", "")), "A small policy network")
    resnet = f"ResNet-{backbone['depth']}" if isinstance(backbone.get("depth"), int) else "ResNet"
    return (f"{who} looks at the image once and picks which residual blocks of a {resnet} to run; "
            "skipped blocks are really not executed.")


def default_policy(names: list[str]) -> str | None:
    """The policy the selector opens on: :data:`RECOMMENDED_POLICY` when available, else the first."""
    return RECOMMENDED_POLICY if RECOMMENDED_POLICY in names else (names[0] if names else None)


def block_map_html(policy: list[int], stage_of_block: list[int]) -> str:
    """One row per stage, one cell per block: green = ran, grey = skipped."""
    rows = []
    for stage in sorted(set(stage_of_block)):
        cells = "".join(
            f'<td title="block {k + 1}: {"ran" if policy[k] else "skipped"}" style="width:28px;height:22px;'
            f'border:1px solid #888;text-align:center;background:{"#2e9e44" if policy[k] else "#ddd"};'
            f'color:{"#fff" if policy[k] else "#777"}">{k + 1}</td>'
            for k, s in enumerate(stage_of_block) if s == stage)
        rows.append(f"<tr><th style='padding-right:8px'>stage {stage + 1}</th>{cells}</tr>")
    return f"<table style='border-collapse:collapse'>{''.join(rows)}</table>"


class BlockDropDemo:
    """Loads the checkpoints the DemoContext points at (a ModelCache: until a file changes) and answers requests."""

    def __init__(self, ctx: DemoContext) -> None:
        self.ctx = ctx
        self._models: ModelCache[dict[str, Any]] = ModelCache(ctx, missing=lambda name: NO_CHECKPOINT)
        self.panels = analysis.PanelCache(Path(ctx.data_dir) / "blockdrop-panels")
        self._latency_lock = threading.Lock()

    # -- checkpoints -------------------------------------------------------------------------

    def policy_names(self) -> list[str]:
        """Available fine-tuned policies (``policy-g*``, shipped or promoted), sorted by their cards' γ; else the
        curriculum-only ``policy`` when that is all there is."""
        checkpoints = self.ctx.checkpoints()
        gammas = {c.name: gamma_of(c) for c in checkpoints if c.name.startswith("policy-g")}
        # by γ as their cards record it; a policy whose card has none (no card at all) after those, by name
        ordered = sorted(gammas, key=lambda n: (gammas[n] is None, gammas[n] or 0.0, n))
        if not ordered and "policy" in {c.name for c in checkpoints}:
            ordered = ["policy"]
        return ordered

    def refresh_policy_choices(self, current: str | None) -> Any:
        """The γ selector's choices as they are now (shipped and promoted), keeping the choice it holds."""
        names = self.policy_names()
        return refreshed_choices(names, current, default_policy(names))

    def _paths(self, policy_name: str) -> tuple[Path, Path]:
        backbone = self.ctx.checkpoint_path("backbone")
        policy = self.ctx.checkpoint_path(policy_name) if policy_name else None
        if backbone is None or policy is None:
            raise UserError(NO_CHECKPOINT if backbone is None or not self.policy_names()
                            else f"No policy checkpoint {policy_name!r}; choose one of {self.policy_names()}.")
        return backbone, policy

    def models(self, policy_name: str) -> dict[str, Any]:
        """Full ResNet, BlockDrop backbone + policy net, labels and FLOP table for ``policy_name``."""
        backbone_path, policy_path = self._paths(policy_name)

        def build(full: Any, bd: Any) -> dict[str, Any]:
            try:  # the architectures come from the cards (typed configs; flat legacy cards adapted)
                full_net = backbone_from_checkpoint(full).eval()
                bd_net = backbone_from_checkpoint(bd).eval()
                policy_net = policy_from_checkpoint(bd).eval()
            except (KeyError, ValueError, TypeError, RuntimeError) as exc:
                raise UserError(f"Checkpoint {policy_name!r} or 'backbone' is not a BlockDrop checkpoint "
                                f"({exc.__class__.__name__}: {exc}); retrain it.") from None
            size = (int(bd_net.config.input_size[0]), int(bd_net.config.input_size[1]))
            labels = list(bd_net.config.labels or full_net.config.labels)
            labels += [f"class {i}" for i in range(len(labels), full_net.config.num_classes)]
            layout = deployed_layout(1)  # the deployed inference path at batch 1 (benchmarks/blockdrop.py)
            fast_full_net, _ = prepare(full_net, channels_last=layout)
            fast_bd, fast_policy = prepare(bd_net, policy_net, channels_last=layout)
            return {
                "full": full_net, "backbone": bd_net, "policy": policy_net, "labels": labels,
                "fast_full": fast_full_net, "fast_backbone": fast_bd, "fast_policy": fast_policy,
                "image_size": size, "free_blocks": bd.metadata.get("free_blocks"),
                "flops": analysis.flop_table(bd_net, policy_net, size),
                "hash": analysis.file_hash(backbone_path, policy_path), "card": bd.card,
            }

        return self._models.get("backbone", policy_name, build=build)

    # -- handlers ----------------------------------------------------------------------------

    def reference_latency_ms(self, m: dict[str, Any], x: torch.Tensor, blocks: int,
                             repeats: int = 7) -> dict[str, Any]:
        """Batch-1 latency of the full ResNet and of BlockDrop for the loaded models ``m`` (:meth:`models`),
        measured once per loaded model (median of ``repeats`` interleaved runs on ``x``, an image that runs
        ``blocks`` blocks, after one warm-up run) and cached with how it was taken: re-timing both networks
        on every request made each request several times heavier and put the timings themselves at the
        mercy of the requests queued beside them."""
        if "reference_latency" not in m:
            with self._latency_lock:  # concurrent first requests: one measures, the others wait for it
                if "reference_latency" not in m:
                    latency = analysis.interleaved_latency_ms(  # the inference path of the benchmark's figures
                        {"full": lambda: fast_full(m["fast_full"], x),
                         "blockdrop": lambda: fast_blockdrop(m["fast_backbone"], m["fast_policy"], x,
                                                             m["free_blocks"])},
                        repeats=repeats, warmup=1)
                    m["reference_latency"] = {**latency, "repeats": repeats, "threads": torch.get_num_threads(),
                                              "blocks": blocks, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        return m["reference_latency"]

    @torch.inference_mode()
    def predict(self, image: Any, policy_name: str, latency_repeats: int = 7) -> dict[str, Any]:
        """Top-3 of the full ResNet and of BlockDrop, the block map, blocks used, FLOPs, the models'
        reference latency (:meth:`reference_latency_ms`, ``latency_repeats`` runs the first time) and the
        wall time of this request's own two forward passes."""
        m = self.models(policy_name)
        h, w = m["image_size"]
        x = image_to_tensor(load_rgb_image(image), (w, h))
        t0 = time.perf_counter()
        full_probs = fast_full(m["fast_full"], x).softmax(1)[0]
        t1 = time.perf_counter()
        bd_logits, policy = fast_blockdrop(m["fast_backbone"], m["fast_policy"], x, m["free_blocks"])
        t2 = time.perf_counter()
        bd_probs = bd_logits.softmax(1)[0]
        kept = [int(v) for v in policy[0].tolist()]
        model_input = x[0].permute(1, 2, 0).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
        latency = self.reference_latency_ms(m, x, sum(kept), latency_repeats)
        flops_bd = float(m["flops"].blockdrop(policy)[0])

        def top3(probs: torch.Tensor) -> dict[str, float]:
            values, idx = probs.topk(min(3, len(probs)))
            return {m["labels"][i]: round(float(v), 4) for v, i in zip(values, idx.tolist(), strict=True)}

        return {
            "full_top3": top3(full_probs),
            "blockdrop_top3": top3(bd_probs),
            "policy": kept,
            "blocks_used": sum(kept),
            "num_blocks": len(kept),
            "block_map_html": block_map_html(kept, m["backbone"].stage_of_block),
            "flops_full": m["flops"].full,
            "flops_blockdrop": flops_bd,
            "flops_policy_net": m["flops"].policy,
            "latency_full_ms": latency["full"],
            "latency_blockdrop_ms": latency["blockdrop"],
            "latency_repeats": latency["repeats"],
            "latency_threads": latency["threads"],
            "latency_measured_at": latency["measured_at"],
            "latency_blocks": latency["blocks"],  # blocks the image it was measured on ran (BlockDrop's time depends on it)
            "request_full_ms": (t1 - t0) * 1000.0,  # this request's forwards, under whatever load there is
            "request_blockdrop_ms": (t2 - t1) * 1000.0,
            "model_input": model_input,  # H×W×3 uint8: the resized image both networks see
            "input_resolution": (h, w),  # (height, width) of the model input
        }

    def dataset_panel(self, policy_name: str | None = None) -> dict[str, Any]:
        """The dataset panel for every available policy (cached by checkpoint hash), plus the chosen one."""
        names = self.policy_names()
        if not names or self.ctx.checkpoint_path("backbone") is None:
            raise UserError(NO_CHECKPOINT)
        policy_name = policy_name if policy_name in names else names[0]
        models = {name: self.models(name) for name in names}
        paths = [self.ctx.checkpoint_path(n) for n in ["backbone", *names]]
        key = analysis.file_hash(*[p for p in paths if p is not None])  # (one removed meanwhile: another key)

        def compute() -> dict:
            test = self.ctx.dataset(DATASET, "test")
            n = min(PANEL_IMAGES, len(test.targets))
            first = next(iter(models.values()))
            return analysis.dataset_panel(
                first["full"], {name: (mm["backbone"], mm["policy"], mm["free_blocks"]) for name, mm in models.items()},
                test.images[:n], test.targets[:n].long(),
                None if getattr(test, "difficulty", None) is None else test.difficulty[:n], first["labels"])

        panel = self.panels.get(key, compute)
        return {**panel, "selected": policy_name}


# --------------------------------------------------------------------------------------------
# Gradio wiring
# --------------------------------------------------------------------------------------------


def _stats_markdown(r: dict[str, Any]) -> str:
    h, w = r["input_resolution"]
    threads = r["latency_threads"]
    return (f"**Blocks used:** {r['blocks_used']} / {r['num_blocks']} · **input:** resized to {w}×{h}\n\n"
            # short headers, so that the table fits a phone's width; what they mean is said below it
            f"| | FLOPs | latency | this request |\n|---|---|---|---|\n"
            f"| full ResNet | {r['flops_full'] / 1e6:.1f} M | {r['latency_full_ms']:.2f} ms | "
            f"{r['request_full_ms']:.2f} ms |\n"
            f"| BlockDrop | {r['flops_blockdrop'] / 1e6:.1f} M | {r['latency_blockdrop_ms']:.2f} ms | "
            f"{r['request_blockdrop_ms']:.2f} ms |\n\n"
            f"*FLOPs*: 1 multiply-add = 2 FLOPs; BlockDrop's include its policy network "
            f"({r['flops_policy_net'] / 1e6:.1f} M). "
            f"*latency*: on the CPU, median of {r['latency_repeats']} runs of each network in turns, batch 1, "
            f"{threads} CPU thread{'s' if threads != 1 else ''}, measured once when this server first used the "
            f"model ({r['latency_measured_at']}), on the image it answered then ({r['latency_blocks']} of "
            f"{r['num_blocks']} blocks); other visitors' requests may have been running then. "
            f"*this request*: one run of each network for your image, timed now, under the server's current load.")


# Small images (32×32 shapes) are drawn enlarged with crisp pixels, not as a 32-pixel speck.
PIXELATED_CSS = pixelated_css("blockdrop-input", "blockdrop-model-input", examples="blockdrop-examples", extra="""
/* on a phone the stats table's four columns keep whole words: tighter cells instead of "laten-cy" */
@media (max-width: 480px) {
  #blockdrop-stats table { font-size: 0.85em; }
  #blockdrop-stats th, #blockdrop-stats td { padding: 4px 6px; word-break: normal; overflow-wrap: normal; }
  /* the galleries show three thumbnails a row there: their captions ("8 · crescent") in a smaller type */
  #blockdrop-fewest .caption-label, #blockdrop-most .caption-label { font-size: 11px; padding: 1px 4px; }
}""")


def panel_frames(panel: dict[str, Any]) -> dict[str, Any]:
    """pandas DataFrames for the panel's plots."""
    import pandas as pd

    selected = panel["policies"][panel["selected"]]
    hist = pd.DataFrame({"blocks used": list(range(len(selected["histogram"]))),
                         "images": selected["histogram"]})
    rows = [{"method": "full ResNet", "mean blocks": panel["num_blocks"], "accuracy": panel["accuracy_full"]}]
    for name, p in panel["policies"].items():
        rows += [{"method": f"BlockDrop {name}", "mean blocks": p["mean_blocks"], "accuracy": p["accuracy"]},
                 {"method": "FirstK", "mean blocks": p["mean_blocks"], "accuracy": p["accuracy_firstk"]},
                 {"method": "RandomK", "mean blocks": p["mean_blocks"], "accuracy": p["accuracy_randomk"]}]
    curve = pd.DataFrame(rows)
    per_class = pd.DataFrame({"class": panel["labels"], "mean blocks": selected["class_mean_blocks"]})
    return {"histogram": hist, "curve": curve, "per_class": per_class}


class BlockDropEvents:
    """The tab's event functions: :class:`BlockDropDemo`'s handlers with Gradio's inputs and outputs (a
    UserError reaches the user as its message)."""

    def __init__(self, demo: BlockDropDemo) -> None:
        self.demo = demo

    @user_errors
    def run(self, image: Any, policy_name: str) -> tuple:
        """Classify an image with the full ResNet-32 and with BlockDrop, whose policy network picks which
        residual blocks to run for this image. Returns the top-3 classes of both, the block map (which of the
        15 blocks ran), the blocks used, FLOPs and latency of both, and the 32×32 picture the networks saw.

        Args:
            image: the image to classify (any size; it is resized to 32×32).
            policy_name: the BlockDrop policy to use (a γ choice of the selector, e.g. policy-g1).
        """

        r = self.demo.predict(image, policy_name)
        return r["full_top3"], r["blockdrop_top3"], r["block_map_html"], _stats_markdown(r), model_input_update(r, size=READABLE_PX)

    @user_errors
    def panel(self, policy_name: str) -> tuple:
        """BlockDrop on the whole shapes test split for one policy: blocks-used histograms, accuracy against
        blocks next to FirstK and RandomK, blocks per class, the correlation with difficulty, and the images
        that used the fewest and the most blocks (computed once, then cached).

        Args:
            policy_name: the BlockDrop policy to analyse (a γ choice of the selector, e.g. policy-g1).
        """
        p = self.demo.dataset_panel(policy_name)
        test = self.demo.ctx.dataset(DATASET, "test")
        frames = panel_frames(p)
        sel = p["policies"][p["selected"]]

        def gallery(indices: list[int]) -> list:
            # short captions (blocks, then class): a phone shows three thumbnails a row, ~90 px each
            return [(test.images[i].permute(1, 2, 0).numpy(),
                     f"{int(sel['used'][i])} · {p['labels'][int(test.targets[i])]}") for i in indices]

        rho = sel["spearman_difficulty"]
        summary = (f"**{p['selected']}** on {p['num_images']} test images: accuracy {sel['accuracy']:.3f} "
                   f"(full ResNet {p['accuracy_full']:.3f}), {sel['mean_blocks']:.2f} / {p['num_blocks']} blocks, "
                   f"{sel['unique_policies']} distinct policies; FirstK {sel['accuracy_firstk']:.3f}, "
                   f"RandomK {sel['accuracy_randomk']:.3f} at the same budget. Spearman(blocks used, difficulty) = "
                   f"{'n/a' if rho is None else f'{rho:.3f}'}.")
        return (summary, frames["histogram"], frames["curve"], frames["per_class"],
                gallery(sel["fewest"]), gallery(sel["most"]))


def build_demo(ctx: DemoContext) -> None:
    """Add the BlockDrop components and events (inside the caller's gr.Tab)."""
    import gradio as gr

    demo = BlockDropDemo(ctx)
    events = BlockDropEvents(demo)
    names = demo.policy_names()
    cards = {c.name: c.metadata for c in ctx.checkpoints()}
    gr.Markdown(intro(cards.get(default_policy(names) or "", {})))
    if not names or ctx.checkpoint_path("backbone") is None:
        gr.Markdown(NO_CHECKPOINT)
        return

    add_css(PIXELATED_CSS)
    with gr.Row():
        with gr.Column():
            images = image_input("blockdrop", height=READABLE_PX, draw="Draw a shape")
            policy = gr.Dropdown(names, value=default_policy(names), elem_id="blockdrop-policy",
                                 label="policy (penalty γ: larger keeps more blocks; γ = 1 recommended)")
            # the outputs exist before the examples that fill them; they are drawn in the right column
            full_label = gr.Label(num_top_classes=3, label="full ResNet", render=False)
            bd_label = gr.Label(num_top_classes=3, label="BlockDrop", render=False)
            block_map = gr.HTML(label="block map", elem_id="blockdrop-block-map", render=False)
            stats = gr.Markdown(elem_id="blockdrop-stats", render=False)
            seen = gr.Image(label="what the network sees", type="numpy", format="png", interactive=False,
                            height=READABLE_PX, elem_id="blockdrop-model-input", render=False)
            outputs = [full_label, bd_label, block_map, stats, seen]
            images.examples(ctx.assets_dir)
        with gr.Column():
            for component in outputs:
                component.render()
    with gr.Accordion("Dataset panel (shapes test split)", open=False):
        panel_button = gr.Button("Compute dataset panel (cached after the first time)")
        summary = gr.Markdown()
        with gr.Row():
            hist = gr.BarPlot(x="blocks used", y="images", title="blocks used per image")
            curve = gr.ScatterPlot(x="mean blocks", y="accuracy", color="method",
                                   title="accuracy vs mean blocks (same budget)")
            # slanted class names: upright they ran into each other on a phone
            per_class = gr.BarPlot(x="class", y="mean blocks", title="mean blocks per class", x_label_angle=-45)
        with gr.Row():
            fewest = gr.Gallery(label="fewest blocks (captions: blocks used · class)", columns=8, height="auto",
                                elem_id="blockdrop-fewest")
            most = gr.Gallery(label="most blocks (captions: blocks used · class)", columns=8, height="auto",
                              elem_id="blockdrop-most")

    images.wire(events.run, [policy], outputs, api_name="blockdrop_predict")
    # opening the selector lists what is available now: a policy promoted since start-up shows up
    policy.focus(demo.refresh_policy_choices, policy, policy, api_name="blockdrop_policies", show_progress="hidden")
    panel_button.click(events.panel, [policy], [summary, hist, curve, per_class, fewest, most],
                       api_name="blockdrop_dataset_panel")
