"""`vsearch duplicates`: scan the collection (a job, with a progress bar), summarise the groups,
export them, resolve them by a rule. Talks to the gateway like the other client commands."""
from __future__ import annotations

from pathlib import Path

import click

from cli.client_commands import GATEWAY, TOKEN, _client
from cli.common import fail
from cli.progress import wait_with_bar

RULES = ("most_pixels", "largest_file", "oldest", "newest")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def summary(groups: list[dict]) -> list[str]:
    """Lines about the groups: how many of each tier and status, how much space the others take."""
    by = {}
    for g in groups:
        by[(g["status"], g["tier"])] = by.get((g["status"], g["tier"]), 0) + 1
    images = sum(len(g["images"]) for g in groups)
    spare = [im for g in groups if g["status"] == "open" for im in g["images"]
             if im["id"] not in g["keep"] and not im["deleted"]]
    lines = [f"{len(groups)} duplicate groups, {images} images: "
             + ", ".join(f"{n} {tier} {status}" for (status, tier), n in sorted(by.items())) if groups
             else "no duplicate groups"]
    if spare:
        lines.append(f"open groups: {len(spare)} images besides the proposed keepers "
                     f"({_size(sum(im['size_bytes'] or 0 for im in spare))})")
    return lines


@click.command("duplicates")
@click.option("--tier", type=click.Choice(["exact", "copy"]), help="Only groups of this tier.")
@click.option("--status", type=click.Choice(["open", "resolved"]), help="Only groups in this state.")
@click.option("--scan/--no-scan", default=True, show_default=True,
              help="Look for new duplicates first (a job: only images added since the last scan).")
@click.option("--full", is_flag=True, help="Scan every image again, not only the new ones.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every group, one row per image, to this CSV file.")
@click.option("--resolve", "rule", type=click.Choice(RULES),
              help="Resolve every open group, keeping the image this rule picks (originals first).")
@click.option("--delete-others", is_flag=True, help="With --resolve: delete the images not kept.")
@click.option("--yes", is_flag=True, help="With --resolve: do not ask for confirmation.")
@click.option("--show", type=int, default=10, show_default=True, help="Groups to list.")
@GATEWAY
@TOKEN
def duplicates_cmd(tier, status, scan, full, csv_path, rule, delete_others, yes, show, gateway, token):
    """Find the collection's duplicate groups; export or resolve them."""
    from cli.api_client import ApiError
    if delete_others and not rule:
        raise click.UsageError("--delete-others goes with --resolve RULE")
    client = _client(gateway, token)
    try:
        if scan:
            job_id = client.scan_duplicates(full)["job_id"]
            job = wait_with_bar(client, job_id, "scan", "img")
            if job["state"] == "failed":
                fail(RuntimeError(f"the scan failed: {job['errors'][-1]['error'] if job['errors'] else job_id}"))
        groups = client.all_duplicates(tier, status)
        for line in summary(groups):
            click.echo(line)
        for g in groups[:show]:
            keep = ", ".join(k[:12] for k in g["keep"])
            click.echo(f"  {g['group_id']}  {g['tier']:5} {g['status']:8} {len(g['images'])} images, keep {keep}")
            for im in g["images"]:
                mark = "*" if im["id"] in g["keep"] else "x" if im["deleted"] else " "
                click.echo(f"      {mark} {im['id'][:12]}  {im['width']}x{im['height']}  "
                           f"{_size(im['size_bytes'] or 0):>9}  {im['source'] or ''}")
        if len(groups) > show:
            click.echo(f"  ... and {len(groups) - show} more (--csv FILE writes them all)")
        if csv_path:
            csv_path.write_bytes(client.export_duplicates("csv", tier, status))
            click.echo(f"wrote {csv_path}")
        if rule:
            _resolve_all(client, [g for g in groups if g["status"] == "open"], rule, delete_others, yes)
    except (ApiError, OSError, TimeoutError) as exc:
        fail(exc)


def _resolve_all(client, groups: list[dict], rule: str, delete_others: bool, yes: bool) -> None:
    from tqdm import tqdm
    if not groups:
        click.echo("no open groups to resolve")
        return
    others = sum(len(g["images"]) - 1 for g in groups)
    action = f"keep one image of each of {len(groups)} open groups by {rule}"
    action += f" and DELETE the other {others}" if delete_others else " (the others stay indexed)"
    if not yes and not click.confirm(f"{action}?"):
        click.echo("nothing changed")
        return
    deleted = 0
    for g in tqdm(groups, desc="resolve", unit="group", dynamic_ncols=True):
        done = client.resolve_duplicates(g["group_id"], rule=rule, delete_others=delete_others)
        deleted += sum(1 for im in done["images"] if im["deleted"] and im["id"] not in g["keep"])
    click.echo(f"resolved {len(groups)} groups by {rule}; {deleted} images deleted")
