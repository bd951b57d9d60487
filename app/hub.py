"""Checkpoints to and from Hugging Face Hub model repositories (``avstudio hub push`` / ``hub pull``,
``AVSTUDIO_HUB_MODELS`` at start-up).

Push: :func:`resolve_source` finds the checkpoint (a promoted or shipped ``METHOD/SLOT``, or a run's
``RUN_ID[/NAME]``), :func:`build_upload_folder` writes what the repository gets (``NAME.safetensors``,
the studio's card ``NAME.json`` and a ``README.md`` model card whose YAML metadata the Hub reads, made
with huggingface_hub's card classes), and :func:`upload_folder` sends it (``HfApi.create_repo`` +
``upload_folder``). The token comes from ``HF_TOKEN`` only; it is never logged, printed or stored.

Pull: :func:`download` fetches only ``*.safetensors``, ``*.json`` and ``README.md`` with ``snapshot_download``
and refuses a repository that carries pickles or code (``.bin``, ``.pt``, ``.pkl``, ``.py``, ... or a
``config.json`` with ``auto_map``); :func:`check_pulled` picks the checkpoint, checks its card's format
and that it belongs to the slot's method; :func:`pull` records it as a finished ``hub-pull`` run
(``trainer.imported``) and promotes it through :func:`app.promotion.promote_artifact`, so the slot's own
check runs as for ``avstudio runs promote``. Loading stays safetensors-only (``trainer.checkpoints``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import UserError
from trainer.checkpoints import CARD_FORMAT, Checkpoint, card_path, load_checkpoint, read_card

log = logging.getLogger("avstudio.hub")

LIBRARY_NAME = "adaptive-vision-studio"
ALLOW_PATTERNS = ["*.safetensors", "*.json", "README.md"]
# Files that can run code when loaded (pickles: torch.save, joblib, numpy object arrays) or are code.
REFUSED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5", ".hdf5",
                    ".keras", ".py", ".pyc", ".pyo", ".so", ".dll", ".dylib", ".sh", ".ipynb")
# The Hub task of each built-in method's checkpoints (a plugin may store ``pipeline_tag`` in its metadata).
PIPELINE_TAGS = {"blockdrop": "image-classification", "s3pool": "image-classification",
                 "multitask": "image-classification", "vgan": "unconditional-image-generation"}
# The studio's datasets that are Hub datasets; the procedural ones (shapes, persons) are named as they are.
HUB_DATASETS = {"cifar10": "uoft-cs/cifar10", "cifar100": "uoft-cs/cifar100", "mnist": "ylecun/mnist",
                "svhn": "ufldl-stanford/svhn"}
ARXIV_ID = re.compile(r"(?:arxiv\.org/(?:abs|pdf)/|arXiv:\s*)(\d{4}\.\d{4,5})", re.IGNORECASE)
SPLITS = {"val": "validation", "valid": "validation", "validation": "validation", "test": "test", "train": "train"}


# --------------------------------------------------------------------------------------------
# The token and Hub errors
# --------------------------------------------------------------------------------------------


def hub_token(required: bool) -> str | None:
    """``HF_TOKEN`` from the environment; a UserError when ``required`` and it is not set."""
    token = os.environ.get("HF_TOKEN", "").strip() or None
    if required and token is None:
        raise UserError("set HF_TOKEN to a Hugging Face token with write access (it is read from the environment "
                        "only, never stored)")
    return token


def _hub_error(what: str, exc: Exception, token: str | None) -> UserError:
    """A one-line UserError for a failed Hub call, with the token (if it ever appeared) blanked out."""
    message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if token:
        message = message.replace(token, "***")
    return UserError(f"{what}: {type(exc).__name__}: {message}")


# --------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------


@dataclass
class HubSource:
    """A checkpoint to push: its file and card, the method, and the name it gets in the repository."""

    path: Path
    card: dict[str, Any]
    method: str
    name: str
    origin: str  # "promoted", "shipped" or "run"
    run_id: int | None = None

    @property
    def studio(self) -> dict[str, Any]:
        return Checkpoint(self.path, {}, self.card).studio

    @property
    def metadata(self) -> dict[str, Any]:
        return Checkpoint(self.path, {}, self.card).metadata


def resolve_source(source: str, store: Any, registry: Any, assets_root: Path | str) -> HubSource:
    """The checkpoint ``source`` names: ``METHOD/SLOT`` (promoted, else shipped) or ``RUN_ID[/NAME]``.

    Raises UserError when there is no such checkpoint.
    """
    from app.demo_context import CheckpointLookup
    from app.promotion import choose_artifact

    text = str(source).strip()
    head, _, tail = text.partition("/")
    if head.isdigit():
        run_id = int(head)
        try:
            run = store.get_run(run_id)
        except KeyError:
            raise UserError(f"no run {run_id}; `avstudio runs list` shows the runs") from None
        artifact = choose_artifact(store, run_id, tail or None)
        path = Path(artifact.path)
        if not path.is_file():
            raise UserError(f"run {run_id}'s checkpoint file {path} is not on this machine")
        return HubSource(path, read_card(path), run.method, artifact.name, "run", run_id)
    if not head or not tail or "/" in tail:
        raise UserError(f"expected METHOD/SLOT or RUN_ID[/NAME], got {text!r}")
    method = registry.method(head)  # a UserError naming the methods when unknown
    lookup = CheckpointLookup(registry, store, assets_root)
    path = lookup.path(method.slug, tail)
    if path is None:
        names = ", ".join(c.name for c in lookup.available(method.slug)) or "(none)"
        raise UserError(f"{method.slug} has no promoted or shipped checkpoint {tail!r}; it has: {names}")
    promoted = store.promoted(method.slug, tail) if store is not None else None
    if promoted is not None and Path(promoted.path) == path:
        return HubSource(path, read_card(path), method.slug, tail, "promoted", promoted.run_id)
    return HubSource(path, read_card(path), method.slug, tail, "shipped")


def arxiv_id(method: Any) -> str | None:
    """The arXiv id of a method's paper (from ``paper_url``, else ``arXiv:ID`` in ``paper``), or None."""
    for text in (getattr(method, "paper_url", ""), getattr(method, "paper", "")):
        match = ARXIV_ID.search(text or "")
        if match:
            return match.group(1)
    return None


