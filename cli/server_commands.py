"""Server roles and model tools of `vsearch`: export-model, model-server, worker, up, demo.

Each command imports what it needs when it runs, so client commands never pay for TensorFlow.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from cli.common import settings


@click.command("export-model")
@click.option("--model", type=click.Choice(["effnet_lite0", "effnet_lite1", "effnet_lite2", "alexnet"]),
              default="effnet_lite0", show_default=True)
@click.option("--weights", help="Weights file or http(s) URL (alexnet: bvlc_alexnet.npy; effnet: the packaged weights).")
@click.option("--out", "out", type=click.Path(path_type=Path), help="Model base directory [VSEARCH_MODEL_BASE].")
@click.option("--version", "version", type=int, default=1, show_default=True)
@click.option("--layer", type=click.Choice(["fc6", "fc7"]), default="fc6", show_default=True, help="AlexNet embedding layer.")
@click.option("--overwrite", is_flag=True, help="Replace an existing version.")
@click.option("--precision", "precisions", type=click.Choice(["fp32", "bf16"]), multiple=True, default=["fp32"],
              show_default=True, help="Served precision, repeatable: bf16 writes the variant <model>_bf16, "
                                      "which model servers run in bf16 where the CPU has it.")
@click.option("--skip-existing", is_flag=True, help="Leave a version that exists as it is (one-shot exports).")
def export_model_cmd(model, weights, out, version, layer, overwrite, precisions, skip_existing):
    """Write a SavedModel to <out>/<model>/<version>/ for TF Serving."""
    from model_export.errors import ModelExportError
    from model_export.export import export_model
    from services.precision import served_name
    out = out or settings().model_base
    for precision in dict.fromkeys(precisions):
        if skip_existing and not overwrite and (Path(out) / served_name(model, precision) / str(version)).exists():
            click.echo(f"{served_name(model, precision)} version {version} exists, kept")
            continue
        try:
            path = export_model(model=model, out=out, version=version, weights=weights, layer=layer,
                                overwrite=overwrite, precision=precision)
        except (ModelExportError, OSError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"exported {path.parent.name} version {version} to {path}")


@click.command("model-server")
@click.option("--model-base", type=click.Path(path_type=Path, file_okay=False), help="[VSEARCH_MODEL_BASE]")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=int, default=8500, show_default=True)
@click.option("--max-batch", type=int, default=32, show_default=True, help="Largest batch run at once.")
@click.option("--batch-timeout-ms", type=float, default=0.0, show_default=True,
              help="How long a batch waits for more requests when the server is idle. Requests that "
                   "arrive while the model runs are batched anyway; measured: 0 keeps single-request "
                   "latency lowest at the same throughput (docs/benchmarks.md).")
@click.option("--poll-s", type=float, default=10.0, show_default=True, help="Look for new versions this often (0: never).")
@click.option("--bf16/--no-bf16", default=None,
              help="Serve the bf16 variants (<name>_bf16) in bf16. Default: when this CPU has bf16 "
                   "instructions (avx512_bf16, amx_bf16); --no-bf16 serves fp32 models only.")
def model_server_cmd(model_base, host, port, max_batch, batch_timeout_ms, poll_s, bf16):
    """Serve SavedModels over TF Serving's gRPC API (Predict, GetModelMetadata, GetModelStatus)."""
    from modelserver.registry import ModelRegistry
    from modelserver.server import ModelServer
    base = model_base or settings().model_base
    from services.precision import cpu_has_bf16
    if bf16 and not cpu_has_bf16():
        raise click.ClickException("--bf16: this CPU has no bf16 instructions (avx512_bf16, amx_bf16)")
    registry = ModelRegistry(base, max_batch=max_batch, batch_timeout_s=batch_timeout_ms / 1000, bf16=bf16)
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


@click.command("worker", context_settings={"ignore_unknown_options": True})
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


@click.command("up")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Ingest worker processes.")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Tasks at once per worker.")
def up_cmd(host, port, workers, concurrency):
    """Run every role on this machine (Redis if needed, model server, workers, index builder, gateway).

    Without a token (VSEARCH_API_TOKEN or VSEARCH_READ_TOKEN) the gateway binds loopback only."""
    from cli.launcher import Launcher, is_loopback
    s = settings()
    if not (s.api_token or s.read_token) and not is_loopback(host):
        raise click.UsageError(f"--host {host} would open the service to the network without a token: "
                               "set VSEARCH_API_TOKEN (and VSEARCH_READ_TOKEN for read-only clients)")
    launcher = Launcher(s, host, port, workers, concurrency)
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


@click.command("demo")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--exit", "exit_after", is_flag=True, help="Stop after the demo search instead of staying up.")
def demo_cmd(host, port, exit_after):
    """Start everything, index the bundled sample photos, search with an edited copy of one."""
    from cli.demo import run_demo
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        run_demo(settings(), host, port, keep_running=not exit_after)
    except (RuntimeError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from None


COMMANDS = [export_model_cmd, model_server_cmd, worker_cmd, up_cmd, demo_cmd]
