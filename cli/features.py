"""Batch feature extraction through the model server, no gateway: the seed's myalexnet_feature.

Writes a float32 [N, D] `.npy` (L2-normalised embeddings) and a text file with the N image paths
(relative to the input folder), one per line, in the same order.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from services import images
from services.sources import IMAGE_EXTENSIONS
from services.tfs_client import ModelClient


def image_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]


def extract_features(input_dir: Path, feature_file: Path, name_file: Path, model_server: str, model: str,
                     batch_size: int = 32) -> tuple[list[str], list[tuple[str, str]]]:
    client = ModelClient(model_server, model, batch_size=batch_size)
    size = client.info().input_size[0]
    paths = image_files(input_dir)
    names, vectors, failed = [], [], []

    def load(path: Path):
        try:
            return images.load_for_model(path.read_bytes(), size)
        except (images.ImageError, OSError) as exc:
            return exc

    # Decoding runs in threads (Pillow releases the GIL) while the previous batch is embedded.
    with ThreadPoolExecutor(2) as pool, tqdm(total=len(paths), unit="img") as bar:
        for start in range(0, len(paths), batch_size):
            batch = paths[start:start + batch_size]
            loaded = list(pool.map(load, batch))
            good = [(p, a) for p, a in zip(batch, loaded) if not isinstance(a, Exception)]
            failed += [(str(p), str(a)) for p, a in zip(batch, loaded) if isinstance(a, Exception)]
            if good:
                vectors.append(client.embed(np.stack([a for _, a in good])))
                names += [str(p.relative_to(input_dir)) for p, _ in good]
            bar.update(len(batch))
    client.close()
    dim = client.info().embedding_dim if not vectors else vectors[0].shape[1]
    np.save(feature_file, np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32))
    Path(name_file).write_text("".join(n + "\n" for n in names))
    for path, error in failed:
        tqdm.write(f"skipped {path}: {error}")
    return names, failed
