"""Client commands of `vsearch`: index, search, jobs (through the gateway), and the seed's tools
resize and features (local, no gateway)."""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import fail as _fail, settings as _settings
from cli.progress import follow

GATEWAY = click.option("--gateway", envvar="VSEARCH_GATEWAY_URL", help="Gateway URL [VSEARCH_GATEWAY_URL].")
TOKEN = click.option("--token", envvar="VSEARCH_API_TOKEN", help="API token [VSEARCH_API_TOKEN].")


def _client(gateway: str | None, token: str | None):
    from cli.api_client import GatewayClient
    return GatewayClient(gateway or _settings().gateway_url, token)



@click.command("index")
@click.argument("targets", nargs=-1, required=True)
@click.option("--label", help="Label for single files or URLs.")
@click.option("--collection", help="Add the images to this collection (searches can keep to one).")
@click.option("--no-wait", is_flag=True, help="Enqueue and return the job ids.")
@GATEWAY
@TOKEN
def index_cmd(targets, label, collection, no_wait, gateway, token):
    """Index directories (folder-per-class trees record the class as label), files or URLs."""
    from cli.api_client import ApiError, split_targets
    client = _client(gateway, token)
    try:
        urls, dirs, files = split_targets(targets)
        job_ids = [client.add_urls(urls, collection)["job_id"]] if urls else []
        if files:
            job_ids.append(client.add_files(files, label, collection)["job_id"])
        for directory in dirs:
            try:
                job_ids.append(client.add_directory(directory, collection)["job_id"])
            except ApiError as exc:
                if exc.code != "not_allowed":
                    raise
                click.echo(f"{directory}: the gateway may not read it ({exc.message}); uploading it instead", err=True)
                job_ids.append(client.upload_directory(directory, collection)["job_id"])
        if no_wait:
            click.echo("\n".join(job_ids))
            return
        for job_id in job_ids:
            follow(client, job_id)
    except (ApiError, OSError, TimeoutError) as exc:
        _fail(exc)




