"""The Datasets tab: pick a registered dataset and split, see a grid of samples, its labels and description."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.errors import UserError

READABLE_SAMPLE_PX = 96  # each sample of the grid is drawn at least about this big (crisp pixels)
# Small samples (28–32 px) enlarged without blurring; the grid is shown at its own size, not shrunk.
GRID_CSS = "<style>#dataset-grid img { image-rendering: pixelated; object-fit: contain; }</style>"


def default_dataset(registry: Any) -> str | None:
    """The dataset the tab opens on: the first built-in one (it previews offline, without user files),
    else the first registered one."""
    builtin = [name for name, spec in registry.datasets.items() if spec.builtin]
    return builtin[0] if builtin else next(iter(sorted(registry.datasets)), None)


def sample_upscale(image_size: Any) -> int:
    """The integer pixel scale that draws a sample of ``image_size`` (H, W) at a readable size."""
    longest = max(image_size or (READABLE_SAMPLE_PX,))
    return max(1, -(-READABLE_SAMPLE_PX // max(int(longest), 1)))


class DatasetActions:
    """Handlers of the Datasets tab (plain functions: tested without a browser)."""

    def __init__(self, registry: Any, settings: Any) -> None:
        self.registry = registry
        self.settings = settings

    def describe(self, name: str | None) -> str:
        """The dataset's title, task, size, splits, description and label list as Markdown."""
        if not name:
            return "No dataset selected."
        spec = self.registry.dataset_spec(name)
        labels = ", ".join(spec.labels) or "(none listed)"
        height, width = spec.image_size
        return (f"### {spec.title}\n{spec.description}\n\n"
                f"- task: {spec.task}; images {spec.channels}×{height}×{width}; splits: {', '.join(spec.splits)}\n"
                f"- {'built in (generated offline)' if spec.builtin else 'external files'}\n"
                f"- {len(spec.labels)} labels: {labels}")

    def dataset_preview(self, name: str, split: str, count: float = 32) -> tuple[Any, str]:
        """A grid image of the first ``count`` samples, plus the Markdown description.

        When the samples cannot be loaded (e.g. a real dataset whose files are not present), the image
        is None and the description starts with the reason and what to do.
        """
        try:
            text = self.describe(name)
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        try:
            dataset = self.registry.load_dataset(name, split, self.settings.data_dir)
            from trainer.datasets.preview import preview_grid_image

            upscale = sample_upscale(self.registry.dataset_spec(name).image_size)
            return preview_grid_image(dataset, int(count), upscale=upscale), text
        except Exception as exc:  # shown to the user instead of a traceback; the reason is the message
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return None, f"**Could not load {name}/{split}:** {reason}\n\n{text}"


def build_datasets_tab(registry: Any, settings: Any) -> None:
    """Add the Datasets tab (call inside ``gr.Tab``)."""
    actions = DatasetActions(registry, settings)
    names = sorted(registry.datasets)
    first = default_dataset(registry)
    splits = list(registry.datasets[first].splits) if first else []

    def on_dataset(name: str | None) -> tuple[Any, str]:
        split_choices = list(registry.datasets[name].splits) if name in registry.datasets else []
        return gr.update(choices=split_choices, value=_preview_split(split_choices)), actions.describe(name)

    with gr.Row():
        name_in = gr.Dropdown(choices=names, value=first, label="Dataset", elem_id="dataset-select")
        split_in = gr.Dropdown(choices=splits, value=_preview_split(splits), label="Split",
                               elem_id="dataset-split")
        count_in = gr.Slider(4, 64, value=32, step=4, label="Samples", elem_id="dataset-count")
        show_btn = gr.Button("Show samples", variant="primary", scale=0, elem_id="dataset-show")
    gr.HTML(head=GRID_CSS, container=False, padding=False)
    with gr.Row():
        grid = gr.Image(label="Samples", type="pil", format="png", interactive=False, elem_id="dataset-grid",
                        buttons=["download", "fullscreen"], scale=2)
        info = gr.Markdown(actions.describe(first) if first else "No datasets are registered.",
                           elem_id="dataset-info")
    name_in.change(on_dataset, name_in, [split_in, info], api_visibility="private")
    show_btn.click(actions.dataset_preview, [name_in, split_in, count_in], [grid, info],
                   api_name="dataset_preview")
    # The preview of the opening dataset is drawn when the page loads, not while the app is built (a
    # generated dataset's first preview generates its split: start-up stays fast).
    root = gr.context.Context.root_block
    if root is not None and first is not None:
        root.load(actions.dataset_preview, [name_in, split_in, count_in], [grid, info],
                  api_name="dataset_preview_on_load", api_visibility="undocumented")


def _preview_split(splits: list[str]) -> str | None:
    # A small split first: the first preview of a generated dataset has to generate that split.
    for name in ("val", "test"):
        if name in splits:
            return name
    return splits[0] if splits else None
