"""`vsearch backup DIR`, `vsearch restore DIR` and `vsearch migrate`: run beside the deployment (they
read its Redis and data directory from the VSEARCH_ settings), not through the gateway."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("backup")
@click.argument("out", type=click.Path(path_type=Path))
def backup_cmd(out: Path):
    """Copy the indexed images (records, vectors, originals) and index state into OUT (new)."""
    from services.backup import backup
    from services.config import Settings
    from services.store import Store
    if out.exists():
        raise click.ClickException(f"{out} exists: a backup goes into a new directory")
    settings = Settings.from_env()
    manifest = backup(Store.from_settings(settings), settings, out)
    click.echo(f"backed up {manifest['images']} images to {out}")


@click.command("restore")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
def restore_cmd(src: Path):
    """Load a backup from SRC into this (empty) deployment and build its indexes."""
    from services.backup import restore
    from services.config import Settings
    from services.store import Store
    settings = Settings.from_env()
    try:
        manifest = restore(Store.from_settings(settings), settings, src)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"restored {manifest['images']} images from {src}")


@click.command("migrate")
@click.option("--batch", default=500, show_default=True, help="Images moved per step.")
def migrate_cmd(batch: int):
    """Move vectors, layouts and keypoints from Redis into the segment files on the data volume
    (deployments made before they moved there). Resumable: run it again after an interruption."""
    from services.config import Settings
    from services.store import Store
    from services.store.migration import migrate, remaining
    settings = Settings.from_env()
    store = Store.from_settings(settings)
    left = remaining(store)
    if not left:
        click.echo("nothing to migrate: no vectors left in Redis")
    summary = migrate(store, batch, lambda mk, done, total: click.echo(f"{mk}: {done}/{total}"))
    for mk in summary.moved:
        click.echo(f"{mk}: {summary.moved[mk]} moved, {summary.already[mk]} moved by an earlier run, "
                   f"{summary.dropped[mk]} of deleted images dropped")
    click.echo(f"done in {summary.seconds:.1f} s: the vectors are in {settings.vector_dir}; "
               f"{remaining(store)} left in Redis")


COMMANDS = [backup_cmd, restore_cmd, migrate_cmd]
