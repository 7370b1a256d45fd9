"""AlexNet export: random weights in the exact bvlc_alexnet.npy layout, checked layer by layer against an
independent PyTorch forward; fc6/fc7 embedding choice, weights over HTTP, and clear errors for bad files.

Raw activations reach a few hundred, so raw layers are compared with a tolerance of 1e-4 relative to
each layer's largest magnitude; normalised embeddings and probabilities with 1e-4 absolute.
"""
import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import foolbox
import numpy as np
import pytest
import tensorflow as tf

from model_export import alexnet
from model_export.errors import ModelExportError
from model_export.export import export_model
from tests import torch_reference

SIZE = 227
# The bvlc_alexnet.npy layout: HWIO conv kernels (conv2/4/5 grouped in two), (in, out) dense weights.
LAYOUT = {
    "conv1": (11, 11, 3, 96),
    "conv2": (5, 5, 48, 256),
    "conv3": (3, 3, 256, 384),
    "conv4": (3, 3, 192, 384),
    "conv5": (3, 3, 192, 256),
    "fc6": (9216, 4096),
    "fc7": (4096, 4096),
    "fc8": (4096, 1000),
}


def random_weights(seed: int = 0) -> dict[str, list[np.ndarray]]:
    """He-scaled weights keep activations in range; a small fc8 keeps the softmax away from one-hot."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in LAYOUT.items():
        gain = 0.002 if name == "fc8" else 2.0
        std = np.float32(np.sqrt(gain / np.prod(shape[:-1])))
        weights[name] = [
            rng.standard_normal(shape, dtype=np.float32) * std,
            rng.standard_normal(shape[-1], dtype=np.float32) * np.float32(0.1),
        ]
    return weights


def assert_close_to_scale(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(actual - expected).max() <= rtol * scale


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def weights() -> dict[str, list[np.ndarray]]:
    return random_weights()


@pytest.fixture(scope="module")
def weights_file(weights, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "bvlc_alexnet.npy"
    np.save(path, weights, allow_pickle=True)
    return path


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    from PIL import Image

    photos = sorted((Path(foolbox.__file__).parent / "data").glob("imagenet_*.jpg"))[:4]
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE))) for p in photos])


@pytest.fixture(scope="module")
def reference(weights, images) -> dict[str, np.ndarray]:
    return torch_reference.alexnet(weights, images)


@pytest.fixture(scope="module")
def http_url(weights_file):
    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(QuietHandler, directory=weights_file.parent)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()
    thread.join()


def serve(version_dir: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    assert inputs["images"].dtype == tf.uint8 and inputs["images"].shape.as_list() == [None, SIZE, SIZE, 3]
    assert signature.structured_outputs["embedding"].shape.as_list() == [None, 4096]
    return {name: value.numpy() for name, value in signature(images=tf.constant(images)).items()}


def test_layers_match_torch(weights_file, images, reference):
    layers = alexnet.AlexNet(alexnet.load_weights(weights_file)).layers(tf.constant(images))
    for name in ("fc6", "fc7", "fc8"):
        assert_close_to_scale(layers[name].numpy(), reference[name])
    assert 0.01 < reference["probabilities"].max() < 0.99  # the comparison is not between one-hot vectors


def test_export_fc6_from_file(weights_file, images, reference, tmp_path):
    version_dir = export_model("alexnet", out=tmp_path, weights=str(weights_file))
    assert version_dir == tmp_path / "alexnet" / "1"
    served = serve(version_dir, images)
    np.testing.assert_allclose(np.linalg.norm(served["embedding"], axis=1), 1.0, atol=1e-5)
    assert np.abs(served["embedding"] - l2_normalise(reference["fc6"])).max() < 1e-4
    assert np.abs(served["probabilities"] - reference["probabilities"]).max() < 1e-4


def test_export_fc7_from_url(http_url, images, reference, tmp_path):
    url = http_url + "bvlc_alexnet.npy"
    version_dir = export_model("alexnet", out=tmp_path, version=2, weights=url, layer="fc7")
    served = serve(version_dir, images)
    assert np.abs(served["embedding"] - l2_normalise(reference["fc7"])).max() < 1e-4
    fc6_embedding = l2_normalise(reference["fc6"])
    assert np.abs(served["embedding"] - fc6_embedding).max() > 0.01
    assert np.abs(served["probabilities"] - reference["probabilities"]).max() < 1e-4


def _save(tmp_path: Path, obj) -> Path:
    path = tmp_path / "weights.npy"
    np.save(path, obj, allow_pickle=True)
    return path


def _pair(shape: tuple[int, ...], bias: int | None = None) -> list[np.ndarray]:
    return [np.zeros(shape, np.float32), np.zeros(bias or shape[-1], np.float32)]


def _npz(tmp_path: Path) -> Path:
    path = tmp_path / "weights.npz"
    np.savez(path, conv1=np.zeros(3))
    return path


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "weights.npy"
    path.write_text("not numpy")
    return path


@pytest.mark.parametrize(
    "make_source, message",
    [
        (lambda tmp: tmp / "missing.npy", "not found"),
        (_text, "not a .npy file"),
        (lambda tmp: _save(tmp, np.zeros(3, np.float32)), "pickled dict"),
        (lambda tmp: _save(tmp, ["conv1"]), "pickled dict"),
        (_npz, "pickled dict"),
        (lambda tmp: _save(tmp, {"conv1": [np.zeros((11, 11, 3, 96), np.float32)]}), "conv1.*pair"),
        (lambda tmp: _save(tmp, {"conv1": _pair((11, 11, 3, 64))}), "conv1 weights have shape"),
        (lambda tmp: _save(tmp, {"conv1": _pair((11, 11, 3, 96), bias=95)}), "conv1 biases have shape"),
        (lambda tmp: _save(tmp, {"conv1": [np.zeros((11, 11, 3, 96), int), np.zeros(96)]}), "not floating"),
        (lambda tmp: _save(tmp, {"conv1": _pair((11, 11, 3, 96))}), "'conv2' missing"),
    ],
)
def test_bad_weight_files_raise_clear_errors(tmp_path, make_source, message):
    with pytest.raises(ModelExportError, match=message):
        export_model("alexnet", out=tmp_path / "models", weights=make_source(tmp_path))
    assert not (tmp_path / "models" / "alexnet").exists()


def test_bad_url_and_arguments_raise_clear_errors(http_url, tmp_path):
    with pytest.raises(ModelExportError, match="cannot download.*404"):
        export_model("alexnet", out=tmp_path, weights=http_url + "nothing-here.npy")
    with pytest.raises(ModelExportError, match="needs weights"):
        export_model("alexnet", out=tmp_path)
    with pytest.raises(ModelExportError, match="no embedding layer 'fc8'"):
        export_model("alexnet", out=tmp_path, weights=http_url + "bvlc_alexnet.npy", layer="fc8")
