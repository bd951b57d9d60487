"""The Runs tab: a live table of runs, metric curves, comparison, and (when enabled) training controls.

The handlers live in :class:`RunsActions` as plain methods over the run store, so they are tested
without a browser; each raises ``gr.Error`` with a one-line message for anything a user can get
wrong, never a traceback.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

import gradio as gr
import pandas as pd

from app.errors import UserError
from app.promotion import promote_artifact, promotions_of_run, unpromote
from app.safety import check_config_files, check_training_allowed
from app.ui.curves import MAX_PANELS, curves_image
from trainer import config as configs
from trainer.devices import check_device_name
from trainer.gitinfo import current_commit
from trainer.store import RunStatus

POLL_S = 2.0
DEVICES = ("auto", "cpu", "cuda", "mps")
RUN_COLUMNS = ["id", "method", "recipe", "status", "progress %", "device", "host", "created", "latest metrics"]


def user_errors(fn: Callable) -> Callable:
    """Turn the errors a user can cause (bad values, unknown runs) into a gr.Error with one line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (UserError, KeyError, ValueError, FileNotFoundError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            # a user's mistake: one line for the user, and no traceback in the server log
            raise gr.Error(str(message).splitlines()[0] if str(message) else type(exc).__name__,
                           print_exception=False) from None

    return wrapper


def _run_id(value: Any, *, required: bool = True) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise UserError("pick a run first")
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"not a run id: {value!r}") from None


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def _metrics_text(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


def _empty_curve(color: str) -> pd.DataFrame:
    return pd.DataFrame({"step": pd.Series(dtype="int64"), "value": pd.Series(dtype="float64"),
                         color: pd.Series(dtype="object")})


DRAWN_KEPT = 16  # curve pictures kept for the polling Runs tabs (a few runs × metrics)


def _table_dict(frame: pd.DataFrame) -> dict[str, Any]:
    return {"headers": list(frame.columns), "data": frame.astype(object).values.tolist()}


class RunsActions:
    """What the Runs tab (and its API endpoints) can do with the run store."""

    def __init__(self, store: Any, registry: Any, settings: Any) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        # the last pictures drawn, by (run, key): the tab polls every 2 s, and a run's curves change only
        # when it logs a point (metrics are only ever added, so their count tells)
        self._drawn: OrderedDict[tuple[Any, Any], tuple[int, Any]] = OrderedDict()

    # -- reads ---------------------------------------------------------------------------------
    def runs_list(self) -> pd.DataFrame:
        """The newest runs, one row each: id, method, recipe, status, progress %, device, the host of the
        worker that ran it, created, metrics."""
        rows = [[r.id, r.method, r.recipe, r.status, round(100.0 * (r.progress or 0.0), 1), r.device, r.host or "",
                 _when(r.created_at), _metrics_text(r.latest_metrics)] for r in self.store.list_runs(limit=200)]
        return pd.DataFrame(rows, columns=RUN_COLUMNS)

    def run_choices(self) -> list[tuple[str, int]]:
        """(label, id) pairs for the run pickers."""
        return [(f"#{r.id} {r.method}/{r.recipe} · {r.status}", r.id) for r in self.store.list_runs(limit=200)]

    @user_errors
    def run_detail(self, run_id: Any) -> dict[str, Any]:
        """Everything about one run: status, progress, config, error, latest metrics, artifacts."""
        rid = _run_id(run_id, required=False)
        if rid is None:
            return {}
        run = self.store.get_run(rid)
        promoted = promotions_of_run(self.store, rid)
        # "file", not "path": gradio_client takes any {"path": ...} dict for a file to download.
        artifacts = [{"id": a.id, "name": a.name, "kind": a.kind, "file": a.path,
                      "promoted_as": ", ".join(promoted.get(a.id, [])) or None} for a in self.store.artifacts(rid)]
        return {
            "id": run.id, "method": run.method, "recipe": run.recipe, "status": run.status,
            "progress": f"{100.0 * (run.progress or 0.0):.1f}% {run.progress_desc or ''}".strip(),
            "device": run.device, "host": run.host, "commit": run.commit, "created": _when(run.created_at),
            "started": _when(run.started_at), "finished": _when(run.finished_at),
            "resumed": run.resume_count, "cancel_requested": run.cancel_requested,
            "error": run.error, "config": run.config, "latest_metrics": run.latest_metrics,
            "artifacts": artifacts,
        }

    @user_errors
    def metric_keys(self, run_id: Any) -> list[str]:
        rid = _run_id(run_id, required=False)
        return [] if rid is None else self.store.metric_keys(rid)

    @user_errors
    def run_metrics(self, run_id: Any, key: str | None = None) -> pd.DataFrame:
        """The metric history of one run as a long table (step, value, key); all keys when ``key`` is empty."""
        rid = _run_id(run_id, required=False)
        if rid is None:
            return _empty_curve("key")
        points = self.store.metrics(rid, [key] if key else None)
        if not points:
            return _empty_curve("key")
        return pd.DataFrame({"step": [p.step for p in points], "value": [p.value for p in points],
                             "key": [p.key for p in points]})

    @user_errors
    def run_curves(self, run_id: Any, key: str | None = None) -> Any:
        """The run's metrics drawn as one picture, a panel per key (all keys when ``key`` is empty)."""
        frame = self.run_metrics(run_id, key)
        rid = _run_id(run_id, required=False)
        drawn = self._drawn.get((rid, key or None))
        if drawn is not None and drawn[0] == len(frame):
            return drawn[1]
        image = curves_image({k: {f"#{rid}": list(zip(g["step"], g["value"], strict=True))}
                              for k, g in frame.groupby("key", sort=True)})
        self._drawn[(rid, key or None)] = (len(frame), image)
        while len(self._drawn) > DRAWN_KEPT:
            self._drawn.popitem(last=False)
        return image

    @user_errors
    def compare_curves(self, run_ids: list[Any] | None, key: str | None) -> Any:
        """One metric of several runs drawn as one panel, a line per run."""
        frame = self.compare_runs(run_ids, key)
        return curves_image({key: {r: list(zip(g["step"], g["value"], strict=True))
                                   for r, g in frame.groupby("run", sort=False)}})

    @user_errors
    def metrics_table(self, run_id: Any, key: str | None = None) -> dict[str, Any]:
        """``run_metrics`` for scripts (the ``run_metrics`` API): {"headers": [...], "data": rows}."""
        return _table_dict(self.run_metrics(run_id, key))

    @user_errors
    def compare_table(self, run_ids: list[Any] | None, key: str | None) -> dict[str, Any]:
        """``compare_runs`` for scripts (the ``compare_runs`` API): {"headers": [...], "data": rows}."""
        return _table_dict(self.compare_runs(run_ids, key))

    @user_errors
    def compare_runs(self, run_ids: list[Any] | None, key: str | None) -> pd.DataFrame:
        """One metric of several runs as one long table (step, value, run), for a plot with a line per run."""
        if not key:
            raise UserError("pick a metric to compare")
        frames = []
        for value in run_ids or []:
            run = self.store.get_run(_run_id(value))
            points = self.store.metrics(run.id, [key])
            label = f"#{run.id} {run.method}/{run.recipe}"
            frames.append(pd.DataFrame({"step": [p.step for p in points], "value": [p.value for p in points],
                                        "run": [label] * len(points)}))
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else _empty_curve("run")

    def compare_keys(self, run_ids: list[Any] | None) -> list[str]:
        keys: set[str] = set()
        for value in run_ids or []:
            try:
                keys.update(self.store.metric_keys(int(value)))
            except (KeyError, TypeError, ValueError):
                continue
        return sorted(keys)

    def run_images(self, run_id: Any, limit: int = 24) -> list[tuple[Any, str]]:
        """The images a run saved (``ctx.save_image``), newest first, as (image, caption) pairs."""
        from PIL import Image

        rid = _run_id(run_id, required=False)
        if rid is None:
            return []
        shown = []
        for artifact in self.store.artifacts(rid, kind="image")[:limit]:
            try:  # images are read here (not served by path): nothing outside the gallery is exposed
                with Image.open(artifact.path) as image:
                    shown.append((image.convert("RGB"), artifact.name))
            except OSError:  # deleted or half-written: skip it, the next refresh shows it
                continue
        return shown

    def checkpoint_choices(self, run_id: Any) -> list[tuple[str, int]]:
        rid = _run_id(run_id, required=False)
        if rid is None:
            return []
        try:
            return [(f"{a.name} (artifact {a.id})", a.id) for a in self.store.artifacts(rid, kind="checkpoint")]
        except KeyError:
            return []

    # -- writes (training controls) -----------------------------------------------------------
    # Each one checks, here and not only in the layout, that the studio lets the web UI train and
    # that ``admin_token`` is AVSTUDIO_ADMIN_TOKEN when one is set: an API call reaches these directly.
    @user_errors
    def queue_run(self, method: str, recipe: str, config: str | dict | None = None,
                  device: str = "auto", admin_token: str = "") -> int:
        """Queue a run of ``method``'s ``recipe`` with ``config`` (a dict or JSON object text); returns its id.

        The config is validated against the recipe's dataclass (a gr.Error names the valid keys/choices),
        and may name files only under the studio's home; nothing is queued when a value is refused.
        """
        check_training_allowed(self.settings, admin_token)
        if not method:
            raise UserError("pick a method")
        if not recipe:
            raise UserError("pick a recipe")
        spec = self.registry.recipe(method, recipe)
        if isinstance(config, str):
            try:
                config = json.loads(config) if config.strip() else {}
            except json.JSONDecodeError as exc:
                raise UserError(f"config is not valid JSON: {exc.msg} (line {exc.lineno})") from None
        if config is not None and not isinstance(config, dict):
            raise UserError("config must be a JSON object like {\"epochs\": 3}")
        device = check_device_name(device or "auto")
        typed = configs.make_config(spec.config_cls, config or {})
        values = configs.config_to_dict(typed)
        check_config_files(values, [self.settings.home, self.settings.data_dir])
        return self.store.enqueue(method, recipe, values, device=device, commit=current_commit())

    @user_errors
    def cancel_run(self, run_id: Any, admin_token: str = "") -> str:
        """Ask a run to stop (a queued one is cancelled at once)."""
        check_training_allowed(self.settings, admin_token)
        run = self.store.request_cancel(_run_id(run_id))
        if run.status == RunStatus.CANCELLED:
            return f"Run #{run.id} cancelled."
        return f"Run #{run.id} will stop at its next check."

    @user_errors
    def resume_run(self, run_id: Any, admin_token: str = "") -> str:
        """Put an interrupted, failed or cancelled run back in the queue to resume from its last checkpoint."""
        check_training_allowed(self.settings, admin_token)
        run = self.store.requeue_for_resume(_run_id(run_id))
        return f"Run #{run.id} queued to resume (resume #{run.resume_count})."

    @user_errors
    def promote_checkpoint(self, artifact_id: Any, slot: str | None = None, admin_token: str = "") -> str:
        """Make a checkpoint artifact the one its method's demo uses for ``slot`` (default: the artifact's name).

        Only a slot the method declares, and only a checkpoint the slot accepts (same architecture).
        """
        check_training_allowed(self.settings, admin_token)
        if artifact_id is None or artifact_id == "":
            raise UserError("pick a checkpoint artifact first")
        done = promote_artifact(self.store, self.registry, artifact_id, slot)
        return (f"Promoted {done.artifact_name} of run #{done.run_id}: the {done.method} demo now uses it "
                f"for {done.slot!r}.")

    def promotion_choices(self) -> list[tuple[str, str]]:
        """(label, "method/slot") of every current promotion, for the un-promote picker."""
        return [(f"{m}/{s} ← run #{a.run_id} {a.name}", f"{m}/{s}") for (m, s), a in self.store.promotions().items()]

    @user_errors
    def unpromote_checkpoint(self, promotion: str | None, admin_token: str = "") -> str:
        """Forget a promotion (``"method/slot"``): the demo goes back to the shipped checkpoint."""
        check_training_allowed(self.settings, admin_token)
        method, sep, slot = (promotion or "").partition("/")
        if not sep or not method or not slot:
            raise UserError("pick a promotion (method/slot) first")
        return unpromote(self.store, method, slot)


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------


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
