"""``avstudio hub push`` and ``avstudio hub pull``: checkpoints to and from Hugging Face Hub model
repositories (the work is in :mod:`app.hub`; ``app/cli.py`` adds this group)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from app.cli_common import _registry, _settings


@click.group()
def hub() -> None:
    """Push checkpoints to, and pull them from, Hugging Face Hub model repositories (token: HF_TOKEN)."""


@hub.command("push")
@click.argument("source")
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repository private (an existing one keeps its visibility).")
@click.option("--dry-run", "dry_run", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Only write the upload folder to DIR (empty or new); upload nothing.")
def hub_push(source: str, repo_id: str, private: bool, dry_run: Path | None) -> None:
    """Push SOURCE to the Hub model repository REPO_ID (OWNER/NAME).

    SOURCE is METHOD/SLOT (the promoted checkpoint, else the shipped one) or RUN_ID[/NAME] (a run's
    checkpoint). The repository gets NAME.safetensors, the studio's card NAME.json and a README.md model
    card (metadata the Hub reads: library, tags with the paper's arXiv id, dataset, task, metrics as
    model-index, the command that reproduces it). The token is read from HF_TOKEN and never stored.
    """
    from app import hub as hub_module

    settings = _settings()
    registry = _registry()
    hub_module.parse_repo_ref(repo_id)
    if "@" in repo_id:
        raise click.BadParameter("push to a repository, not a revision", param_hint="REPO_ID")
    store = settings.open_store()
    try:
        chosen = hub_module.resolve_source(source, store, registry, settings.assets_dir)
    finally:
        store.close()
    if dry_run is not None:
        folder = hub_module.build_upload_folder(chosen, dry_run, repo_id, registry)
        for path in sorted(folder.iterdir()):
            click.echo(str(path))
        return
    with tempfile.TemporaryDirectory(prefix="avstudio-hub-") as work:
        url = hub_module.push(chosen, repo_id, registry, work, private=private)
    click.echo(f"pushed {chosen.method}/{chosen.name} ({chosen.origin}"
               + (f", run {chosen.run_id}" if chosen.run_id is not None else "") + f") to {repo_id}: {url}")


@hub.command("pull")
@click.argument("ref", metavar="REPO_ID[@REVISION]")
@click.option("--slot", default=None, metavar="METHOD/SLOT",
              help="The demo slot it fills (default: the method and checkpoint name its card records).")
def hub_pull(ref: str, slot: str | None) -> None:
    """Download a checkpoint from a Hub model repository, check it and promote it into a demo's slot.

    Only *.safetensors, *.json and README.md are downloaded; a repository with pickles or code (.bin, .pt,
    .pkl, .py, ...) is refused. The pull is recorded as a finished run (recipe hub-pull) with the file as
    its checkpoint, so `avstudio runs unpromote METHOD SLOT` undoes it. HF_HUB_OFFLINE=1 reads the cache only.
    """
    from app import hub as hub_module

    settings = _settings()
    registry = _registry()
    store = settings.open_store()
    try:
        done = hub_module.pull(ref, store, registry, settings.runs_dir, slot=slot)
    finally:
        store.close()
    click.echo(done.message())