def _format_value(value: Any) -> str:
    """A config value as ``avstudio train --set key=VALUE`` reads it (lists comma-separated)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_format_value(v) for v in value)
    return str(value)


def train_command(studio: Mapping[str, Any]) -> str | None:
    """The ``avstudio train`` command that reproduces a checkpoint's run, from its card (None without one)."""
    method, recipe, config = studio.get("method"), studio.get("recipe"), studio.get("config")
    if not method or not recipe or recipe == "hub-pull":
        return None
    parts = ["avstudio", "train", str(method), str(recipe)]
    for key, value in (config or {}).items() if isinstance(config, Mapping) else ():
        if value is not None and not isinstance(value, Mapping):
            parts += ["--set", f"{key}={_format_value(value)}"]
    return " ".join(shlex.quote(p) for p in parts)


def _split_of(key: str, default: str | None) -> str | None:
    prefix = key.split("_", 1)[0].lower() if "_" in key else ""
    return SPLITS.get(prefix) or (SPLITS.get(str(default).lower()) if default else None)


def _metrics(studio: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, float]:
    raw = studio.get("metrics") or metadata.get("metrics") or {}
    return {str(k): float(v) for k, v in sorted(raw.items()) if isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(float(v))} if isinstance(raw, Mapping) else {}


README_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A **{{ method_title }}** checkpoint (`{{ method }}/{{ name }}`) saved by Adaptive Vision Studio (`avstudio`),
which shows and retrains adaptive, efficient vision networks. {{ summary }}

Paper: [{{ paper }}]({{ paper_link }}){% if arxiv %} (arXiv:{{ arxiv }}){% endif %}.

{% if slot_description %}In the studio's {{ method }} demo it fills the checkpoint slot `{{ slot_pattern }}`: {{ slot_description }}.
{% endif %}
## Files

- `{{ name }}.safetensors`: the tensors, as safetensors (loading it runs no code).
- `{{ name }}.json`: the studio's card (format {{ card_format }}): the run's method, recipe, config, dataset,
  commit, device and final metrics (`studio`), and what the plugin stored to rebuild the network (`metadata`).

