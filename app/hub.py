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
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import UserError
from app.hub_card import LIBRARY_NAME, model_card
from trainer.checkpoints import CARD_FORMAT, Checkpoint, card_path, load_checkpoint, read_card

log = logging.getLogger("avstudio.hub")

ALLOW_PATTERNS = ["*.safetensors", "*.json", "README.md"]
# Files that can run code when loaded (pickles: torch.save, joblib, numpy object arrays) or are code.
REFUSED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5", ".hdf5",
                    ".keras", ".py", ".pyc", ".pyo", ".so", ".dll", ".dylib", ".sh", ".ipynb")



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


def build_upload_folder(source: HubSource, folder: Path | str, repo_id: str, registry: Any) -> Path:
    """Write what the repository gets into ``folder`` (created; must be empty): ``NAME.safetensors``,
    ``NAME.json`` (the studio's card, as it is) and ``README.md`` (:func:`app.hub_card.model_card`). Returns ``folder``.

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
