"""Process-wide settings that every entry point (CLI, gateway app, Celery app) applies once at start.

Nothing here runs at import: each entry point calls `configure_process()` before the heavy imports.
"""
import ctypes
import os


def configure_process() -> None:
    """Call before numpy is imported (OpenBLAS reads its thread count when it loads)."""
    # numpy's OpenBLAS spin-waits on its worker threads after each multi-threaded product. Our
    # products are small (fresh-item search, re-ranking), and on two cores those spinning threads
    # took CPU from decoding and from the model: measured, a worker used ~2.5 ms of extra CPU per image.
    # One BLAS thread per process; concurrency comes from our own threads and processes.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    _reuse_large_buffers()


def _reuse_large_buffers() -> None:
    """glibc hands every freed block over 128 KB back to the kernel, so the next one page-faults
    its way in again. A model batch (4.8 MB) is copied a few times per request: building one took
    0.35 ms of CPU an image, 0.024 ms once glibc keeps blocks up to 32 MB for reuse (measured,
    docs/benchmarks.md). The cost: a process keeps up to its peak of such memory."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameters
        libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
        libc.mallopt(m_trim_threshold, 256 * 1024 * 1024)
    except (OSError, AttributeError):  # not glibc: its allocator, its own policy
        pass

