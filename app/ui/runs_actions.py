"""What the Runs tab can do, as plain methods over the run store (:class:`RunsActions`): list, show, chart and
compare runs, queue, cancel, resume and promote; tested without a browser. Each raises ``gr.Error`` with a
one-line message for anything a user can get wrong, never a traceback (:func:`user_errors`)."""

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
from app.ui.curves import curves_image
from trainer import config as configs
from trainer.devices import check_device_name
from trainer.gitinfo import current_commit
from trainer.store import RunStatus

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

    @user_errors
    def push_checkpoint(self, artifact_id: Any, repo_id: str | None, private: bool = True,
                        admin_token: str = "") -> str:
        """Push a run's checkpoint (its safetensors, the studio's card and a Hub model card) to a Hugging Face
        Hub model repository, with the token in ``HF_TOKEN`` (a Space secret); gated like promotion."""
        import tempfile

        from app import hub

        check_training_allowed(self.settings, admin_token)
        if artifact_id is None or artifact_id == "":
            raise UserError("pick a checkpoint artifact first")
        if not repo_id or "/" not in str(repo_id).strip():
            raise UserError("give the Hub repository as OWNER/NAME, e.g. my-name/s3pool-resnet")
        try:
            artifact = self.store.get_artifact(int(artifact_id))
        except (KeyError, ValueError):
            raise UserError(f"no checkpoint artifact {artifact_id!r}") from None
        source = hub.resolve_source(f"{artifact.run_id}/{artifact.name}", self.store, self.registry,
                                    self.settings.assets_dir)
        with tempfile.TemporaryDirectory() as work:
            url = hub.push(source, str(repo_id).strip(), self.registry, work, private=bool(private))
        return f"Pushed {artifact.name} of run #{artifact.run_id} to {str(repo_id).strip()}: {url}"

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
