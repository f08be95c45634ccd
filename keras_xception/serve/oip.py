"""The Open Inference Protocol v2 (KServe, Triton, OpenVINO Model Server, MLServer).

    GET  /v2                       server metadata; extensions: binary_tensor_data
    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/NAME           model metadata: inputs and output
    GET  /v2/models/NAME/ready
    POST /v2/models/NAME/infer     (also under /versions/1/)

One input per request, either of:

- `image`: BYTES, shape `[N]`, each element an encoded image file (JPEG,
  PNG, WebP, BMP, GIF, TIFF): raw bytes with the binary extension, a base64
  string in plain JSON (JSON cannot carry raw bytes);
- `pixels`: FP32 or UINT8, shape `[N, H, W, 3]` at the model's input size,
  RGB values from 0 to 255 (the server applies the model's preprocessing).

One output: `probabilities` (FP32 `[N, classes]`) for a model with a
classifier, `embedding` (FP32 `[N, 2048]`) for one without.

The binary tensor data extension (Triton's `binary_tensor_data`): a body
whose JSON header is followed by raw tensor bytes carries the header's
length in bytes in `Inference-Header-Content-Length`; an input whose
`parameters` hold `binary_data_size` takes that many bytes of the rest, in
the order of the inputs (a BYTES element is a 4-byte little-endian length
followed by its bytes); an output is sent raw when its `parameters` say
`binary_data: true`, or when the request's `parameters` say
`binary_data_output: true` and the output does not say otherwise. The
answer then carries `Inference-Header-Content-Length` too, and each raw
output `binary_data_size`.

What a stock client sends (tritonclient's HTTP client, 2.x): no
Content-Type header at all; the header length of `json.dumps(request)`
(ASCII, so its characters are its bytes); and, when the caller names no
outputs, `"parameters": {"binary_data_output": true}`, so the answer comes
back binary.

Errors are `{"error": "<one line>"}`. Only the bodies live here (no HTTP):
`app` routes to them.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct

import numpy as np

from keras_xception.serve.service import RequestError

IMAGE = "image"
PIXELS = "pixels"
VERSION = "1"
EXTENSIONS = ("binary_tensor_data",)
HEADER_LENGTH = "Inference-Header-Content-Length"

_PIXEL_TYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}


class Infer:
    """A parsed infer request.

    Attributes:
        items: `(label, payload)` per image, for `Service.pixels`.
        id: The request's `id`, echoed in the answer, or `None`.
        binary_output: Whether the output goes back as raw bytes.
    """

    def __init__(self, items, request_id, binary_output):
        self.items = items
        self.id = request_id
        self.binary_output = binary_output


def _split(body: bytes, header_length):
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 < length <= len(body):
        raise RequestError(
            f"{HEADER_LENGTH} must be the length in bytes of the JSON header, from 1 "
            f"to the body's {len(body)} bytes. Received: {header_length!r}")
    return body[:length], memoryview(body)[length:]


def parse_infer(body: bytes, header_length, service) -> Infer:
    """The images of an infer request, and how to answer it.

    Args:
        body: The request body.
        header_length: The `Inference-Header-Content-Length` header, or `None`.
        service: The `Service` (input size, output name).

    Raises:
        RequestError: 400, naming what is wrong.
    """
    header, binary = _split(body, header_length)
    try:
        request = json.loads(header)
    except (ValueError, UnicodeDecodeError) as err:
        hint = "" if header_length is not None else (
            f"; a body with binary tensor data needs the {HEADER_LENGTH} header")
        raise RequestError(f"the request is not JSON: {err}{hint}") from None
    except RecursionError:
        raise RequestError("the request's JSON is nested too deeply") from None
    if not isinstance(request, dict):
        raise RequestError('the request must be a JSON object with "inputs"')
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(
            f'"inputs" must hold exactly one input: {IMAGE!r} (BYTES [N], encoded '
            f"images) or {PIXELS!r} (FP32 or UINT8 [N, H, W, 3]). Received: "
            + (f"{len(inputs)} inputs" if isinstance(inputs, list) else
               f"{type(inputs).__name__}"))
    tensor = inputs[0]
    offset = 0
    raw = None
    size = _parameters(tensor, f"input {tensor.get('name')!r}").get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 \
                or size > len(binary):
            raise RequestError(
                f"input {tensor.get('name')!r} has binary_data_size {size!r}, but the "
                f"body holds {len(binary)} bytes after its JSON header")
        raw, offset = binary[:size], size
    if offset != len(binary):
        raise RequestError(f"the body holds {len(binary) - offset} bytes of binary data "
                           "that no input claims (binary_data_size)")
    items = _items(tensor, raw, service)
    binary_output = _binary_output(request, service)
    request_id = request.get("id")
    return Infer(items, request_id if isinstance(request_id, str) else None,
                 binary_output)


def _shape(tensor):
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RequestError(f"input {tensor.get('name')!r} needs a shape, a list of "
                           f"non-negative integers. Received: shape={shape!r}")
    return shape


def _items(tensor, raw, service):
    name, datatype = tensor.get("name"), tensor.get("datatype")
    height, width = service.input_size
    if name == IMAGE:
        if datatype != "BYTES":
            raise RequestError(f"input {IMAGE!r} must be BYTES. Received: "
                               f"datatype={datatype!r}")
        shape = _shape(tensor)
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or not shape[0]:
            raise RequestError(f"input {IMAGE!r} must have shape [N] (N images). "
                               f"Received: shape={shape}")
        count = shape[0]
        files = _bytes_elements(raw, count) if raw is not None else \
            _base64_elements(tensor.get("data"), count)
        return [(f"{IMAGE}[{i}]", data) for i, data in enumerate(files)]
    if name == PIXELS:
        if not isinstance(datatype, str) or datatype not in _PIXEL_TYPES:
            raise RequestError(f"input {PIXELS!r} must be FP32 or UINT8. Received: "
                               f"datatype={datatype!r}")
        shape = _shape(tensor)
        if len(shape) != 4 or shape[1:] != [height, width, 3] or not shape[0]:
            raise RequestError(f"input {PIXELS!r} must have shape [N, {height}, {width}, "
                               f"3] (RGB at the model's input size). Received: "
                               f"shape={shape}")
        dtype = _PIXEL_TYPES[datatype]
        count = int(np.prod(shape))
        if raw is not None:
            if len(raw) != count * dtype.itemsize:
                raise RequestError(
                    f"input {PIXELS!r} of shape {shape} and {datatype} needs "
                    f"{count * dtype.itemsize} bytes; binary_data_size is {len(raw)}")
            array = np.frombuffer(raw, dtype).reshape(shape)
        else:
            array = _json_numbers(tensor.get("data"), count, datatype)
            array = array.reshape(shape)
        return [(f"{PIXELS}[{i}]", array[i]) for i in range(shape[0])]
    raise RequestError(f"unknown input {name!r}: this model takes {IMAGE!r} (BYTES [N], "
                       f"encoded images) or {PIXELS!r} (FP32 or UINT8 [N, {height}, "
                       f"{width}, 3])")


def _bytes_elements(raw, count) -> list[bytes]:
    """Triton's serialized BYTES tensor: per element, a uint32 LE length and the bytes."""
    out, pos = [], 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise RequestError(f"input {IMAGE!r}: binary data ends before element {i} "
                               f"of {count}")
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise RequestError(f"input {IMAGE!r}: element {i} says {length} bytes, but "
                               f"only {len(raw) - pos} remain")
        out.append(bytes(raw[pos:pos + length]))
        pos += length
    if pos != len(raw):
        raise RequestError(f"input {IMAGE!r}: {len(raw) - pos} bytes of binary data "
                           f"after its {count} elements")
    return out


