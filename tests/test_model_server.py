"""The local model server, for real: exported default model, `vsearch model-server` subprocess,
queried by our thin client and by TensorFlow Serving's official client stubs."""
from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from services.tfs_client import ModelClient, ModelServerError
from tests.conftest import free_port, imagenet_label, start_model_server, stop_process

tf = pytest.importorskip("tensorflow")
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402


def load(path, size=224):
    """Short side to `size`, centre crop: the service's convention."""
    from services.images import load_for_model
    return load_for_model(path.read_bytes(), size)


@pytest.fixture(scope="module")
def client(model_server):
    c = ModelClient(model_server, "effnet_lite0", timeout_s=30)
    yield c
    c.close()


@pytest.fixture(scope="module")
def official_stub(model_server):
    channel = grpc.insecure_channel(model_server, options=[("grpc.max_send_message_length", 1 << 28)])
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def test_metadata_describes_the_signature(client):
    info = client.info()
    assert (info.name, info.version, info.input_name, info.input_size, info.embedding_dim) == \
        ("effnet_lite0", 1, "images", (224, 224), 1280)
    assert client.available_versions() == [1]


def test_real_photos_get_unit_embeddings_and_their_class_in_top5(client, photos):
    images = np.stack([load(p) for p in photos])
    out = client.predict(images)
    assert out["embedding"].shape == (len(photos), 1280) and out["embedding"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=1), 1.0, atol=1e-5)
    top5 = np.argsort(-out["probabilities"], axis=1)[:, :5]
    hits = sum(imagenet_label(p) in row for p, row in zip(photos, top5))
    assert hits >= 19, f"right class in top-5 for only {hits}/{len(photos)} photos"


def test_single_and_concurrent_requests_equal_one_batch(client, photos):
    images = np.stack([load(p) for p in photos[:8]])
    batched = client.embed(images)
    with ThreadPoolExecutor(8) as pool:
        singles = np.concatenate(list(pool.map(lambda im: client.embed(im[None]), images)))
    np.testing.assert_allclose(singles, batched, atol=1e-5)


def test_embed_splits_large_lists_into_batches(client, photos):
    images = np.stack([load(p) for p in photos] * 2)  # 40 images, batch size 32
    vectors = client.embed(images)
    assert vectors.shape == (40, 1280)
    np.testing.assert_allclose(vectors[:20], vectors[20:], atol=1e-5)


def test_official_client_is_served(official_stub, photos):
    image = load(photos[0])[None]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "effnet_lite0"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(image))
    response = official_stub.Predict(request, timeout=30)
    assert response.model_spec.version.value == 1
    embedding = tf.make_ndarray(response.outputs["embedding"])
    assert embedding.shape == (1, 1280)
    assert int(np.argmax(tf.make_ndarray(response.outputs["probabilities"]))) == imagenet_label(photos[0])


def _official_error(stub, mutate) -> grpc.RpcError:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "effnet_lite0"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 224, 224, 3), np.uint8)))
    mutate(request)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=30)
    return info.value


def _set_input(array):
    return lambda r: r.inputs["images"].CopyFrom(tf.make_tensor_proto(array))


@pytest.mark.parametrize("mutate, code, words", [
    (lambda r: setattr(r.model_spec, "name", "nope"), grpc.StatusCode.NOT_FOUND, "Servable not found"),
    (lambda r: r.model_spec.version.__setattr__("value", 9), grpc.StatusCode.NOT_FOUND, "Specific(effnet_lite0, 9)"),
    (lambda r: setattr(r.model_spec, "signature_name", "other"), grpc.StatusCode.FAILED_PRECONDITION, "other"),
    (_set_input(np.zeros((1, 224, 224, 3), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "must be uint8"),
    (_set_input(np.zeros((1, 200, 224, 3), np.uint8)), grpc.StatusCode.INVALID_ARGUMENT, "[-1, 224, 224, 3]"),
    (_set_input(np.zeros((224, 224, 3), np.uint8)), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    (_set_input(np.zeros((1025, 224, 224, 3), np.uint8)), grpc.StatusCode.INVALID_ARGUMENT, "batch of 1025"),
    (_set_input(np.zeros((0, 224, 224, 3), np.uint8)), grpc.StatusCode.INVALID_ARGUMENT, "batch of 0"),
    (lambda r: r.inputs["other"].CopyFrom(r.inputs["images"]), grpc.StatusCode.INVALID_ARGUMENT, "exactly one input"),
    (lambda r: r.output_filter.append("logits"), grpc.StatusCode.INVALID_ARGUMENT, "unknown outputs"),
    (lambda r: setattr(r.inputs["images"], "tensor_content", b"\0" * 10), grpc.StatusCode.INVALID_ARGUMENT, "values"),
])
def test_bad_requests_get_clear_status_and_the_server_stays_up(official_stub, client, mutate, code, words):
    error = _official_error(official_stub, mutate)
    assert error.code() == code and words in error.details()
    assert client.embed(np.zeros((1, 224, 224, 3), np.uint8)).shape == (1, 1280)


def test_client_reports_errors_as_model_server_error(model_server):
    c = ModelClient(model_server, "missing_model", timeout_s=5)
    with pytest.raises(ModelServerError) as info:
        c.info()
    assert info.value.code == grpc.StatusCode.NOT_FOUND and not info.value.transient
    c.close()


def test_unreachable_server_is_a_transient_error():
    c = ModelClient(f"127.0.0.1:{free_port()}", "effnet_lite0", timeout_s=1)
    with pytest.raises(ModelServerError) as info:
        c.info()
    assert info.value.transient
    c.close()


def test_versions_can_be_pinned(model_base, tmp_path, photos):
    """Two versions served side by side; a pinned client keeps getting its version."""
    base = tmp_path / "models"
    shutil.copytree(model_base / "effnet_lite0" / "1", base / "effnet_lite0" / "1")
    shutil.copytree(model_base / "effnet_lite0" / "1", base / "effnet_lite0" / "3")
    port = free_port()
    proc = start_model_server(base, port)
    try:
        newest = ModelClient(f"127.0.0.1:{port}", "effnet_lite0")
        pinned = ModelClient(f"127.0.0.1:{port}", "effnet_lite0", version=1)
        assert newest.info().version == 3 and newest.info().key == "effnet_lite0:3"
        assert pinned.info().version == 1
        assert newest.available_versions() == [1, 3]
        image = load(photos[1])[None]
        np.testing.assert_allclose(newest.embed(image), pinned.embed(image), atol=1e-6)
        newest.close()
        pinned.close()
    finally:
        stop_process(proc)
