"""Client for TensorFlow Serving's gRPC API that does not load TensorFlow.

The messages come from `services/protos/tfserving.proto`, a wire-compatible subset of the official
ones (tests check the bytes against `tensorflow_serving.apis`), so the gateway and workers start in a
fraction of a second and stay small. Input size and embedding dimension are read from the model's
signature with GetModelMetadata, never assumed.

Create clients after fork (gRPC channels do not survive it): in Celery, in `worker_process_init`.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Sequence

import grpc
import numpy as np

from services.protos import tfserving_pb2 as pb
from services.model_contract import EMBEDDING, INPUT, SIGNATURE, fill_tensor, tensor_to_array

MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # a batch of 32 images at 224x224 is already ~4.8 MB
_PREDICTION = "/tensorflow.serving.PredictionService/"
_MODEL = "/tensorflow.serving.ModelService/"
# Transient failures are retried by gRPC itself (Predict is idempotent).
_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "tensorflow.serving.PredictionService"}, {"service": "tensorflow.serving.ModelService"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "2s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


class ModelServerError(RuntimeError):
    """The model server refused or failed a call; `code` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"model server: {code.name}: {message}")
        self.code = code

    @property
    def transient(self) -> bool:
        return isinstance(self, ModelServerUnavailable)


class ModelServerUnavailable(ModelServerError):
    """Down, overloaded or too slow: worth retrying later."""


_TRANSIENT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    input_name: str
    input_size: tuple[int, int]  # (height, width)
    embedding_dim: int

    @property
    def key(self) -> str:
        """Identifies the vector space: vectors of different keys are not comparable."""
        return f"{self.name}:{self.version}"


def build_predict_request(model: str, images: np.ndarray, version: int | None = None,
                          input_name: str = INPUT, output_filter: Sequence[str] = ()) -> pb.PredictRequest:
    request = pb.PredictRequest(output_filter=list(output_filter))
    request.model_spec.name = model
    request.model_spec.signature_name = SIGNATURE
    if version is not None:
        request.model_spec.version.value = version
    fill_tensor(request.inputs[input_name], np.asarray(images, dtype=np.uint8))
    return request


class ModelClient:
    def __init__(self, target: str, model: str, timeout_s: float = 30.0, batch_size: int = 32,
                 version: int | None = None):
        self.target = target
        self.model = model
        self.timeout_s = timeout_s
        self.batch_size = batch_size
        self.version = version  # pin to this version; None = whatever the server serves newest
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
        ])
        self._predict = self._unary(_PREDICTION + "Predict", pb.PredictResponse)
        self._metadata = self._unary(_PREDICTION + "GetModelMetadata", pb.GetModelMetadataResponse)
        self._status = self._unary(_MODEL + "GetModelStatus", pb.GetModelStatusResponse)
        self._info: ModelInfo | None = None
        self._lock = threading.Lock()

    def _unary(self, path: str, response_type):
        return self._channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=response_type.FromString)

    def _call(self, method, request, timeout_s: float | None = None):
        try:
            return method(request, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as exc:
            error = ModelServerUnavailable if exc.code() in _TRANSIENT_CODES else ModelServerError
            raise error(exc.code(), exc.details() or "") from None

    def info(self, refresh: bool = False) -> ModelInfo:
        """The served model's signature: input name and size, embedding dimension, version."""
        with self._lock:
            if self._info is None or refresh:
                request = pb.GetModelMetadataRequest(metadata_field=["signature_def"])
                request.model_spec.name = self.model
                if self.version is not None:
                    request.model_spec.version.value = self.version
                response = self._call(self._metadata, request)
                self._info = _parse_metadata(response)
            return self._info

    def available_versions(self, timeout_s: float = 5.0) -> list[int]:
        request = pb.GetModelStatusRequest()
        request.model_spec.name = self.model
        response = self._call(self._status, request, timeout_s)
        return sorted(s.version for s in response.model_version_status
                      if s.state == pb.ModelVersionStatus.AVAILABLE)

    def predict(self, images: np.ndarray, outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """One Predict call on a uint8 [N, H, W, 3] batch; returns the outputs by name."""
        info = self.info()
        request = build_predict_request(self.model, images, info.version, info.input_name, outputs)
        response = self._call(self._predict, request)
        if response.model_spec.version.value not in (0, info.version):
            raise ModelServerError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"asked for version {info.version}, got {response.model_spec.version.value}")
        return {name: tensor_to_array(t) for name, t in response.outputs.items()}

    def embed(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised embeddings [N, D] for images already resized to `info().input_size`."""
        info = self.info()
        batch = images if isinstance(images, np.ndarray) else np.stack(list(images))
        if batch.ndim != 4 or batch.shape[1:3] != info.input_size:
            raise ValueError(f"images must be [N, {info.input_size[0]}, {info.input_size[1]}, 3], got {batch.shape}")
        parts = [self.predict(batch[i:i + self.batch_size], outputs=[EMBEDDING])[EMBEDDING]
                 for i in range(0, len(batch), self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, info.embedding_dim), np.float32)

    def close(self) -> None:
        self._channel.close()


def _parse_metadata(response: pb.GetModelMetadataResponse) -> ModelInfo:
    signatures = pb.SignatureDefMap()
    signatures.ParseFromString(response.metadata["signature_def"].value)
    signature = signatures.signature_def[SIGNATURE]
    (input_name, tensor_info), = signature.inputs.items()
    _, height, width, _ = (d.size for d in tensor_info.tensor_shape.dim)
    embedding_dim = signature.outputs[EMBEDDING].tensor_shape.dim[-1].size
    return ModelInfo(name=response.model_spec.name, version=response.model_spec.version.value,
                     input_name=input_name, input_size=(height, width), embedding_dim=embedding_dim)
