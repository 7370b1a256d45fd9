"""A model server for `vsearch eval` when none is given: exports the default model if it is
missing and runs `vsearch model-server` on a free loopback port for the duration."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from modelserver.process import free_port, running_model_server
from services.precision import AUTO, BF16, FP32, cpu_has_bf16, served_name


def ensure_model(model_base: Path, model: str = "effnet_lite0", precision: str = FP32) -> None:
    """Exports version 1 of the model in `precision` under model_base unless some version is there."""
    folder = Path(model_base) / served_name(model, precision)
    if folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir()):
        return
    from model_export.export import export_model
    export_model(model=model, out=model_base, version=1, precision=precision)


@contextmanager
def local_model_server(model_base: Path, model: str = "effnet_lite0", precision: str = AUTO):
    """Yields the target (host:port) of a model server serving model_base, with the model in
    `precision` (auto: bf16 too where the CPU has it)."""
    wanted = [precision] if precision != AUTO else [FP32, BF16] if cpu_has_bf16() else [FP32]
    for each in wanted:
        ensure_model(Path(model_base), model, each)
    with running_model_server(Path(model_base), free_port()) as target:
        yield target