## Use it in the studio

```bash
avstudio hub pull {{ repo_id }} --slot {{ method }}/{{ name }}
```

The pull downloads only `*.safetensors`, `*.json` and `README.md`, checks the card and the slot's own check,
and promotes it: the {{ method }} demo then uses it. A Space can pull it at start-up with
`AVSTUDIO_HUB_MODELS={{ repo_id }}`.

## Reproduce it

{% if command %}```bash
{{ command }}
```
{% else %}The card records no recipe to train it again.
{% endif %}
{% if provenance %}Trained {{ provenance }}.
{% endif %}
## Training data

{{ dataset_text }}

## Metrics

{% if metrics %}Final values logged by the run (from the card; also in this card's `model-index`):

| metric | split | value |
|---|---|---|
{% for m in metrics %}| `{{ m.key }}` | {{ m.split or "-" }} | {{ m.value }} |
{% endfor %}{% else %}The card records no metrics.
{% endif %}"""


def model_card(source: HubSource, repo_id: str, registry: Any) -> Any:
    """The repository's ``README.md``: a huggingface_hub ``ModelCard`` whose ``ModelCardData`` the Hub reads
    (``library_name``, ``tags`` with the paper's ``arxiv:`` id, ``datasets``, ``pipeline_tag`` where one
    fits, the metrics as ``model-index`` via ``EvalResult``) and whose text says how to use and reproduce it."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    studio, metadata = source.studio, source.metadata
    method = registry.methods.get(source.method)
    arxiv = arxiv_id(method) if method is not None else None
    pipeline_tag = metadata.get("pipeline_tag") or PIPELINE_TAGS.get(source.method)
    dataset = studio.get("dataset") or metadata.get("dataset") or (studio.get("config") or {}).get("dataset")
    spec = registry.datasets.get(dataset) if dataset else None
    hub_dataset = HUB_DATASETS.get(dataset, dataset) if dataset else None
    metrics = _metrics(studio, metadata)
    eval_split = metadata.get("eval_split")
    tags = [LIBRARY_NAME, source.method, "safetensors", "pytorch"]
    if arxiv:
        tags.append(f"arxiv:{arxiv}")
    if pipeline_tag and pipeline_tag not in tags:
        tags.append(pipeline_tag)
    eval_results = [
        EvalResult(task_type=pipeline_tag or source.method, dataset_type=hub_dataset,
                   dataset_name=getattr(spec, "title", None) or str(dataset), metric_type=key, metric_name=key,
                   metric_value=round(value, 6), dataset_split=_split_of(key, eval_split))
        for key, value in metrics.items()] if hub_dataset else None
    data = ModelCardData(library_name=LIBRARY_NAME, tags=tags, datasets=[hub_dataset] if hub_dataset else None,
                         pipeline_tag=pipeline_tag, model_name=f"{source.method}-{source.name}",
                         eval_results=eval_results or None)
    declared = method.slot(source.name) if method is not None else None
    if spec is not None and dataset not in HUB_DATASETS and getattr(spec, "builtin", False):
        dataset_text = (f"`{dataset}`: {spec.description} It is generated by the studio from a seed "
                        f"(`avstudio datasets show {dataset}`), not a Hub dataset.")
    elif dataset:
        dataset_text = f"`{dataset}`" + (f" ({spec.title})" if spec is not None else "") + "."
    else:
        dataset_text = "The card does not name a dataset."
    where = [f"on {studio['device']}" if studio.get("device") else "",
             f"with torch {studio['torch']}" if studio.get("torch") else "",
             f"at commit `{studio['commit']}`" if studio.get("commit") else "",
             f"as run {studio['run_id']} of the studio that trained it" if studio.get("run_id") is not None else "",
             f"({studio['created']})" if studio.get("created") else ""]
    return ModelCard.from_template(
        data, template_str=README_TEMPLATE, title=f"{getattr(method, 'title', source.method)}: {source.name}",
        method=source.method, method_title=getattr(method, "title", source.method), name=source.name,
        summary=getattr(method, "summary", "") or "", paper=getattr(method, "paper", "") or "",
        paper_link=(getattr(method, "paper_url", "") or (f"https://arxiv.org/abs/{arxiv}" if arxiv else "")),
        arxiv=arxiv, repo_id=repo_id, card_format=source.card.get("format", 1),
        slot_pattern=getattr(declared, "name", source.name), slot_description=getattr(declared, "description", ""),
        command=train_command(studio), provenance=" ".join(w for w in where if w), dataset_text=dataset_text,
        metrics=[{"key": k, "value": f"{v:.4g}", "split": _split_of(k, eval_split)} for k, v in metrics.items()])


def build_upload_folder(source: HubSource, folder: Path | str, repo_id: str, registry: Any) -> Path:
    """Write what the repository gets into ``folder`` (created; must be empty): ``NAME.safetensors``,
    ``NAME.json`` (the studio's card, as it is) and ``README.md`` (:func:`model_card`). Returns ``folder``.

    Refuses (UserError) a file that is not a safetensors checkpoint or has no card.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise UserError(f"{folder} is not empty")
    try:
        load_checkpoint(source.path)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"cannot push {source.path}: {exc}") from None
    if not card_path(source.path).is_file() or not source.card:
        raise UserError(f"cannot push {source.path}: it has no studio card ({card_path(source.path).name})")
    shutil.copyfile(source.path, folder / f"{source.name}.safetensors")
    shutil.copyfile(card_path(source.path), folder / f"{source.name}.json")
    model_card(source, repo_id, registry).save(folder / "README.md")
    return folder


def upload_folder(folder: Path | str, repo_id: str, *, private: bool, token: str | None,
                  repo_type: str = "model", commit_message: str = "Upload from Adaptive Vision Studio",
                  delete_patterns: list[str] | None = None) -> str:
    """Create the repository if needed and upload ``folder`` to it in one commit (deleting the repository's
    files that match ``delete_patterns`` and are not in ``folder``); returns the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token, library_name=LIBRARY_NAME)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=str(folder),
                                 commit_message=commit_message, delete_patterns=delete_patterns)
    except Exception as exc:  # HTTP, auth, network: one line, token blanked
        raise _hub_error(f"upload to {repo_id} failed", exc, token) from None
    return str(getattr(info, "commit_url", None) or info)


