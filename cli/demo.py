"""`vsearch demo`: bring everything up, index bundled sample photos, run a search, show where to look.

The samples are the 20 real ImageNet photos shipped in the `foolbox` package, laid out one folder
per class; the query is an edited copy (mirrored, cropped, watermarked) of one of them.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from evaluation import transforms
from cli.api_client import GatewayClient
from services.config import PREFIX, Settings
from cli.launcher import Launcher


def sample_photos() -> list[Path]:
    import foolbox
    return sorted((Path(foolbox.__file__).parent / "data").glob("imagenet_*.jpg"))


def make_samples(root: Path) -> Path:
    """root/imagenet_<class>/<photo>.jpg; returns root."""
    for photo in sample_photos():
        folder = root / f"imagenet_{int(photo.stem.rsplit('_', 1)[1]):03d}"
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / photo.name).exists():
            shutil.copy(photo, folder / photo.name)
    return root


def make_query(photo: Path, out: Path) -> Path:
    from PIL import Image
    with Image.open(photo) as im:
        edited = transforms.watermark(transforms.center_crop(0.8)(transforms.mirror(im.convert("RGB"))))
    out.write_bytes(transforms.to_jpeg_bytes(edited, quality=80))
    return out


def run_demo(settings: Settings, host: str, port: int, keep_running: bool, var_dir: Path = Path("var")) -> None:
    from cli.progress import follow
    samples = make_samples((var_dir / "samples").resolve())
    launcher = Launcher(settings, host, port, var_dir=var_dir)
    roots = os.pathsep.join([str(samples), *map(str, settings.allowed_roots)])
    launcher.env[PREFIX + "ALLOWED_ROOTS"] = roots
    try:
        launcher.prepare()
        launcher.start()
        click.echo(f"vsearch is up at {launcher.url}")
        client = GatewayClient(launcher.url, settings.api_token)
        follow(client, client.add_directory(samples)["job_id"])
        original = sample_photos()[3]
        query = make_query(original, var_dir / "demo-query.jpg")
        result = client.search_file(query, 5)
        click.echo(f"\nsearch with {query} (an edited copy of {original.name}): {result['took_ms']} ms")
        for rank, hit in enumerate(result["results"], 1):
            click.echo(f"{rank:3d}  {hit['score']:.4f}  {hit['label'] or '-':14}  {Path(hit['source']).name}")
        from cli.result_row import result_row
        row = result_row(query.read_bytes(), [(h, client.thumbnail(h["id"])) for h in result["results"]])
        row.save(var_dir / "demo-results.png")
        click.echo(f"result row image: {var_dir / 'demo-results.png'}")
        click.echo(f"\nOpen {launcher.url}/ in a browser to search with your own images; "
                   f"index more with `vsearch index DIR`.")
        if keep_running:
            click.echo("Press Ctrl-C to stop.")
            launcher.supervise()
    except KeyboardInterrupt:
        pass
    finally:
        launcher.stop()
