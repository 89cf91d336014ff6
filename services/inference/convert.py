"""The one place where the inference service's protobuf messages meet its domain types.

Open Inference Protocol tensors become numpy arrays here, checked against the model's
signature; a request that does not fit raises InvalidArgument naming the expected
datatype and shape, which the servicer answers as INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from quantmesh.features.v1 import features_pb2
from quantmesh.inference.v1 import inference_pb2, open_inference_pb2
from quantmesh.runtime.errors import FailedPrecondition, InvalidArgument
from quantmesh.services.inference.core import NUMPY_DATATYPES, LoadedModel, TensorSpec
from quantmesh.services.inference.stream import FeatureColumns, PredictionColumns, StreamRequest
from quantmesh.services.registry.core import ModelVersion

InferRequest = open_inference_pb2.ModelInferRequest
InferResponse = open_inference_pb2.ModelInferResponse
TensorMetadata = open_inference_pb2.ModelMetadataResponse.TensorMetadata

# Typed field of InferTensorContents for each datatype (the protocol's table).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def features_from_infer_request(request: InferRequest, model: LoadedModel) -> np.ndarray:
    """The FP32 ``[N, k]`` input of a ModelInfer request (from typed or raw contents).

    Raises
    ------
    InvalidArgument
        For a missing or extra input, a datatype other than FP32, a shape other than
        ``[N, k]``, or contents whose size does not match the shape.
    """
    spec, k = model.input, model.n_features
    expected = f"datatype FP32 and shape [N, {k}]"
    names = [tensor.name for tensor in request.inputs]
    if names != [spec.name]:
        raise InvalidArgument(
            f"model {model.label} takes one input {spec.name!r} with {expected}; the request "
            f"has inputs {names}"
        )
    tensor = request.inputs[0]
    if tensor.datatype != "FP32":
        raise InvalidArgument(
            f"input {spec.name!r} of model {model.label} must have {expected}, got datatype "
            f"{tensor.datatype or '(empty)'}"
        )
    shape = list(tensor.shape)
    if len(shape) != 2 or shape[1] != k or shape[0] < 1:
        raise InvalidArgument(
            f"input {spec.name!r} of model {model.label} must have {expected} (N >= 1), "
            f"got shape {shape}"
        )
    count = shape[0] * shape[1]
    if request.raw_input_contents:
        if len(request.raw_input_contents) != len(request.inputs):
            raise InvalidArgument(
                f"raw_input_contents has {len(request.raw_input_contents)} entries for "
                f"{len(request.inputs)} inputs; it needs one per input"
            )
        if tensor.HasField("contents"):
            raise InvalidArgument(
                f"input {spec.name!r} sets contents while the request uses "
                "raw_input_contents; use one or the other"
            )
        data = request.raw_input_contents[0]
        if len(data) != 4 * count:
            raise InvalidArgument(
                f"raw contents of input {spec.name!r} hold {len(data)} bytes; shape {shape} "
                f"FP32 needs {4 * count} (little-endian float32, row-major)"
            )
        values = np.frombuffer(data, dtype="<f4")
    else:
        contents = tensor.contents
        stray = [field.name for field, _ in contents.ListFields() if field.name != "fp32_contents"]
        if stray:
            raise InvalidArgument(
                f"input {spec.name!r} is FP32, so its values go in fp32_contents, not "
                f"{', '.join(stray)}"
            )
        if len(contents.fp32_contents) != count:
            raise InvalidArgument(
                f"input {spec.name!r} has {len(contents.fp32_contents)} values in "
                f"fp32_contents; shape {shape} needs {count}"
            )
        values = np.array(contents.fp32_contents, np.float32)
    return values.astype(np.float32, copy=False).reshape(shape)


def requested_outputs(request: InferRequest, model: LoadedModel) -> list[TensorSpec]:
    """The outputs a request asks for, in its order; every output when it names none."""
    if not request.outputs:
        return list(model.outputs)
    by_name = {spec.name: spec for spec in model.outputs}
    unknown = [output.name for output in request.outputs if output.name not in by_name]
    if unknown:
        raise InvalidArgument(
            f"model {model.label} has no output {', '.join(map(repr, unknown))}; its outputs: "
            f"{', '.join(by_name)}"
        )
    return [by_name[output.name] for output in request.outputs]


def infer_response(
    request: InferRequest,
    model: LoadedModel,
    outputs: Sequence[tuple[TensorSpec, np.ndarray]],
) -> InferResponse:
    """A ModelInfer response; raw little-endian contents iff the request used raw inputs."""
    raw = bool(request.raw_input_contents)
    response = InferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
    for spec, array in outputs:
        datatype = NUMPY_DATATYPES.get(array.dtype, spec.datatype)
        tensor = response.outputs.add(name=spec.name, datatype=datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(
                array.astype(array.dtype.newbyteorder("<")).tobytes()
            )
        else:
            getattr(tensor.contents, _CONTENTS_FIELD[datatype]).extend(array.ravel().tolist())
    return response


def tensor_metadata(spec: TensorSpec) -> TensorMetadata:
    return TensorMetadata(name=spec.name, datatype=spec.datatype, shape=spec.shape)


def model_metadata(
    model: LoadedModel, versions: Sequence[ModelVersion], platform: str
) -> open_inference_pb2.ModelMetadataResponse:
    """ModelMetadata of a served model; aliases as the registry has them now."""
    current = next((v for v in versions if v.version == model.version), model.record)
    return open_inference_pb2.ModelMetadataResponse(
        name=model.name,
        versions=[str(version.version) for version in versions],
        platform=platform,
        inputs=[tensor_metadata(spec) for spec in model.inputs],
        outputs=[tensor_metadata(spec) for spec in model.outputs],
        properties={
            "sha256": model.record.sha256,
            "aliases": ",".join(current.aliases),
            "feature_names": ",".join(model.feature_names),
            "feature_schema_version": model.record.params.get("feature_schema_version", ""),
        },
    )


def model_ref_to_proto(model: LoadedModel) -> inference_pb2.ModelRef:
    return inference_pb2.ModelRef(name=model.name, version=str(model.version), alias=model.alias)


def served_model_to_proto(model: LoadedModel) -> inference_pb2.ServedModel:
    return inference_pb2.ServedModel(
        model=model_ref_to_proto(model),
        role=inference_pb2.SERVING_ROLE_PRIMARY,
        traffic_bps=10_000,
        sha256=bytes.fromhex(model.record.sha256),
        feature_schema_version=model.record.params.get("feature_schema_version", ""),
        loaded_time_ms=model.loaded_ms,
        ready=model.ready,
    )


def stream_request_from_proto(message: inference_pb2.Subscription) -> StreamRequest:
    return StreamRequest(
        symbols=[name.strip() for name in message.symbols],
        from_seq=message.from_seq,
        batch_size=message.batch_size,
        initial_credit=message.initial_credit,
        model_names=[name.strip() for name in message.model_names],
        include_shadow=message.include_shadow,
    )


def feature_columns_from_proto(batch: features_pb2.FeatureBatch) -> FeatureColumns:
    """Decode a FeatureBatch; FailedPrecondition if its columns do not add up."""
    names = tuple(batch.feature_names)
    rows = len(batch.time_msc)
    values = np.array(batch.values, np.float64)
    if values.size != rows * len(names) or len(batch.symbol_index) != rows:
        raise FailedPrecondition(
            f"the features service sent a malformed batch at seq {batch.seq}: {rows} rows, "
            f"{len(names)} features, {values.size} values, {len(batch.symbol_index)} symbols"
        )
    return FeatureColumns(
        seq=batch.seq,
        symbols=tuple(batch.symbols),
        symbol_index=np.array(batch.symbol_index, np.uint32),
        time_msc=np.array(batch.time_msc, np.int64),
        feature_names=names,
        values=values.reshape(rows, len(names)),
    )


def prediction_batch_to_proto(columns: PredictionColumns) -> inference_pb2.SubscribeResponse:
    """Encode prediction rows (lists into the constructor: upb's fastest path)."""
    batch = inference_pb2.PredictionBatch(
        seq=columns.seq,
        symbols=columns.symbols,
        symbol_index=columns.symbol_index.tolist(),
        time_msc=columns.time_msc.tolist(),
        models=[
            inference_pb2.ModelRef(
                name=ref.name, version=str(ref.version), alias=ref.alias, shadow=ref.shadow
            )
            for ref in columns.models
        ],
        model_index=columns.model_index.tolist(),
        probability_up=columns.probability_up.tolist(),
        predicted_class=columns.predicted_class.tolist(),
        feature_digest=columns.feature_digest.tolist(),
        feature_seq=columns.feature_seq.tolist(),
    )
    return inference_pb2.SubscribeResponse(batch=batch)