def push(source: HubSource, repo_id: str, registry: Any, work_dir: Path | str, *, private: bool) -> str:
    """Build the upload folder under ``work_dir`` and upload it with ``HF_TOKEN``; returns the commit URL."""
    token = hub_token(required=True)
    folder = build_upload_folder(source, Path(work_dir) / "upload", repo_id, registry)
    return upload_folder(folder, repo_id, private=private, token=token)


# --------------------------------------------------------------------------------------------
# Pull
# --------------------------------------------------------------------------------------------


def parse_repo_ref(ref: str) -> tuple[str, str | None]:
    """``REPO_ID[@REVISION]`` → (repo id, revision or None)."""
    text = str(ref).strip()
    repo_id, at, revision = text.partition("@")
    if not repo_id or (at and not revision) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id):
        raise UserError(f"expected a Hub model repository as OWNER/NAME[@REVISION], got {text!r}")
    return repo_id, revision or None


def refused_files(names: list[str]) -> list[str]:
    """The files of a repository that the studio refuses to pull: pickles and code."""
    return sorted(n for n in names if n.lower().endswith(REFUSED_SUFFIXES))


def _refuse_code(names: list[str], repo_id: str, folder: Path | None = None) -> None:
    refused = refused_files(names)
    if not refused and folder is not None and (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text())
        except ValueError:
            config = {}
        if isinstance(config, dict) and "auto_map" in config:
            refused = ["config.json (auto_map: custom code)"]
    if refused:
        shown = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
        raise UserError(f"refusing to pull {repo_id}: it carries pickles or code ({shown}); the studio loads "
                        "only safetensors checkpoints with a JSON card")