@click.command("search")
@click.option("--img-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--img-url")
@click.option("--image-id")
@click.option("-k", "--k", "k", type=click.IntRange(1, 100), default=10, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write a result-row image (PNG).")
@click.option("--collection", help="Search only this collection.")
@click.option("--local", is_flag=True, help="No gateway: embed with the model server, search the index directly.")
@click.option("--min-verdict", type=click.Choice(["exact", "copy", "similar"]),
              help="Only results at least this close (exact > copy > similar).")
@GATEWAY
@TOKEN
def search_cmd(img_file, img_url, image_id, k, collection, out, local, min_verdict, gateway, token):
    """Find the indexed images that look like a query image."""
    from cli.api_client import ApiError
    if sum(x is not None for x in (img_file, img_url, image_id)) != 1:
        raise click.UsageError("give exactly one of --img-file, --img-url, --image-id")
    try:
        if local:
            result, thumbnails = _search_local(img_file, img_url, image_id, k, collection, min_verdict)
        else:
            client = _client(gateway, token)
            result = client.search_file(img_file, k, collection, min_verdict) if img_file else \
                client.search(url=img_url, image_id=image_id, k=k, collection=collection, min_verdict=min_verdict)
            thumbnails = lambda iid: client.thumbnail(iid)  # noqa: E731
    except Exception as exc:
        if isinstance(exc, (ApiError, OSError, ValueError)) or _is_query_error(exc):
            _fail(exc)
        raise
    click.echo(f"{len(result['results'])} results in {result['took_ms']} ms (index v{result['index_version']}), "
               f"verdict: {result.get('verdict', 'none')}")
    for rank, hit in enumerate(result["results"], 1):
        click.echo(f"{rank:3d}  {hit.get('verdict', '-'):7}  {hit['score']:.4f}  {hit['id'][:12]}  "
                   f"{hit.get('label') or '-':20}  {hit.get('source') or ''}")
    if out:
        from cli.result_row import result_row
        query = img_file.read_bytes() if img_file else None
        result_row(query, [(h, thumbnails(h["id"])) for h in result["results"]]).save(out)
        click.echo(f"wrote {out}")



def _search_local(img_file: Path | None, img_url: str | None, image_id: str | None, k: int,
                  collection: str | None = None, min_verdict: str | None = None):
    """The gateway's query path in this process (services.search), answered in the API's shape."""
    from services import files, search
    from services.context import Context
    from services.index import Filter
    settings = _settings()
    data = img_file.read_bytes() if img_file else None
    result = search.search(Context(settings), data=data, url=img_url, image_id=image_id, k=k,
                           where=Filter.parse(collection), min_verdict=min_verdict)
    hits = [{"id": h.id, "score": h.score, "match": h.match, "verdict": h.verdict,
             "label": (h.record or {}).get("label"), "source": (h.record or {}).get("source")} for h in result.hits]
    answer = {"results": hits, "verdict": result.verdict, "took_ms": result.took_ms,
              "index_version": result.index_version}
    return answer, lambda iid: files.ensure_thumbnail(settings.data_dir, iid).read_bytes()


def _is_query_error(exc: Exception) -> bool:
    """The query path's own failures (bad image, URL, unknown id, model server): one clear line."""
    from services.images import ImageError
    from services.search import NotIndexed
    from services.sources import SourceError
    from services.tfs_client import ModelServerError
    return isinstance(exc, (ImageError, NotIndexed, SourceError, ModelServerError))


@click.command("jobs")
@click.argument("job_id", required=False)
@GATEWAY
@TOKEN
def jobs_cmd(job_id, gateway, token):
    """List recent jobs, or show one with its errors."""
    from cli.api_client import ApiError
    client = _client(gateway, token)
    try:
        jobs = [client.job(job_id)] if job_id else client.jobs()
    except ApiError as exc:
        _fail(exc)
    for job in jobs:
        total = "?" if job["total"] is None else job["total"]
        click.echo(f"{job['job_id']}  {job.get('kind', ''):9} {job['state']:8} {job['done'] + job['failed']}/{total}"
                   f"  failed {job['failed']}  duplicates {job.get('duplicates', 0)}")
        for error in job.get("errors", []):
            click.echo(f"    {error['item']}: {error['error']}")


@click.command("resize")
@click.option("--input-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--width", type=click.IntRange(min=1), default=227, show_default=True)
@click.option("--height", type=click.IntRange(min=1), default=227, show_default=True)
def resize_cmd(input_dir, output_dir, width, height):
    """Resize every image below a folder to WIDTHxHEIGHT (the seed's image_resize), keeping the tree."""
    from tqdm import tqdm

    from services import images
    if max(width, height) > images.MAX_SIDE or width * height > images.DEFAULT_MAX_PIXELS:
        raise click.BadParameter(f"{width}x{height} is beyond the image limits ({images.MAX_SIDE} pixels a side, "
                                 f"{images.DEFAULT_MAX_PIXELS / 1e6:g} MP)", param_hint="'--width' / '--height'")
    paths = [p for p in sorted(input_dir.rglob("*")) if p.is_file()]
    failed = 0
    for path in tqdm(paths, unit="img"):
        target = (output_dir / path.relative_to(input_dir)).with_suffix(".jpg")
        try:
            resized = images.resize_exact(images.decode(path), width, height)
        except (images.ImageError, OSError) as exc:  # OSError: the file cannot be read
            failed += 1
            tqdm.write(f"skipped {path}: {exc}")
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            resized.save(target, quality=95)
        except OSError as exc:
            raise click.ClickException(f"cannot write {target}: {exc.strerror or exc}") from None
    click.echo(f"resized {len(paths) - failed} images into {output_dir}; {failed} skipped")


@click.command("features")
@click.option("--input-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--output-feature-file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output-image-name-file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model-server", envvar="VSEARCH_MODEL_SERVER", help="[VSEARCH_MODEL_SERVER]")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
def features_cmd(input_dir, output_feature_file, output_image_name_file, model_server, batch_size):
    """Embed every image below a folder through the model server (the seed's myalexnet_feature)."""
    from cli.features import extract_features
    from services.tfs_client import ModelServerError, choose_served_name
    settings = _settings()
    target = model_server or settings.model_server
    try:
        name = choose_served_name(target, settings.model_name, settings.model_precision)
        names, failed = extract_features(input_dir, output_feature_file, output_image_name_file, target, name,
                                         batch_size)
    except ModelServerError as exc:
        _fail(exc)
    click.echo(f"wrote {len(names)} features to {output_feature_file} and names to {output_image_name_file}; "
               f"{len(failed)} skipped")


COMMANDS = [index_cmd, search_cmd, jobs_cmd, resize_cmd, features_cmd]
