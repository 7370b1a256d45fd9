"""bf16 serving: CPU detection, the variant's own model key, the fp32 fallback, and an index that
refuses vectors of the other precision. Real exports, real model servers, real Redis."""
from __future__ import annotations

import numpy as np
import pytest

from services.config import Settings
from services.context import Context
from services.images import load_for_model
from cli.launcher import Launcher
from services.precision import (
    BF16, FP32, PrecisionMismatch, check_same, cpu_has_bf16, precision_of, served_name,
)
from services.tfs_client import ModelClient, ModelServerError, choose_served_name
from tests.conftest import free_port, start_model_server, stop_process
from tests.workers import drop_keys, isolated_settings

CPU_HAS_BF16 = cpu_has_bf16()
needs_bf16 = pytest.mark.skipif(not CPU_HAS_BF16, reason="this CPU has no bf16 instructions")
CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 avx avx2 avx512f {extra}
bugs\t\t: spectre_v1
"""


@pytest.mark.parametrize("extra, has", [("avx512_bf16 avx512_vnni", True), ("amx_bf16 amx_tile", True),
                                        ("avx512_vnni", False), ("", False)])
def test_cpu_support_is_read_from_the_cpu_flags(tmp_path, extra, has):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra) * 2)
    assert cpu_has_bf16(cpuinfo) is has


def test_no_cpuinfo_means_no_bf16(tmp_path):
    assert cpu_has_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize("model", ["effnet_lite0", "alexnet"])
def test_the_precision_is_part_of_the_served_name_and_the_model_key(model):
    assert served_name(model, FP32) == model
    assert precision_of(served_name(model, BF16) + ":3") == BF16
    assert precision_of(f"{model}:3") == FP32
    with pytest.raises(ValueError, match="precision"):
        served_name(model, "fp16")


def test_the_setting_takes_auto_fp32_or_bf16():
    assert Settings().model_precision == "auto"
    assert Settings.from_env({"VSEARCH_MODEL_PRECISION": "bf16"}).model_precision == BF16
    with pytest.raises(ValueError, match="VSEARCH_MODEL_PRECISION"):
        Settings.from_env({"VSEARCH_MODEL_PRECISION": "fp16"})


def test_up_serves_bf16_only_where_the_cpu_has_it(tmp_path):
    without, with_bf16 = tmp_path / "without", tmp_path / "with"
    without.write_text(CPUINFO.format(extra="avx512_vnni"))
    with_bf16.write_text(CPUINFO.format(extra="avx512_bf16"))
    settings = Settings(model_server="10.0.0.1:8500")
    assert Launcher(settings, cpuinfo=without).precisions() == [FP32]
    assert Launcher(settings, cpuinfo=with_bf16).precisions() == [FP32, BF16]
    forced = Settings(model_server="10.0.0.1:8500", model_precision=FP32)
    assert Launcher(forced, cpuinfo=with_bf16).precisions() == [FP32]


# -- served for real ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def both_precisions(tmp_path_factory):
    from model_export.export import export_model
    base = tmp_path_factory.mktemp("models")
    for precision in (FP32, BF16):
        export_model(model="effnet_lite0", out=base, version=1, precision=precision)
    return base


@pytest.fixture(scope="module")
def serving(both_precisions):
    """A model server of each kind over the same two exports: default (bf16 where the CPU has it)
    and --no-bf16 (what a CPU without bf16 gets: the fallback forced)."""
    ports = {"default": free_port(), "no-bf16": free_port()}
    procs = [start_model_server(both_precisions, ports["default"]),
             start_model_server(both_precisions, ports["no-bf16"], "--no-bf16")]
    yield {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    for proc in procs:
        stop_process(proc)


@pytest.fixture(scope="module")
def inputs(photos):
    return np.stack([load_for_model(p.read_bytes(), 224) for p in photos])


@needs_bf16
def test_bf16_variant_is_served_in_bf16_close_to_fp32(serving, inputs):
    fp32 = ModelClient(serving["default"], "effnet_lite0")
    bf16 = ModelClient(serving["default"], "effnet_lite0_bf16")
    a, b = fp32.predict(inputs), bf16.predict(inputs)
    cosine = (a["embedding"] * b["embedding"]).sum(1)
    assert cosine.min() > 0.99, cosine
    assert np.abs(a["embedding"] - b["embedding"]).max() > 1e-3, "the rewrite did not run: same numbers as fp32"
    agree = (a["probabilities"].argmax(1) == b["probabilities"].argmax(1)).mean()
    assert agree >= 0.9, agree
    assert bf16.info().key == "effnet_lite0_bf16:1" != fp32.info().key


@needs_bf16
def test_auto_picks_bf16_where_served_and_fp32_where_not(serving):
    assert choose_served_name(serving["default"], "effnet_lite0", "auto") == "effnet_lite0_bf16"
    assert choose_served_name(serving["no-bf16"], "effnet_lite0", "auto") == "effnet_lite0"
    assert choose_served_name(serving["default"], "effnet_lite0", FP32) == "effnet_lite0"


def test_without_bf16_only_fp32_is_served_and_gives_fp32_vectors(serving, inputs):
    with pytest.raises(ModelServerError, match="NOT_FOUND"):
        ModelClient(serving["no-bf16"], "effnet_lite0_bf16").available_versions()
    fallback = ModelClient(serving["no-bf16"], "effnet_lite0").embed(inputs[:4])
    reference = ModelClient(serving["default"], "effnet_lite0").embed(inputs[:4])
    np.testing.assert_allclose(fallback, reference, atol=1e-5)


def _ingest(settings: Settings, paths, job_id: str) -> dict:
    from services import context
    from worker.tasks import ingest
    context._context = Context(settings)
    try:
        Context(settings).store.create_job(job_id, len(paths), "items")
        ingest.apply(args=[job_id, [{"key": p.name, "source": p.name, "path": str(p)} for p in paths]]).get()
        return context._context.store.get_job(job_id)
    finally:
        context.reset()


@needs_bf16
@pytest.mark.parametrize("first, then", [("auto", FP32), (FP32, BF16)])
def test_an_index_refuses_vectors_of_the_other_precision(serving, photos, tmp_path, first, then):
    copies = [tmp_path / p.name for p in photos[:5]]  # items are read only under the allowed roots
    for photo, copy in zip(photos, copies):
        copy.write_bytes(photo.read_bytes())
    settings = isolated_settings(tmp_path, serving["default"], model_precision=first)
    try:
        job = _ingest(settings, copies[:3], "first")
        assert job["done"] == 3 and job["failed"] == 0, (job["errors"], job)
        key = Context(settings).model_key
        assert precision_of(key) == (BF16 if first == "auto" else FP32)  # auto: bf16 where served

        other = isolated_settings(tmp_path, serving["default"], model_precision=then,
                                  redis_prefix=settings.redis_prefix)
        with pytest.raises(PrecisionMismatch, match=f"the index holds {precision_of(key)} vectors"):
            Context(other).model_key
        job = _ingest(other, copies[3:5], "second")
        assert job["failed"] == 2 and "VSEARCH_MODEL_PRECISION" in job["errors"][0]["error"], job
        assert Context(settings).store.count_vectors(key) == 3
    finally:
        drop_keys(settings)


def test_auto_follows_the_index_whatever_is_served_first():
    check_same("effnet_lite0_bf16:1", "auto")
    check_same("effnet_lite0:1", "auto")
    check_same("effnet_lite0:1", FP32)
    with pytest.raises(PrecisionMismatch, match="set VSEARCH_MODEL_PRECISION=bf16 or auto"):
        check_same("effnet_lite0_bf16:2", FP32)
