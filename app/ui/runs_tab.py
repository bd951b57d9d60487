"""The Runs tab: a live table of runs, metric curves, comparison, and (when enabled) training controls.

The handlers live in :class:`app.ui.runs_actions.RunsActions` as plain methods over the run store, so
they are tested without a browser; each raises ``gr.Error`` with a one-line message for anything a user
can get wrong, never a traceback.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.ui.curves import MAX_PANELS
from app.ui.runs_actions import RUN_COLUMNS, RunsActions
from trainer import config as configs

POLL_S = 2.0
DEVICES = ("auto", "cpu", "cuda", "mps")


def _field_component(method: str, recipe: str, d: dict[str, Any]) -> gr.components.Component:
    """One config field as an input: Dropdown for choices, Checkbox for bool, Number for int/float, else Textbox."""
    name, kind, default, info = d["name"], d["type"], d["default"], d["help"] or None
    common = {"label": name, "info": info, "elem_id": f"cfg-{method}-{recipe}-{name}"}
    if d["choices"] is not None:
        return gr.Dropdown(choices=list(d["choices"]), value=default, **common)
    if kind is bool:
        return gr.Checkbox(value=bool(default), **common)
    bounds = {"minimum": d.get("min"), "maximum": d.get("max")}
    if kind is int:
        return gr.Number(value=default, precision=0, **bounds, **common)
    if kind is float:
        return gr.Number(value=default, **bounds, **common)
    if isinstance(default, (list, tuple)):
        default = ",".join(map(str, default))
    return gr.Textbox(value="" if default is None else str(default), **common)


def _training_methods(registry: Any) -> list[tuple[str, str]]:
    return [(m.title, slug) for slug, m in registry.methods.items() if m.recipes]


def _recipe_choices(registry: Any, method: str | None) -> list[str]:
    m = registry.methods.get(method) if method else None
    return [r.name for r in m.recipes] if m else []


def _build_queue_form(actions: RunsActions, registry: Any, settings: Any,
                      run_select: gr.Dropdown, token_in: gr.Textbox) -> Any:
    """The queue form; returns its Queue button's event (the caller chains what follows a queued run)."""
    methods = _training_methods(registry)
    first = methods[0][1] if methods else None
    recipes = _recipe_choices(registry, first)
    with gr.Row():
        method_in = gr.Dropdown(choices=methods, value=first, label="Method", elem_id="queue-method")
        recipe_in = gr.Dropdown(choices=recipes, value=recipes[0] if recipes else None, label="Recipe",
                                elem_id="queue-recipe")
        device_in = gr.Dropdown(choices=list(DEVICES), value=settings.device if settings.device in DEVICES
                                else "auto", allow_custom_value=True, label="Device", elem_id="queue-device",
                                info="auto: CUDA, then MPS, then CPU; or e.g. cuda:1")
    groups: dict[tuple[str, str], gr.Group] = {}
    fields: list[tuple[str, str, str, gr.components.Component]] = []
    for slug, method in registry.methods.items():
        for recipe in method.recipes:
            visible = (slug, recipe.name) == (first, recipes[0] if recipes else None)
            with gr.Group(visible=visible, elem_id=f"cfg-{slug}-{recipe.name}") as group:
                if recipe.description:
                    gr.Markdown(recipe.description)
                with gr.Row():
                    for d in configs.config_fields(recipe.config_cls):
                        fields.append((slug, recipe.name, d["name"], _field_component(slug, recipe.name, d)))
            groups[(slug, recipe.name)] = group
    queue_btn = gr.Button("Queue run", variant="primary", elem_id="queue-button")
    queue_msg = gr.Markdown()

    def on_method(method: str | None) -> Any:
        choices = _recipe_choices(registry, method)
        return gr.update(choices=choices, value=choices[0] if choices else None)

    def show_group(method: str | None, recipe: str | None) -> list[Any]:
        return [gr.update(visible=key == (method, recipe)) for key in groups]

    def queue_from_form(method: str, recipe: str, device: str, *values: Any) -> tuple[str, Any]:
        *values, admin_token = values  # the config fields, then the admin token box
        config = {name: value for (m, r, name, _), value in zip(fields, values, strict=True)
                  if (m, r) == (method, recipe)}
        run_id = actions.queue_run(method, recipe, config, device, admin_token)
        return f"Queued run #{run_id} ({method}/{recipe} on {device}).", gr.update(
            choices=actions.run_choices(), value=run_id)

    group_list = list(groups.values())
    method_in.change(on_method, method_in, recipe_in, api_visibility="private").then(
        show_group, [method_in, recipe_in], group_list, api_visibility="private")
    recipe_in.change(show_group, [method_in, recipe_in], group_list, api_visibility="private")
    queued = queue_btn.click(queue_from_form, [method_in, recipe_in, device_in, *[f[3] for f in fields], token_in],
                             [queue_msg, run_select], api_visibility="private")
    # The scriptable form of the same action: config as a JSON object.
    gr.api(actions.queue_run, api_name="queue_run")
    return queued


