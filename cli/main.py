"""`vsearch`: server roles, model tools and client commands in one console script.

This module only builds the command group; each command lives with its kind (`server_commands`,
`client_commands`, `eval_command`) and imports what it needs when it runs, so `vsearch search` never
pays for TensorFlow. Errors are one clear line on stderr and a non-zero exit.
"""
from __future__ import annotations

import logging

import click

from cli import backup_commands, client_commands, duplicates, eval_command, server_commands
from services.process import configure_process


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Visual search: index your images, find the ones that look alike."""
    configure_process()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for command in (*server_commands.COMMANDS, *backup_commands.COMMANDS, *client_commands.COMMANDS,
                duplicates.duplicates_cmd, eval_command.eval_cmd):
    main.add_command(command)


if __name__ == "__main__":
    main()
