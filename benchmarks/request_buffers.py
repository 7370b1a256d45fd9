"""CPU to build and serialise one Predict request of 32 images, with glibc's malloc defaults and as
the service runs (`services/__init__.py` keeps freed blocks up to 32 MB for reuse).

    .venv/bin/python benchmarks/request_buffers.py [--rounds 3]

Each mode runs in its own fresh process, alternating, so the allocator starts clean. The request is
built with the project's protos exactly as `tfs_client.build_predict_request` does; the "defaults"
process loads the generated module by path, so that `services/__init__.py` never runs there.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import importlib.util, json, resource, sys, time
import numpy as np
if sys.argv[1] == "service":
    import services  # noqa: F401  (its import sets the allocator up)
spec = importlib.util.spec_from_file_location("tfserving_pb2", sys.argv[2])
pb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pb)
images = np.random.default_rng(0).integers(0, 255, (32, 224, 224, 3), dtype=np.uint8)

def build():
    request = pb.PredictRequest(output_filter=["embedding"])
    request.model_spec.name = "effnet_lite0"
    tensor = request.inputs["images"]
    tensor.dtype = pb.DT_UINT8
    tensor.tensor_shape.dim.extend(pb.TensorShapeProto.Dim(size=s) for s in images.shape)
    tensor.tensor_content = np.ascontiguousarray(images).tobytes()
    return request.SerializeToString()

for _ in range(3):
    build()
faults, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
for _ in range(50):
    build()
print(json.dumps({"cpu_ms_per_image": (time.process_time() - cpu) / (50 * 32) * 1000,
                  "page_faults_per_request": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 50}))
"""


def run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(ROOT / "services" / "protos" / "tfserving_pb2.py")],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"defaults": [], "service": []}
    for _ in range(args.rounds):
        for mode in results:
            results[mode].append(run(mode))
    print(f"{'malloc':10} {'CPU ms an image (median)':>25} {'page faults a request':>22}")
    for mode, rows in results.items():
        print(f"{mode:10} {statistics.median(r['cpu_ms_per_image'] for r in rows):25.3f} "
              f"{statistics.median(r['page_faults_per_request'] for r in rows):22.0f}")


if __name__ == "__main__":
    main()