def _files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def download(repo_id: str, revision: str | None = None, *, cache_dir: Path | str | None = None,
             token: str | None = None) -> Path:
    """Download (or find in the Hub cache) the checkpoint files of ``repo_id``: ``*.safetensors``, ``*.json``
    and ``README.md`` only. Returns the snapshot folder. With ``HF_HUB_OFFLINE=1`` the cache alone is read.

    Online, the repository's file list is checked first; the snapshot folder is checked in any case (a cached
    snapshot may hold more than these patterns). Either refuses (UserError) pickles and code.
    """
    from huggingface_hub import HfApi, is_offline_mode, snapshot_download

    if not is_offline_mode():
        try:
            names = HfApi(token=token, library_name=LIBRARY_NAME).list_repo_files(repo_id, revision=revision)
        except Exception as exc:
            raise _hub_error(f"cannot list {repo_id}", exc, token) from None
        _refuse_code(list(names), repo_id)
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                        allow_patterns=ALLOW_PATTERNS, library_name=LIBRARY_NAME))
    except Exception as exc:
        raise _hub_error(f"cannot download {repo_id}" + (f"@{revision}" if revision else ""), exc, token) from None
    _refuse_code(_files_under(folder), repo_id, folder)
    return folder


@dataclass
class Pulled:
    """A checked checkpoint of a downloaded repository and the slot it goes to."""

    path: Path
    card: dict[str, Any]
    method: str
    slot: str
    file: str  # its path in the repository


