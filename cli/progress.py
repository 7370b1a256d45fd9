"""Following a job on the terminal: a progress bar, then a summary with the first errors."""
from __future__ import annotations

import sys

import click

def wait_with_bar(client, job_id: str, what: str = "job", unit: str = "img") -> dict:
    """Wait for a job with a progress bar; returns the finished job."""
    from tqdm import tqdm
    with tqdm(desc=f"{what} {job_id[:8]}", unit=unit, dynamic_ncols=True) as bar:
        def show(job):
            if job["total"] is not None:
                bar.total = job["total"]
            bar.n = job["done"] + job["failed"]
            bar.set_postfix(failed=job["failed"], refresh=False)
            bar.refresh()
        return client.wait(job_id, show)


def follow(client, job_id: str) -> None:
    job = wait_with_bar(client, job_id)
    indexed = job["done"] - job.get("duplicates", 0)
    click.echo(f"job {job_id}: {job['state']}: {indexed} indexed, {job.get('duplicates', 0)} duplicates "
               f"(already indexed), {job.get('near_duplicates', 0)} near-duplicates, {job['failed']} failed")
    for near in job.get("near_duplicate_items", [])[:20]:
        click.echo(f"  near-duplicate: {near['item']} looks like {near['near_duplicate_of'][:12]}")
    for error in job["errors"][:20]:
        click.echo(f"  failed: {error['item']}: {error['error']}")
    if len(job["errors"]) > 20:
        click.echo(f"  ... and {len(job['errors']) - 20} more (vsearch jobs {job_id})")
    if job["state"] == "failed":
        sys.exit(1)