def _base64_elements(data, count) -> list[bytes]:
    if isinstance(data, list) and data and all(isinstance(d, list) for d in data):
        data = [e for row in data for e in row]  # Shape [N, 1].
    if not isinstance(data, list) or len(data) != count:
        raise RequestError(
            f"input {IMAGE!r} needs \"data\": {count} base64 strings (one per image), "
            "or binary data. Received: "
            + (f"{len(data)} elements" if isinstance(data, list) else
               f"{type(data).__name__}"))
    out = []
    for i, text in enumerate(data):
        if not isinstance(text, str):
            raise RequestError(f"{IMAGE}[{i}] must be a base64 string. Received: "
                               f"{type(text).__name__}")
        try:
            out.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError) as err:
            raise RequestError(f"{IMAGE}[{i}] is not valid base64: {err}") from None
    return out


def _json_numbers(data, count, datatype) -> np.ndarray:
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        array = None
    if array is None or array.dtype.kind not in "iuf":
        raise RequestError(f"input {PIXELS!r} needs \"data\": {count} numbers (flat or "
                           "nested), or binary data")
    if array.size != count:
        raise RequestError(f"input {PIXELS!r} holds {array.size} numbers; its shape "
                           f"says {count}")
    if datatype == "UINT8" and (array.dtype.kind == "f" or array.min() < 0
                                or array.max() > 255):
        raise RequestError(f"input {PIXELS!r} is UINT8: whole numbers from 0 to 255")
    return array.astype(np.float32)