def check_card(card: Any, name: str) -> dict[str, Any]:
    """The card, if it is a studio card: a JSON object, format 1 (flat) or 2 (``studio`` + ``metadata``)."""
    if not isinstance(card, dict) or not card:
        raise UserError(f"{name} has no studio card (a JSON object beside the .safetensors)")
    fmt = card.get("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or not 1 <= fmt <= CARD_FORMAT:
        raise UserError(f"{name}'s card has format {fmt!r}; this studio reads formats 1 to {CARD_FORMAT}")
    if fmt >= 2 and not (isinstance(card.get("studio"), dict) and isinstance(card.get("metadata"), dict)):
        raise UserError(f"{name}'s card (format {fmt}) needs a 'studio' and a 'metadata' object")
    return card


def check_pulled(folder: Path | str, repo_id: str, registry: Any, slot: str | None = None) -> Pulled:
    """Choose the checkpoint of a downloaded repository and check its card, for ``slot`` (``METHOD/SLOT``;
    default: the card's method and checkpoint name). Raises UserError with the reason."""
    folder = Path(folder)
    files = [p for p in sorted(folder.rglob("*.safetensors")) if p.is_file()]
    if not files:
        raise UserError(f"{repo_id} has no .safetensors checkpoint")
    method = slot_name = None
    if slot:
        method, sep, slot_name = str(slot).strip().partition("/")
        if not sep or not method or not slot_name or "/" in slot_name:
            raise UserError(f"expected --slot METHOD/SLOT, got {slot!r}")
    if len(files) == 1:
        chosen = files[0]
    else:
        chosen = next((p for p in files if p.stem == slot_name), None)
        if chosen is None:
            names = ", ".join(p.relative_to(folder).as_posix() for p in files)
            raise UserError(f"{repo_id} holds several checkpoints ({names}); choose one with --slot METHOD/NAME")
    rel = chosen.relative_to(folder).as_posix()
    try:
        card = json.loads(card_path(chosen).read_text())
    except FileNotFoundError:
        card = None
    except ValueError as exc:
        raise UserError(f"{rel}'s card is not JSON: {exc}") from None
    card = check_card(card, rel)
    studio = Checkpoint(chosen, {}, card).studio
    card_method = studio.get("method")
    method = method or card_method
    slot_name = slot_name or studio.get("checkpoint") or chosen.stem
    if not method:
        raise UserError(f"{rel}'s card names no method; say which slot it fills with --slot METHOD/SLOT")
    if card_method and card_method != method:
        raise UserError(f"{rel} is a {card_method} checkpoint (its card says so); it cannot fill {method}/{slot_name}")
    declared = registry.method(method).slot(slot_name)
    if declared is None:
        slots = ", ".join(s.name for s in registry.method(method).checkpoint_slots) or "(none)"
        raise UserError(f"{method} has no checkpoint slot {slot_name!r}; its demo reads: {slots}")
    return Pulled(chosen, card, method, slot_name, rel)


def pull(ref: str, store: Any, registry: Any, runs_dir: Path | str, *, slot: str | None = None,
         cache_dir: Path | str | None = None) -> Any:
    """Download ``REPO_ID[@REVISION]``, check it, record it as a ``hub-pull`` run and promote it into
    ``slot`` (``METHOD/SLOT``; default: from its card). Returns :class:`app.promotion.Promoted`.

    The same file (same repository commit) pulled again is promoted again, not copied twice.
    """
    from app.promotion import promote_artifact
    from trainer.imported import find_imported, import_checkpoint

    repo_id, revision = parse_repo_ref(ref)
    folder = download(repo_id, revision, cache_dir=cache_dir, token=hub_token(required=False))
    pulled = check_pulled(folder, repo_id, registry, slot)
    source = {"repo": repo_id, "revision": revision or "main", "commit": folder.name, "file": pulled.file}
    artifact = find_imported(store, pulled.method, source)
    if artifact is None:
        declared = registry.method(pulled.method).slot(pulled.slot)
        try:  # safetensors only (a pickle is refused unread), whether or not the slot has a check
            checkpoint = load_checkpoint(pulled.path)
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(f"cannot use {pulled.file} of {repo_id}: {exc}") from None
        if declared.check is not None:  # the check promotion runs, first, so a refusal leaves nothing behind
            try:
                declared.check(checkpoint)
            except UserError as exc:
                raise UserError(f"cannot promote {pulled.file} of {repo_id} as {pulled.method}/{pulled.slot}: "
                                f"{exc}") from None
            except Exception as exc:
                raise UserError(f"cannot promote {pulled.file} of {repo_id} as {pulled.method}/{pulled.slot}: "
                                f"{type(exc).__name__}: {exc}".splitlines()[0]) from None
        artifact = import_checkpoint(store, runs_dir, pulled.method, Path(pulled.file).stem, pulled.path,
                                     pulled.card, source)
    return promote_artifact(store, registry, artifact.id, pulled.slot)


def parse_hub_models(value: str | None) -> list[tuple[str, str | None]]:
    """``AVSTUDIO_HUB_MODELS``: comma-separated ``REPO_ID[@REVISION][=METHOD/SLOT]`` → (ref, slot or None)."""
    entries = []
    for item in (value or "").split(","):
        item = item.strip()
        if item:
            ref, _, slot = item.partition("=")
            parse_repo_ref(ref)  # a UserError for a malformed entry
            entries.append((ref.strip(), slot.strip() or None))
    return entries


def hub_models(env: Mapping[str, str] | None = None) -> list[str]:
    """The repository ids ``AVSTUDIO_HUB_MODELS`` names (for the Space's ``models`` metadata)."""
    env = os.environ if env is None else env
    return [parse_repo_ref(ref)[0] for ref, _ in parse_hub_models(env.get("AVSTUDIO_HUB_MODELS"))]


def pull_at_startup(settings: Any, registry: Any, env: Mapping[str, str] | None = None,
                    cache_dir: Path | str | None = None) -> list[str]:
    """Pull and promote every model of ``AVSTUDIO_HUB_MODELS``; returns one line per model. A model that
    cannot be pulled is logged (one line) and skipped: the demos keep their shipped checkpoints."""
    env = os.environ if env is None else env
    try:
        entries = parse_hub_models(env.get("AVSTUDIO_HUB_MODELS"))
    except UserError as exc:
        log.warning("AVSTUDIO_HUB_MODELS: %s", exc)
        return [f"AVSTUDIO_HUB_MODELS: {exc}"]
    if not entries:
        return []
    lines = []
    store = settings.open_store()
    try:
        for ref, slot in entries:
            try:
                lines.append(pull(ref, store, registry, settings.runs_dir, slot=slot, cache_dir=cache_dir).message())
                log.info("%s", lines[-1])
            except UserError as exc:
                lines.append(f"{ref}: {exc}")
                log.warning("AVSTUDIO_HUB_MODELS: %s: %s", ref, exc)
    finally:
        store.close()
    return lines
