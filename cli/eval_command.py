"""`vsearch eval`: retrieval quality on a folder-per-class set (docs/quality.md)."""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import settings as read_settings


@click.command("eval")
@click.argument("dataset_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), default=Path("var/eval/results"), show_default=True,
              help="Folder for results.json, results.md and the plots.")
@click.option("--copies", type=int, help="Copy-detection sources (a fixed random sample); default: every image.")
@click.option("--model-server", "model_server", help="host:port of a model server; default: start one "
              "from VSEARCH_MODEL_BASE (exporting the model if missing).")
@click.option("--no-seed", is_flag=True, help="Skip the seed-style baseline (it runs the network in-process).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots (no matplotlib needed).")
def eval_cmd(dataset_dir, out, copies, model_server, no_seed, no_plots):
    """Measure retrieval quality on a folder-per-class set; on the collection (DATASET_DIR/dev and /test,
    `python -m evaluation.build_collection`) fit and publish the verdict thresholds (docs/quality.md)."""
    from contextlib import nullcontext
    from evaluation import harness, report
    from evaluation.server import local_model_server
    from services.tfs_client import ModelClient
    settings = read_settings()
    server = nullcontext(model_server) if model_server else local_model_server(settings.model_base, settings.model_name)
    if (dataset_dir / "dev").is_dir() and (dataset_dir / "test").is_dir():
        return _eval_collection(dataset_dir, out, server, settings)
    seed = None
    if not no_seed:
        click.echo("building the network in-process for the seed-style baseline", err=True)
        from model_export.seed_features import SeedFeatures
        seed = SeedFeatures()
    try:
        with server as target:
            client = ModelClient(target, settings.model_name, timeout_s=settings.model_timeout_s)
            try:
                results = harness.evaluate(dataset_dir, client, copies=copies, seed_features=seed,
                                           progress=lambda m: click.echo(m, err=True))
            finally:
                client.close()
    except (OSError, RuntimeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for path in report.write(results, out, plots=not no_plots):
        click.echo(f"wrote {path}")
    click.echo((out / "results.md").read_text())


def _eval_collection(root: Path, out: Path, server, settings) -> None:
    """The collection's evaluation (evaluation/run.py): copy families, open-set verdicts fitted on dev
    and published to services/calibration/, category retrieval; dev and test side by side."""
    import json
    from evaluation import run
    from services.tfs_client import ModelClient
    with server as target:
        client = ModelClient(target, settings.model_name, timeout_s=settings.model_timeout_s)
        try:
            results = run.evaluate(root, client, progress=lambda m: click.echo(m, err=True))
        finally:
            client.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    (out / "results.md").write_text(run.markdown(results))
    click.echo(f"wrote {out / 'results.json'}, {out / 'results.md'}, {run.publish(results)}")
    click.echo((out / "results.md").read_text())
