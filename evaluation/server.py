"""A model server for `vsearch eval` when none is given: exports the default model if it is
missing and runs `vsearch model-server` on a free loopback port for the duration."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from modelserver.process import free_port, running_model_server


def ensure_model(model_base: Path, model: str = "effnet_lite0") -> None:
    """Exports version 1 of the model under model_base unless some version is there."""
    folder = Path(model_base) / model
    if folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir()):
        return
    from model_export.export import export_model
    export_model(model=model, out=model_base, version=1)


@contextmanager
def local_model_server(model_base: Path, model: str = "effnet_lite0"):
    """Yields the target (host:port) of a model server serving model_base."""
    ensure_model(Path(model_base), model)
    with running_model_server(Path(model_base), free_port()) as target:
        yield target
