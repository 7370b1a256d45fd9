"""Code shared by the gateway and the workers (and the local model server)."""
import os

# numpy's OpenBLAS spin-waits on its worker threads after each multi-threaded product. Our
# products are small (fresh-item search, re-ranking), and on two cores those spinning threads
# took CPU from decoding and from the model: measured, a worker used ~2.5 ms of extra CPU per image.
# One BLAS thread per process; concurrency comes from our own threads and processes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
