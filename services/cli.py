"""`vsearch`: server roles, model tools and client commands in one console script.

Each command imports what it needs when it runs, so `vsearch search` never pays for TensorFlow.
Errors are one clear line on stderr and a non-zero exit.
"""
from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from services.config import Settings


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Visual search: index your images, find the ones that look alike."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command("export-model")
@click.option("--model", type=click.Choice(["effnet_lite0", "alexnet"]), default="effnet_lite0", show_default=True)
@click.option("--weights", help="Weights file or http(s) URL (alexnet: bvlc_alexnet.npy; effnet: the packaged weights).")
@click.option("--out", "out", type=click.Path(path_type=Path), help="Model base directory [VSEARCH_MODEL_BASE].")
@click.option("--version", "version", type=int, default=1, show_default=True)
@click.option("--layer", type=click.Choice(["fc6", "fc7"]), default="fc6", show_default=True, help="AlexNet embedding layer.")
@click.option("--overwrite", is_flag=True, help="Replace an existing version.")
def export_model_cmd(model, weights, out, version, layer, overwrite):
    """Write a SavedModel to <out>/<model>/<version>/ for TF Serving."""
    from model_export.errors import ModelExportError
    from model_export.export import export_model
    out = out or _settings().model_base
    try:
        path = export_model(model=model, out=out, version=version, weights=weights, layer=layer, overwrite=overwrite)
    except (ModelExportError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"exported {model} version {version} to {path}")


@main.command("model-server")
@click.option("--model-base", type=click.Path(path_type=Path, file_okay=False), help="[VSEARCH_MODEL_BASE]")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=int, default=8500, show_default=True)
@click.option("--max-batch", type=int, default=32, show_default=True, help="Largest batch run at once.")
@click.option("--batch-timeout-ms", type=float, default=0.0, show_default=True,
              help="How long a batch waits for more requests when the server is idle. Requests that "
                   "arrive while the model runs are batched anyway; measured: 0 keeps single-request "
                   "latency lowest at the same throughput (docs/benchmarks.md).")
@click.option("--poll-s", type=float, default=10.0, show_default=True, help="Look for new versions this often (0: never).")
def model_server_cmd(model_base, host, port, max_batch, batch_timeout_ms, poll_s):
    """Serve SavedModels over TF Serving's gRPC API (Predict, GetModelMetadata, GetModelStatus)."""
    from services.modelserver.registry import ModelRegistry
    from services.modelserver.server import ModelServer
    base = model_base or _settings().model_base
    registry = ModelRegistry(base, max_batch=max_batch, batch_timeout_s=batch_timeout_ms / 1000)
    loaded = registry.refresh()
    if not loaded:
        raise click.ClickException(f"no SavedModel found under {base}/<name>/<version>/; run `vsearch export-model` first")
    server = ModelServer(registry, host, port, poll_s=poll_s).start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    click.echo(f"model server listening on {host}:{server.port}, models: "
               + ", ".join(f"{n} v{v}" for n, v in loaded), err=True)
    sys.stderr.flush()
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()


@main.command("worker", context_settings={"ignore_unknown_options": True})
@click.option("--queues", "-Q", default="ingest,index", show_default=True,
              help="ingest: decode/embed/store; index: Annoy builds (run one consumer of it).")
@click.option("--concurrency", "-c", type=int, default=4, show_default=True,
              help="Tasks at once (threads): several keep decoding and inference overlapped.")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker_cmd(queues, concurrency, loglevel, celery_args):
    """Run a Celery worker (threads pool: gRPC and Pillow release the GIL)."""
    from worker.app import app
    app.worker_main(["worker", "-Q", queues, "--pool", "threads", "--concurrency", str(concurrency),
                     "--loglevel", loglevel, "--without-gossip", "--without-mingle", *celery_args])


@main.command("up")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Ingest worker processes.")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Tasks at once per worker.")
def up_cmd(host, port, workers, concurrency):
    """Run every role on this machine (Redis if needed, model server, workers, index builder, gateway)."""
    from services.launcher import Launcher
    launcher = Launcher(_settings(), host, port, workers, concurrency)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        launcher.prepare()
        launcher.start()
        click.echo(f"vsearch is up: {launcher.url}/  (Ctrl-C stops everything)")
        launcher.supervise()
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        launcher.stop()


@main.command("demo")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--exit", "exit_after", is_flag=True, help="Stop after the demo search instead of staying up.")
def demo_cmd(host, port, exit_after):
    """Start everything, index the bundled sample photos, search with an edited copy of one."""
    from services.demo import run_demo
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        run_demo(_settings(), host, port, keep_running=not exit_after)
    except (RuntimeError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from None


from services import cli_client  # noqa: E402,F401  (registers the client commands)
from services.cli_duplicates import duplicates_cmd  # noqa: E402

main.add_command(duplicates_cmd)

@main.command("eval")
@click.argument("dataset_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), default=Path("var/eval/results"), show_default=True,
              help="Folder for results.json, results.md and the plots.")
@click.option("--copies", type=int, help="Copy-detection sources (a fixed random sample); default: every image.")
@click.option("--model-server", "model_server", help="host:port of a model server; default: start one "
              "from VSEARCH_MODEL_BASE (exporting the model if missing).")
@click.option("--no-seed", is_flag=True, help="Skip the seed-style baseline (it runs the network in-process).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots (no matplotlib needed).")
def eval_cmd(dataset_dir, out, copies, model_server, no_seed, no_plots):
    """Measure retrieval quality on a folder-per-class set (docs/quality.md)."""
    from contextlib import nullcontext
    from services.quality import harness, report
    from services.quality.server import local_model_server
    from services.tfs_client import ModelClient
    settings = _settings()
    seed = None
    if not no_seed:
        click.echo("building the network in-process for the seed-style baseline", err=True)
        seed = harness.SeedFeatures()
    server = nullcontext(model_server) if model_server else local_model_server(settings.model_base, settings.model_name)
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


if __name__ == "__main__":
    from services.cli import main as registered  # this file runs as __main__; commands live on the module
    registered()