def _parameters(obj, where) -> dict:
    """`obj`'s `parameters` (an object, or absent); else a 400 naming `where`."""
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RequestError(f'the "parameters" of {where} must be an object. '
                           f"Received: {type(params).__name__}")
    return params


def _binary_output(request, service) -> bool:
    default = _parameters(request, "the request").get("binary_data_output", False) is True
    outputs = request.get("outputs")
    if outputs is None:
        return default
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise RequestError('"outputs" must be a list of {"name": ...}')
    binary = default
    for output in outputs:
        if output.get("name") != service.output_name:
            raise RequestError(f"unknown output {output.get('name')!r}: this model gives "
                               f"{service.output_name!r}")
        flag = _parameters(output, f"output {output.get('name')!r}").get("binary_data")
        if flag is not None:
            binary = flag is True
    return binary


def infer_response(service, model_name, infer: Infer, outputs) -> tuple[bytes, dict]:
    """The answer to `infer`: `(body, headers)`."""
    outputs = np.ascontiguousarray(outputs, dtype="<f4")
    tensor = {"name": service.output_name, "datatype": "FP32",
              "shape": list(outputs.shape)}
    raw = b""
    if infer.binary_output:
        raw = outputs.tobytes()
        tensor["parameters"] = {"binary_data_size": len(raw)}
    else:
        tensor["data"] = outputs.ravel().tolist()
    answer = {"model_name": model_name, "model_version": VERSION, "outputs": [tensor]}
    if infer.id is not None:
        answer["id"] = infer.id
    header = json.dumps(answer).encode()
    if infer.binary_output:
        return header + raw, {HEADER_LENGTH: str(len(header)),
                              "Content-Type": "application/octet-stream"}
    return header, {"Content-Type": "application/json"}


def server_metadata() -> dict:
    """`GET /v2`."""
    from keras_xception import __version__

    return {"name": "keras-xception", "version": __version__,
            "extensions": list(EXTENSIONS)}


def model_metadata(service, model_name) -> dict:
    """`GET /v2/models/NAME`."""
    height, width = service.input_size
    return {
        "name": model_name, "versions": [VERSION], "platform": "keras",
        "inputs": [
            {"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
            {"name": PIXELS, "datatype": "FP32", "shape": [-1, height, width, 3]},
        ],
        "outputs": [{"name": service.output_name, "datatype": "FP32",
                     "shape": [-1, service.output_size]}],
    }
