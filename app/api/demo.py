"""The demo kit: what method tabs share, beside the core contract (:mod:`app.api`).

A plugin may import this module as it imports ``app.api`` (the boundary test allows exactly the core
and the two kits); docs/plugins.md, "The demo kit", documents every name. Importing it loads no
Gradio: the pieces that build components import it when they are called (inside ``build_demo``).

- **uploads**: :func:`load_rgb_image` (any upload as RGB, or a one-line UserError),
  :func:`image_to_tensor`, :func:`lenient_upload` (a bad file reaches the handler, not Gradio's failure);
- **the image panel**: :func:`image_input` (upload and draw tabs with their Run buttons, the method's
  example images, clicking one runs the demo) and :func:`example_paths`;
- **showing small images**: :func:`enlarge` (nearest neighbour, crisp pixels), :func:`pixelated_css`
  and :func:`add_css`; :func:`viridis` (values as colours) and :func:`figure_font` (text in figures);
- **handlers**: :func:`user_errors` (a UserError reaches the user as its message), :class:`ModelCache`
  (networks rebuilt only when a checkpoint changes), :func:`refreshed_choices` (a selector that re-lists
  what is available), :func:`interleaved_latency_ms` (timings taken in turns);
- **checkpoint slots**: :func:`rebuild_check` (a ``CheckpointSlot.check`` that rebuilds the networks).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from app.images import figure_font, image_to_tensor, lenient_upload, load_rgb_image
from app.model_cache import ModelCache
from trainer.checkpoints import Checkpoint
from trainer.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])

READABLE_PX = 256
"""About how many pixels the longer side of a small image is shown at (:func:`enlarge`, the upload's height)."""

# a few colours of the viridis colour map (dark = low, yellow = high), interpolated linearly
_VIRIDIS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], np.float64)


# --------------------------------------------------------------------------------------------
# Showing small images
# --------------------------------------------------------------------------------------------


