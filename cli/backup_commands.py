"""`vsearch backup DIR` and `vsearch restore DIR`: run beside the deployment (they read its Redis
and data directory from the VSEARCH_ settings), not through the gateway."""
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


COMMANDS = [backup_cmd, restore_cmd]
