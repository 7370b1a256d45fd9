"""A gRPC server that speaks TensorFlow Serving's API with the official protos.

It serves `PredictionService.Predict`, `PredictionService.GetModelMetadata` and
`ModelService.GetModelStatus` for the SavedModels under a model base directory, with dynamic
batching. Errors are gRPC status codes with TF Serving's wording where it has one; a bad request
never takes the server down.
"""
from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
    prediction_service_pb2_grpc,
)

from modelserver.registry import ModelRegistry, Servable, ServableNotFound
from services.model_contract import SIGNATURE, TensorError, fill_tensor, tensor_to_array

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
MAX_REQUEST_BATCH = 1024

class BadRequest(ValueError):
    pass


def _servable(registry: ModelRegistry, model_spec, context) -> Servable:
    version = model_spec.version.value if model_spec.HasField("version") else None
    if model_spec.WhichOneof("version_choice") == "version_label":
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "version labels are not supported; use a version number")
    try:
        return registry.get(model_spec.name, version)
    except ServableNotFound as exc:
        context.abort(grpc.StatusCode.NOT_FOUND, str(exc))


def array_to_tensor(array: np.ndarray) -> tensor_pb2.TensorProto:
    return fill_tensor(tensor_pb2.TensorProto(), array)


def validate_images(servable: Servable, request: predict_pb2.PredictRequest) -> np.ndarray:
    if set(request.inputs) != {servable.input_name}:
        raise BadRequest(f"expected exactly one input named '{servable.input_name}', got {sorted(request.inputs)}")
    proto = request.inputs[servable.input_name]
    if proto.dtype != servable.input_dtype.as_datatype_enum:
        raise BadRequest(f"input '{servable.input_name}' must be {servable.input_dtype.name}, "
                         f"got {types_pb2.DataType.Name(proto.dtype)}")
    try:
        images = tensor_to_array(proto)
    except TensorError as exc:
        raise BadRequest(str(exc)) from None
    expected = (None, *servable.input_shape)
    if images.ndim != len(expected) or any(e is not None and e != s for e, s in zip(expected, images.shape)):
        raise BadRequest(f"input '{servable.input_name}' has shape {list(images.shape)}, expected "
                         f"[{', '.join('-1' if e is None else str(e) for e in expected)}]")
    if not 0 < len(images) <= MAX_REQUEST_BATCH:
        raise BadRequest(f"batch of {len(images)} images; allowed 1 to {MAX_REQUEST_BATCH} per request")
    return images


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def Predict(self, request, context):
        servable = _servable(self.registry, request.model_spec, context)
        if request.model_spec.signature_name not in ("", SIGNATURE):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f'Serving signature name: "{request.model_spec.signature_name}" not found in signature def')
        try:
            images = validate_images(servable, request)
            wanted = list(request.output_filter) or None
            unknown = set(wanted or ()) - set(servable.signature_def.outputs)
            if unknown:
                raise BadRequest(f"output_filter names unknown outputs {sorted(unknown)}")
        except BadRequest as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        outputs = servable.predict(images)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = SIGNATURE
        for key, value in outputs.items():
            if wanted is None or key in wanted:
                response.outputs[key].CopyFrom(array_to_tensor(value))
        return response

    def GetModelMetadata(self, request, context):
        if list(request.metadata_field) != ["signature_def"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "Metadata field signature_def is the only one supported; request exactly that field")
        servable = _servable(self.registry, request.model_spec, context)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        signatures.signature_def[SIGNATURE].CopyFrom(servable.signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(signatures)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def GetModelStatus(self, request, context):
        spec = request.model_spec
        versions = self.registry.versions(spec.name)
        if spec.HasField("version"):
            versions = [v for v in versions if v == spec.version.value]
        if not versions:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in versions:
            status = response.model_version_status.add(version=version)
            status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response


class ModelServer:
    """The running server: `port` is the bound port (useful with port 0); `stop()` shuts it down."""

    def __init__(self, registry: ModelRegistry, host: str = "0.0.0.0", port: int = 8500,
                 poll_s: float = 10.0, workers: int = 32):
        self.registry = registry
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(registry), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(registry), self._grpc)
        self.port = self._grpc.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"could not bind {host}:{port}")
        self._stop = threading.Event()
        self._poll_s = poll_s

    def start(self) -> "ModelServer":
        self._grpc.start()
        if self._poll_s > 0:  # pick up versions exported while running, as TF Serving does
            threading.Thread(target=self._poll, name="model-poll", daemon=True).start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_s):
            self.registry.refresh()

    def wait(self) -> None:
        self._grpc.wait_for_termination()

    def stop(self, grace_s: float = 2.0) -> None:
        self._stop.set()
        self._grpc.stop(grace_s).wait()
        self.registry.close()