def build_runs_tab(demo: gr.Blocks, actions: RunsActions, registry: Any, settings: Any) -> None:
    """Add the Runs tab's components and events to ``demo`` (call inside its ``gr.Tab``)."""
    timer = gr.Timer(POLL_S)
    with gr.Row():
        gr.Markdown("### Runs\nUpdated every few seconds. Click a row to see its details and curves.")
        refresh_btn = gr.Button("Refresh", size="sm", scale=0, elem_id="runs-refresh")
    runs_table = gr.Dataframe(value=actions.runs_list(), headers=RUN_COLUMNS, interactive=False,
                              label="Runs", elem_id="runs-table", max_height=360)
    with gr.Row():
        run_select = gr.Dropdown(choices=actions.run_choices(), value=None, label="Run",
                                 allow_custom_value=True, elem_id="run-select", scale=2)
        key_select = gr.Dropdown(choices=[], value=None, label="Metric (empty: all)",
                                 allow_custom_value=True, elem_id="metric-select", scale=1)
    with gr.Row():
        with gr.Column(scale=1):
            detail = gr.JSON(label="Run details", elem_id="run-detail")
        with gr.Column(scale=2):
            # drawn on the server (app/ui/curves.py): a panel per metric, each on its own scale
            curves = gr.Image(label=f"Metric curves (a panel per metric, up to {MAX_PANELS}; pick one to see it alone)", type="pil",
                              format="png", interactive=False, elem_id="run-curves")

    images = gr.Gallery(label="Images the run saved (newest first)", elem_id="run-images", columns=4,
                        height=280, object_fit="contain")

    with gr.Accordion("Compare runs", open=False):
        with gr.Row():
            compare_select = gr.Dropdown(choices=actions.run_choices(), multiselect=True, label="Runs", allow_custom_value=True,
                                         elem_id="compare-select", scale=2)
            compare_key = gr.Dropdown(choices=[], allow_custom_value=True, label="Metric",
                                      elem_id="compare-key", scale=1)
            compare_btn = gr.Button("Compare", scale=0, elem_id="compare-button")
        compare_plot = gr.Image(label="Comparison", type="pil", format="png", interactive=False,
                                elem_id="compare-plot")

    fast = {"concurrency_limit": None, "show_progress": "hidden"}
    row_picked = runs_table.select(_row_run_id, None, run_select, api_visibility="private", **fast)
    # What a run's pickers hold (its metric, its checkpoint) is dropped only when a run is chosen: in the
    # run picker, in the table, or by queueing one. The run picker's change event also fires when nothing a
    # user sees changed (Gradio re-sends it when the runs' labels change): dropping the checkpoint there
    # emptied one just picked, so Promote had none (CI's browser test). A change only re-lists the choices.
    run_chosen = [run_select.select, row_picked.then]

    if settings.enable_training:
        with gr.Accordion("Train", open=True, elem_id="training-controls"):
            # Shown only when the studio has a token; every action below sends it and checks it.
            token_in = gr.Textbox("", type="password", label="Admin token", visible=bool(settings.admin_token),
                                  info="this studio has AVSTUDIO_ADMIN_TOKEN set: enter it to queue, cancel, "
                                       "resume or promote runs", elem_id="admin-token")
            run_chosen.append(_build_queue_form(actions, registry, settings, run_select, token_in).then)
            with gr.Row():
                cancel_btn = gr.Button("Cancel selected run", variant="stop", elem_id="cancel-button")
                resume_btn = gr.Button("Resume selected run", elem_id="resume-button")
            with gr.Row():
                artifact_select = gr.Dropdown(choices=[], label="Checkpoint of the selected run", allow_custom_value=True,
                                              elem_id="promote-artifact")
                slot_in = gr.Textbox(label="Slot", info="the demo checkpoint it replaces, e.g. backbone",
                                     elem_id="promote-slot")
                promote_btn = gr.Button("Promote", elem_id="promote-button", scale=0)
            with gr.Row():
                repo_in = gr.Textbox(label="Hub repository", info="OWNER/NAME; the token comes from HF_TOKEN",
                                     elem_id="push-repo")
                private_in = gr.Checkbox(True, label="private", elem_id="push-private", scale=0)
                push_btn = gr.Button("Push checkpoint to the Hub", elem_id="push-button", scale=0)
            with gr.Row():
                promotion_select = gr.Dropdown(choices=actions.promotion_choices(), label="Promoted checkpoints",
                                               elem_id="unpromote-select", allow_custom_value=True)
                unpromote_btn = gr.Button("Un-promote", elem_id="unpromote-button", scale=0)
            action_msg = gr.Markdown(elem_id="action-message")
        cancel_btn.click(actions.cancel_run, [run_select, token_in], action_msg, api_name="cancel_run")
        resume_btn.click(actions.resume_run, [run_select, token_in], action_msg, api_name="resume_run")
        refresh_promotions = {"fn": lambda: gr.update(choices=actions.promotion_choices()), "inputs": None,
                              "outputs": promotion_select, "api_visibility": "private"}
        promote_btn.click(actions.promote_checkpoint, [artifact_select, slot_in, token_in], action_msg,
                          api_name="promote_checkpoint").then(**refresh_promotions)
        push_btn.click(actions.push_checkpoint, [artifact_select, repo_in, private_in, token_in], action_msg,
                       api_name="push_checkpoint")
        unpromote_btn.click(actions.unpromote_checkpoint, [promotion_select, token_in], action_msg,
                            api_name="unpromote_checkpoint").then(**refresh_promotions)
        # fast reads of the store, without a loading overlay: while a run trains, the polling table re-fires
        # these every few seconds, and on a busy machine the overlay kept the picker unclickable
        quiet = {"api_visibility": "private", "concurrency_limit": None, "show_progress": "hidden"}
        run_select.change(lambda rid: gr.update(choices=actions.checkpoint_choices(rid)), run_select,
                          artifact_select, **quiet)
        for chosen in run_chosen:
            chosen(lambda rid: gr.update(choices=actions.checkpoint_choices(rid), value=None), run_select,
                   artifact_select, **quiet)
        # a run picked while it was still training had no checkpoint then: opening the picker lists what the
        # run has saved since (seen in the browser test: a freshly queued run could not be promoted)
        artifact_select.focus(lambda rid: gr.update(choices=actions.checkpoint_choices(rid)), run_select,
                              artifact_select, **quiet)
        artifact_select.change(lambda aid: _default_slot(actions, aid), artifact_select, slot_in, **quiet)
    else:
        gr.Markdown(
            "**Training from the web UI is off.** Start the studio with `AVSTUDIO_ENABLE_TRAINING=1` to queue, "
            "cancel, resume and promote runs here (if `AVSTUDIO_ADMIN_TOKEN` is also set, these actions need that "
            "token); or use the CLI: `avstudio train METHOD RECIPE --set key=value`.",
            elem_id="training-disabled")

    gr.on([demo.load, timer.tick, refresh_btn.click], actions.runs_list, None, runs_table, api_name="runs_list", **fast)
    gr.on([demo.load, runs_table.change], lambda: [gr.update(choices=actions.run_choices())] * 2, None,
                      [run_select, compare_select], api_visibility="private", **fast)
    gr.on([run_select.change, timer.tick], actions.run_detail, run_select, detail, api_name="run_detail", **fast)
    run_select.change(lambda rid: gr.update(choices=actions.metric_keys(rid)), run_select, key_select,
                      api_visibility="private", **fast)
    for chosen in run_chosen:
        chosen(lambda rid: gr.update(choices=actions.metric_keys(rid), value=None), run_select, key_select,
               api_visibility="private", **fast)
    gr.on([run_select.change, key_select.change, timer.tick], actions.run_curves, [run_select, key_select],
          curves, api_name="run_curves", **fast)
    gr.api(actions.metrics_table, api_name="run_metrics")  # the same, as numbers, for scripts
    gr.on([run_select.change, refresh_btn.click], actions.run_images, run_select, images, api_name="run_images",
          **fast)
    compare_select.change(lambda ids: gr.update(choices=actions.compare_keys(ids)), compare_select, compare_key,
                          api_visibility="private", **fast)
    compare_btn.click(actions.compare_curves, [compare_select, compare_key], compare_plot, api_name="compare_curves",
                      **fast)
    gr.api(actions.compare_table, api_name="compare_runs")


def _row_run_id(evt: gr.SelectData) -> Any:
    row = evt.row_value or []
    return gr.update(value=int(row[0])) if row else gr.update()


def _default_slot(actions: RunsActions, artifact_id: Any) -> Any:
    if artifact_id in (None, ""):
        return gr.update()
    try:
        return gr.update(value=actions.store.get_artifact(int(artifact_id)).name)
    except (KeyError, ValueError):
        return gr.update()
