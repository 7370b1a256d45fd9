"""Inference precision: fp32 everywhere, bf16 where the model server's CPU has bf16 instructions.

bf16 runs the same SavedModel through oneDNN's bf16 auto-mixed precision, a Grappler rewrite
(`RewriterConfig.auto_mixed_precision_onednn_bfloat16`): on a CPU with AVX512_BF16 or AMX, about twice
the batch throughput, embeddings within cosine ~0.99 of fp32 (docs/benchmarks.md). Close, but not the
same vector space, so the precision is part of the served model's name: `effnet_lite0_bf16` is the
bf16 variant of `effnet_lite0`, its vectors get a model key of their own ("effnet_lite0_bf16:1") and
never share an index with fp32 ones.

Who applies the rewrite:
- TensorFlow Serving (2.15+): `--mixed_precision=bfloat16`, for every model of that server; so a bf16
  server serves only bf16 names (deploy/tfserving/start.sh picks the flag and the config by CPU).
- `vsearch model-server`: per model, by its name (modelserver registry).
Without CPU support TensorFlow skips the rewrite silently (fp32 vectors under a bf16 name), so bf16
names are served only on CPUs that have it.
"""
from __future__ import annotations

from pathlib import Path

FP32, BF16 = "fp32", "bf16"
PRECISIONS = (FP32, BF16)
AUTO = "auto"  # a setting: bf16 if the model server serves it, else fp32
SUFFIX = "_" + BF16
# /proc/cpuinfo flags of the instructions oneDNN runs bf16 with (AVX512_BF16 dot products, AMX tiles).
CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


class PrecisionMismatch(RuntimeError):
    """Vectors of one precision were about to meet an index built in the other."""


def served_name(model: str, precision: str) -> str:
    """The name a model is served under in `precision`: effnet_lite0 / effnet_lite0_bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return model + SUFFIX if precision == BF16 else model


def precision_of(name: str) -> str:
    """The precision of a served name or model key ("effnet_lite0_bf16:1" -> bf16)."""
    return BF16 if name.rsplit(":", 1)[0].endswith(SUFFIX) else FP32


def cpu_has_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether this machine's CPU has bf16 instructions (x86 flags in /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(flag in flags for flag in CPU_FLAGS)


def check_same(index_key: str, wanted: str) -> None:
    """Raises PrecisionMismatch unless vectors of precision `wanted` (a precision or AUTO) may go into
    the index of model key `index_key`."""
    have = precision_of(index_key)
    if wanted not in (AUTO, have):
        raise PrecisionMismatch(
            f"the index holds {have} vectors ({index_key}) but {wanted} was asked for "
            f"(VSEARCH_MODEL_PRECISION={wanted}); vectors of different precision are not comparable: "
            f"set VSEARCH_MODEL_PRECISION={have} or {AUTO}, or index into another VSEARCH_REDIS_PREFIX")
