"""What every `vsearch` command module shares: settings read once, failures as one clear line."""
from __future__ import annotations

import click

from services.config import Settings


def settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def fail(exc: Exception):
    raise click.ClickException(str(exc)) from None