def enlarge(image: Any, target: int = READABLE_PX) -> np.ndarray:
    """An H×W(×C) array scaled by an integer factor (nearest neighbour: every model pixel stays a crisp
    square) so that its longer side is about ``target`` pixels; large images are left as they are."""
    array = np.asarray(image)
    factor = max(1, target // max(array.shape[0], array.shape[1], 1))
    return array.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else array


def model_input_update(result: Mapping[str, Any], who: str = "the network", size: int = READABLE_PX
                       ) -> dict[str, Any]:
    """The Gradio update of a demo's "what the network sees" image from a handler's ``result``: its
    ``model_input`` (H×W×3 uint8) enlarged to about ``size`` pixels, captioned with the resolution the model
    really sees, ``result["input_resolution"]`` (height, width), as "what {who} sees: W×H"."""
    import gradio as gr  # here, so that importing the kit loads no Gradio

    h, w = result["input_resolution"]
    return gr.update(value=enlarge(result["model_input"], size), label=f"what {who} sees: {w}×{h}")


def pixelated_css(*elem_ids: str, examples: str | None = None, extra: str = "") -> str:
    """A ``<style>`` block drawing the images inside ``elem_ids`` with crisp pixels, whole (``object-fit:
    contain``), and the thumbnails of the ``examples`` element with crisp pixels; ``extra`` CSS is appended.
    Small images (a 32×32 input, a grid sent at its real size) are then enlarged by the browser, not blurred."""
    rules = []
    if elem_ids:
        selector = ", ".join(f"#{elem} img" for elem in elem_ids)
        rules.append(f"{selector} {{ object-fit: contain; image-rendering: pixelated; }}")
    if examples:
        rules.append(f"#{examples} img {{ image-rendering: pixelated; }}")
    if extra.strip():
        rules.append(extra.strip())
    return "<style>\n" + "\n".join(rules) + "\n</style>"


def add_css(css: str) -> None:
    """Put ``css`` (a ``<style>`` block, e.g. :func:`pixelated_css`) in the page's head, from ``build_demo``."""
    import gradio as gr

    gr.HTML(head=css, container=False, padding=False)


def viridis(values: Any) -> np.ndarray:
    """Values in [0, 1] (any shape; clipped) as viridis RGB uint8 (shape + (3,)): dark = low, yellow = high."""
    stops = np.linspace(0.0, 1.0, len(_VIRIDIS))
    flat = np.clip(np.asarray(values, np.float64), 0.0, 1.0).ravel()
    rgb = np.stack([np.interp(flat, stops, _VIRIDIS[:, k]) for k in range(3)], axis=-1)
    return rgb.round().astype(np.uint8).reshape(*np.shape(values), 3)


# --------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------


def user_errors(fn: F) -> F:
    """Decorate a demo's event function so that a UserError raised in it reaches the user as a ``gr.Error``
    with its one-line message, never a traceback, wherever the event runs (the studio, a test's bare Blocks,
    ``gradio_client``). The function keeps its name, signature and docstring (the API page shows them)."""
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            import gradio as gr

            raise gr.Error(str(exc)) from None

    return wrapped  # type: ignore[return-value]


def refreshed_choices(choices: Sequence[Any], held: Any, fallback: Any) -> Any:
    """A selector's update when it is opened (its focus event) and re-lists what is available now.

    ``held`` is the value it held when it was opened: the update leaves the value alone while that is still
    a choice, since a user may have picked another one before the answer arrived (putting ``held`` back
    would undo that pick); only when ``held`` is gone does it switch to ``fallback``.
    Choices are values or (label, value) pairs, as ``gr.Dropdown`` takes them.
    """
    import gradio as gr

    values = [c[1] if isinstance(c, (tuple, list)) else c for c in choices]
    if held in values:
        return gr.update(choices=list(choices))
    return gr.update(choices=list(choices), value=fallback)


def interleaved_latency_ms(fns: Mapping[str, Callable[[], Any]], repeats: int = 20, warmup: int = 3,
                           device: Any = "cpu") -> dict[str, float]:
    """The median wall-clock milliseconds of each function, timed in turns (A, B, A, B, …) so that the
    machine's noise hits them all alike, after ``warmup`` untimed turns; in inference mode, waiting for a
    CUDA ``device`` before and after each call."""
    import torch

    device = torch.device(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


# --------------------------------------------------------------------------------------------
# Checkpoint slots
# --------------------------------------------------------------------------------------------

REBUILD_ERRORS = (KeyError, ValueError, RuntimeError, TypeError)
"""What rebuilding a network from a checkpoint of another kind raises (missing or extra tensors, shapes, fields)."""


def rebuild_check(rebuild: Callable[[Checkpoint], Any], what: str) -> Callable[[Checkpoint], None]:
    """A ``CheckpointSlot.check`` that accepts a checkpoint only if ``rebuild(checkpoint)`` rebuilds it
    exactly (e.g. ``net_from_checkpoint``): a :data:`REBUILD_ERRORS` error becomes the one-line UserError
    ``not WHAT: ErrorType: message``. A UserError that ``rebuild`` raises itself (a checkpoint that rebuilds
    but does not fit the slot, another kind of model) is the message as it stands."""
    def check(checkpoint: Checkpoint) -> None:
        try:
            rebuild(checkpoint)
        except UserError:
            raise
        except REBUILD_ERRORS as exc:
            raise UserError(f"not {what}: {type(exc).__name__}: {exc}".splitlines()[0]) from None

    return check


# --------------------------------------------------------------------------------------------
# The image panel: upload, draw, examples
# --------------------------------------------------------------------------------------------


def example_paths(assets_dir: Path | str | None) -> list[str]:
    """The example images a method ships: ``assets_dir/examples/*.png``, sorted ([] without any)."""
    return sorted(str(p) for p in (Path(assets_dir) / "examples").glob("*.png")) if assets_dir else []


@dataclass
class ImageInput:
    """What :func:`image_input` built: the upload, the drawing (or None), their Run buttons, the examples."""

    slug: str
    upload: Any
    run_upload: Any
    sketch: Any = None
    run_sketch: Any = None
    example_images: Any = None
    """The ``gr.Examples`` of :meth:`examples` (None until then, or without example images)."""
    _wired: tuple[Callable[..., Any], list[Any], list[Any], str] | None = field(default=None, repr=False)

    def examples(self, assets_dir: Path | str | None, label: str = "Examples (click one to run it)") -> Any:
        """Show the method's example images here (:func:`example_paths`), under ``elem_id`` ``SLUG-examples``.
        A click fills the upload and, once :meth:`wire` connected the panel, runs the demo with the other
        inputs as the user set them. Never cached: building the app runs no model. None without examples."""
        import gradio as gr

        paths = example_paths(assets_dir)
        if not paths:
            return None
        self.example_images = gr.Examples(examples=[[p] for p in paths], inputs=[self.upload], label=label,
                                          cache_examples=False, elem_id=f"{self.slug}-examples",
                                          api_name=f"{self.slug}_load_example")
        if self._wired is not None:
            self._run_examples(*self._wired)
        return self.example_images

    def wire(self, fn: Callable[..., Any], controls: Sequence[Any], outputs: Sequence[Any], *, api_name: str) -> None:
        """Run ``fn(image, *controls)`` into ``outputs`` from each Run button (events ``API_NAME`` and
        ``API_NAME_sketch``, one concurrency queue) and from a click on an example (``API_NAME_example``)."""
        controls, outputs = list(controls), list(outputs)
        self.run_upload.click(fn, [self.upload, *controls], outputs, api_name=api_name, concurrency_id=api_name)
        if self.sketch is not None:
            self.run_sketch.click(fn, [self.sketch, *controls], outputs, api_name=f"{api_name}_sketch",
                                  concurrency_id=api_name)
        self._wired = (fn, controls, outputs, api_name)
        if self.example_images is not None:
            self._run_examples(*self._wired)

    def _run_examples(self, fn: Callable[..., Any], controls: list[Any], outputs: list[Any], api_name: str) -> None:
        self.example_images.load_input_event.then(fn, [self.upload, *controls], outputs,
                                                  api_name=f"{api_name}_example", api_visibility="undocumented")


def image_input(slug: str, *, height: int = READABLE_PX, draw: str | None = "Draw something") -> ImageInput:
    """The image side of a demo, where it is called in ``build_demo``: an "Upload" tab (``gr.Image``, a
    file path for the handler, ``elem_id`` ``SLUG-input``) and, unless ``draw`` is None, a "Draw" tab (a
    ``gr.Sketchpad`` labelled ``draw``, ``SLUG-sketch``), each with its Run button (``SLUG-run``,
    ``SLUG-run-sketch``); both through :func:`lenient_upload`. Without a drawing there are no tabs.
    Then :meth:`ImageInput.examples` where the examples go, and :meth:`ImageInput.wire` to connect it."""
    import gradio as gr

    def upload_tab() -> tuple[Any, Any]:
        upload = lenient_upload(gr.Image(type="filepath", label="Image", height=height, elem_id=f"{slug}-input"))
        return upload, gr.Button("Run", variant="primary", elem_id=f"{slug}-run")

    if draw is None:
        return ImageInput(slug, *upload_tab())
    with gr.Tab("Upload"):
        upload, run_upload = upload_tab()
    with gr.Tab("Draw"):
        sketch = lenient_upload(gr.Sketchpad(label=draw, type="numpy", elem_id=f"{slug}-sketch"))
        run_sketch = gr.Button("Run on drawing", variant="primary", elem_id=f"{slug}-run-sketch")
    return ImageInput(slug, upload, run_upload, sketch, run_sketch)


__all__ = [
    "ImageInput", "ModelCache", "READABLE_PX", "REBUILD_ERRORS", "add_css", "enlarge", "example_paths",
    "figure_font", "image_input", "image_to_tensor", "interleaved_latency_ms", "lenient_upload", "load_rgb_image",
    "model_input_update", "pixelated_css", "rebuild_check", "refreshed_choices", "user_errors", "viridis",
]
