"""The thin client's messages are byte-for-byte TensorFlow Serving's, without loading TensorFlow."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from services.protos import tfserving_pb2 as pb
from services.model_contract import tensor_to_array
from services.tfs_client import _parse_metadata, build_predict_request
from tests.conftest import ROOT

tf = pytest.importorskip("tensorflow")
from tensorflow.core.protobuf import meta_graph_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2,
)


def official_request(model, images, version=None, output_filter=()):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    request.output_filter.extend(output_filter)
    return request


@pytest.mark.parametrize("shape", [(1, 224, 224, 3), (32, 224, 224, 3), (3, 227, 227, 3)])
@pytest.mark.parametrize("version", [None, 7])
@pytest.mark.parametrize("output_filter", [(), ("embedding",)])
def test_predict_request_bytes_match_official(shape, version, output_filter):
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    ours = build_predict_request("effnet_lite0", images, version, output_filter=output_filter)
    theirs = official_request("effnet_lite0", images, version, output_filter)
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    # and the official parser reads ours back to the same array
    parsed = predict_pb2.PredictRequest.FromString(ours.SerializeToString())
    np.testing.assert_array_equal(tf.make_ndarray(parsed.inputs["images"]), images)


@pytest.mark.parametrize("as_content", [True, False])
def test_response_tensors_parse_both_encodings(as_content):
    values = np.random.default_rng(1).standard_normal((4, 1280)).astype(np.float32)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "m"
    response.model_spec.version.value = 3
    if as_content:
        response.outputs["embedding"].CopyFrom(tf.make_tensor_proto(values))
    else:  # TF Serving may answer with the typed repeated field instead of tensor_content
        proto = response.outputs["embedding"]
        proto.dtype = tf.float32.as_datatype_enum
        proto.tensor_shape.dim.add(size=4)
        proto.tensor_shape.dim.add(size=1280)
        proto.float_val.extend(values.ravel().tolist())
    ours = pb.PredictResponse.FromString(response.SerializeToString())
    assert ours.model_spec.version.value == 3
    np.testing.assert_array_equal(tensor_to_array(ours.outputs["embedding"]), values)


def test_metadata_parsed_from_official_response():
    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    images = signature.inputs["images"]
    images.name, images.dtype = "serving_default_images:0", tf.uint8.as_datatype_enum
    for size in (-1, 227, 227, 3):
        images.tensor_shape.dim.add(size=size)
    for name, dim in (("embedding", 4096), ("probabilities", 1000)):
        out = signature.outputs[name]
        out.dtype = tf.float32.as_datatype_enum
        out.tensor_shape.dim.add(size=-1)
        out.tensor_shape.dim.add(size=dim)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    signatures.signature_def["serving_default"].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=model_pb2.ModelSpec(name="alexnet"))
    response.model_spec.version.value = 2
    response.metadata["signature_def"].Pack(signatures)

    info = _parse_metadata(pb.GetModelMetadataResponse.FromString(response.SerializeToString()))
    assert (info.name, info.version, info.input_name, info.input_size, info.embedding_dim) == \
        ("alexnet", 2, "images", (227, 227), 4096)
    assert info.key == "alexnet:2"


def test_status_response_parses():
    response = get_model_status_pb2.GetModelStatusResponse()
    response.model_version_status.add(version=4, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    ours = pb.GetModelStatusResponse.FromString(response.SerializeToString())
    assert [(s.version, s.state) for s in ours.model_version_status] == [(4, pb.ModelVersionStatus.AVAILABLE)]


def test_client_does_not_import_tensorflow():
    code = ("import sys, services.tfs_client, services.config;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_serving', 'torch')];"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_module_matches_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    proto_dir = ROOT / "services" / "protos"
    # protoc runs in its own process: in one with TensorFlow loaded it crashes
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={tmp_path}",
                    str(proto_dir / "tfserving.proto")], check=True)
    descriptor = lambda path: next(line for line in path.read_text().splitlines() if "AddSerializedFile" in line)
    assert descriptor(tmp_path / "tfserving_pb2.py") == descriptor(proto_dir / "tfserving_pb2.py")
