"""EfficientNet-Lite0 export (and Lite1, Lite2: numerics and top-1): numerics against an independent
PyTorch forward, top-1 on real ImageNet photos (foolbox's samples), the serving signature, warm-up
requests and version handling."""
from pathlib import Path

import foolbox
import numpy as np
import pytest
import tensorflow as tf
import torch
from PIL import Image
from tensorflow_serving.apis import prediction_log_pb2

from model_export import effnet_lite
from model_export.errors import ModelExportError, VersionExistsError
from model_export.export import export_model
from tests import torch_reference

PHOTOS = sorted((Path(foolbox.__file__).parent / "data").glob("imagenet_*.jpg"))
SIZE = 224


def load_photo(path: Path, size: int = SIZE) -> np.ndarray:
    """Short side to `size`, then the centre square."""
    image = Image.open(path).convert("RGB")
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.LANCZOS)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


@pytest.fixture(scope="module")
def imagenet_batch() -> tuple[np.ndarray, np.ndarray]:
    """The 20 photos as one uint8 batch, and their labels."""
    assert len(PHOTOS) == 20
    labels = np.array([int(path.stem.rsplit("_", 1)[1]) for path in PHOTOS])
    return np.stack([load_photo(path) for path in PHOTOS]), labels


@pytest.fixture(scope="module")
def exported(model_base) -> Path:
    """The default export, made once per session by conftest's `model_base`."""
    return model_base / "effnet_lite0" / "1"


@pytest.fixture(scope="module")
def serve(exported):
    return tf.saved_model.load(str(exported)).signatures["serving_default"]


@pytest.fixture(scope="module")
def served(serve, imagenet_batch) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in serve(images=tf.constant(imagenet_batch[0])).items()}


@pytest.fixture(scope="module")
def reference(imagenet_batch) -> tuple[np.ndarray, np.ndarray]:
    state_dict = torch.load(effnet_lite.packaged_weights_path(), map_location="cpu", weights_only=True)
    return torch_reference.effnet_lite(state_dict, imagenet_batch[0])


def test_export_writes_one_version_folder(exported):
    assert exported.name == "1" and exported.parent.name == "effnet_lite0"
    assert [p.name for p in exported.parent.iterdir()] == ["1"]  # no staging leftovers
    assert (exported / "saved_model.pb").is_file()


def test_signature_contract(serve):
    _, inputs = serve.structured_input_signature
    assert list(inputs) == ["images"]
    assert inputs["images"].dtype == tf.uint8 and inputs["images"].shape.as_list() == [None, SIZE, SIZE, 3]
    outputs = serve.structured_outputs
    assert sorted(outputs) == ["embedding", "probabilities"]
    for name, dim in (("embedding", 1280), ("probabilities", 1000)):
        assert outputs[name].dtype == tf.float32 and outputs[name].shape.as_list() == [None, dim]


def test_features_and_logits_match_torch(imagenet_batch, reference):
    features, logits = effnet_lite.build()(tf.constant(imagenet_batch[0]))
    ref_features, ref_logits = reference
    assert np.abs(features.numpy() - ref_features).max() < 1e-4
    assert np.abs(logits.numpy() - ref_logits).max() < 1e-4


def test_served_outputs_match_torch(served, reference):
    ref_features, ref_logits = reference
    embedding, probabilities = served["embedding"], served["probabilities"]
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    ref_embedding = ref_features / np.linalg.norm(ref_features, axis=1, keepdims=True)
    assert np.abs(embedding - ref_embedding).max() < 1e-4
    ref_probabilities = torch.softmax(torch.from_numpy(ref_logits), dim=1).numpy()
    assert np.abs(probabilities - ref_probabilities).max() < 1e-4


def test_top1_on_imagenet_photos(served, imagenet_batch):
    correct = int((served["probabilities"].argmax(axis=1) == imagenet_batch[1]).sum())
    assert correct >= 17, f"top-1 {correct}/20"


@pytest.mark.parametrize("variant", [1, 2])
def test_larger_variants_match_torch_and_classify(variant):
    """Lite1 (240 px) and Lite2 (260 px) from their packages: the same numerics and real top-1."""
    net = effnet_lite.build(variant=f"effnet_lite{variant}")
    labels = np.array([int(path.stem.rsplit("_", 1)[1]) for path in PHOTOS])
    batch = np.stack([load_photo(path, net.input_size) for path in PHOTOS])
    features, logits = net(tf.constant(batch))
    weights = effnet_lite.packaged_weights_path(f"effnet_lite{variant}")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    ref_features, ref_logits = torch_reference.effnet_lite(state, batch, variant)
    assert np.abs(features.numpy() - ref_features).max() < 1e-4
    assert np.abs(logits.numpy() - ref_logits).max() < 1e-3
    correct = int((logits.numpy().argmax(axis=1) == labels).sum())
    assert correct >= 17, f"top-1 {correct}/20"


def test_warmup_request_parses_and_runs(exported, serve):
    records = list(tf.data.TFRecordDataset(str(exported / "assets.extra" / "tf_serving_warmup_requests")))
    assert len(records) == 1
    log = prediction_log_pb2.PredictionLog.FromString(records[0].numpy())
    request = log.predict_log.request
    assert request.model_spec.name == "effnet_lite0"
    assert request.model_spec.signature_name == "serving_default"
    images = tf.make_ndarray(request.inputs["images"])
    assert images.dtype == np.uint8 and images.shape == (1, SIZE, SIZE, 3)
    assert serve(images=tf.constant(images))["embedding"].shape == (1, 1280)


def test_refuses_to_overwrite_a_version_unless_asked(tmp_path):
    version_dir = tmp_path / "effnet_lite0" / "3"
    version_dir.mkdir(parents=True)
    (version_dir / "marker").write_text("old")
    with pytest.raises(VersionExistsError, match="overwrite") as caught:
        export_model(out=tmp_path, version=3)
    assert isinstance(caught.value, FileExistsError)
    assert (version_dir / "marker").exists()

    assert export_model(out=tmp_path, version=3, overwrite=True) == version_dir
    assert not (version_dir / "marker").exists() and (version_dir / "saved_model.pb").is_file()
    assert [p.name for p in version_dir.parent.iterdir()] == ["3"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model": "resnet50"}, "unknown model"),
        ({"layer": "fc7"}, "alexnet only"),
        ({"version": -1}, "version"),
        ({"version": "2"}, "version"),
        ({"weights": "/nonexistent/lite0.pth"}, "not found"),
        ({"weights": "http://127.0.0.1:9/lite0.pth"}, "cannot download"),
    ],
)
def test_bad_arguments_raise_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(ModelExportError, match=message):
        export_model(out=tmp_path, **kwargs)
    assert not (tmp_path / "effnet_lite0").exists()


def test_bad_state_dicts_raise_clear_errors(tmp_path):
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("not a checkpoint")
    with pytest.raises(ModelExportError, match="cannot read"):
        export_model(out=tmp_path, weights=not_a_checkpoint)

    state = torch.load(effnet_lite.packaged_weights_path(), map_location="cpu", weights_only=True)
    state["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)  # block 3 is 5x5
    wrong_kernel = tmp_path / "wrong.pth"
    torch.save(state, wrong_kernel)
    with pytest.raises(ModelExportError, match=r"_blocks\.3\._depthwise_conv\.weight has shape"):
        export_model(out=tmp_path / "out", weights=wrong_kernel)
