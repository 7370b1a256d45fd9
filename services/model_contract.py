"""The model contract: what model_export writes, every model server serves and the client sends.

A SavedModel signature `serving_default` takes `images` (uint8 [N, H, W, 3], RGB at the model's
input size) and returns `embedding` (float32 [N, D], L2-normalised) and `probabilities`
(float32 [N, 1000]). Tensors travel as TensorFlow's `TensorProto`; the conversions below work on
any generated copy of that message (TensorFlow's own, or services/protos without TensorFlow),
since the field names and the `DataType` numbers are the same in all of them.
"""
from __future__ import annotations

import numpy as np

SIGNATURE = "serving_default"
INPUT = "images"
EMBEDDING = "embedding"
PROBABILITIES = "probabilities"

# tensorflow/core/framework/types.proto
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT64 = 1, 2, 3, 4, 9
NUMPY_DTYPES = {DT_FLOAT: np.float32, DT_DOUBLE: np.float64, DT_INT32: np.int32, DT_UINT8: np.uint8,
                DT_INT64: np.int64}
_DATATYPES = {np.dtype(v): k for k, v in NUMPY_DTYPES.items()}


class TensorError(ValueError):
    """A TensorProto that does not describe an array: unknown dtype, or content of the wrong size."""


def tensor_to_array(tensor) -> np.ndarray:
    dtype = NUMPY_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise TensorError(f"unsupported dtype {tensor.dtype} (TensorFlow DataType number)")
    shape = [d.size for d in tensor.tensor_shape.dim]
    if tensor.tensor_content:
        flat = np.frombuffer(tensor.tensor_content, dtype=dtype)
    else:  # the typed repeated fields; uint8 and int32 travel in int_val
        values = {np.float32: tensor.float_val, np.float64: tensor.double_val, np.int64: tensor.int64_val}.get(
            dtype, tensor.int_val)
        flat = np.asarray(values, dtype=dtype)
    if flat.size != int(np.prod(shape)):
        raise TensorError(f"tensor content has {flat.size} values, shape {shape} needs {int(np.prod(shape))}")
    return flat.reshape(shape)


def fill_tensor(tensor, array: np.ndarray):
    """Writes `array` into the (empty) TensorProto `tensor`; returns it."""
    array = np.ascontiguousarray(array)
    tensor.dtype = _DATATYPES[array.dtype]
    tensor.tensor_shape.dim.extend(type(tensor.tensor_shape).Dim(size=s) for s in array.shape)
    tensor.tensor_content = array.tobytes()
    return tensor
