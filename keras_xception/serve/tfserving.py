"""TensorFlow Serving's REST API: the request and response bodies.

    POST /v1/models/NAME:predict   {"instances": [...]}  ->  {"predictions": [...]}
                                   {"inputs": [...]}     ->  {"outputs": [...]}
    GET  /v1/models/NAME           the version status (AVAILABLE)
    GET  /v1/models/NAME/metadata  the signature: input `images`, output
                                   `probabilities` or `embedding`

As TensorFlow Serving writes them (https://www.tensorflow.org/tfx/serving/api_rest):
the row format (`instances`, a list with one entry per image) answers
`predictions`; the columnar format (`inputs`: the list of images, or
`{"images": [...]}` naming the one input) answers `outputs`. Each image is
`{"b64": "<base64 of an encoded image file>"}` (JPEG, PNG, WebP, BMP, GIF,
TIFF, as Pillow reads them) or a nested list of the model's input size,
RGB values from 0 to 255; the server applies the model's own preprocessing.
Each answer row is the image's class probabilities (or its embedding).
Errors are `{"error": "<one line>"}`, naming the instance at fault.

Only the bodies live here (no HTTP): `app` routes to them.
"""

from __future__ import annotations

import base64
import binascii
import json

from keras_xception.serve.service import RequestError

INPUT = "images"
SIGNATURE = "serving_default"
VERSION = "1"


def parse_predict(body: bytes) -> tuple[list, bool]:
    """The images of a `:predict` body, and whether it is columnar.

    Returns:
        `(items, columnar)`: `items` is a list of `(label, payload)` for
        `Service.pixels` (payload: the decoded base64 `bytes`, or the
        nested list of pixels as sent).

    Raises:
        RequestError: 400, naming what is wrong (and the instance).
    """
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(f"the body is not JSON: {err}") from None
    except RecursionError:
        raise RequestError("the body's JSON is nested too deeply") from None
    if not isinstance(request, dict):
        raise RequestError('the body must be a JSON object: {"instances": [...]} or '
                           '{"inputs": [...]}')
    signature = request.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise RequestError(f"this model has one signature, {SIGNATURE!r}. "
                           f"Received: signature_name={signature!r}")
    unknown = sorted(set(request) - {"instances", "inputs", "signature_name"})
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}; a predict request holds "
                           '"instances" (row format) or "inputs" (columnar)')
    if ("instances" in request) == ("inputs" in request):
        raise RequestError('a predict request holds exactly one of "instances" (row '
                           'format) and "inputs" (columnar)')
    columnar = "inputs" in request
    images = request["inputs"] if columnar else request["instances"]
    if columnar and isinstance(images, dict) and "b64" not in images:
        names = sorted(images)
        if names != [INPUT]:
            raise RequestError(f"this model has one input, {INPUT!r}. Received "
                               f"inputs named {', '.join(map(repr, names)) or 'none'}")
        images = images[INPUT]
    if columnar and isinstance(images, dict):  # One {"b64": ...} image.
        images = [images]
    if not isinstance(images, list):
        field = "inputs" if columnar else "instances"
        raise RequestError(f'"{field}" must be a list of images, each {{"b64": ...}} '
                           "or a nested list of RGB pixels")
    if not images:
        raise RequestError("the request holds no images")
    return [(f"instance {i}", _payload(image, i)) for i, image in enumerate(images)], \
        columnar


def _payload(image, i):
    if isinstance(image, dict):
        if set(image) != {"b64"} or not isinstance(image["b64"], str):
            raise RequestError(f'instance {i} must be {{"b64": "<base64 of an image '
                               f'file>"}} or a nested list of RGB pixels. Received an '
                               f"object with {', '.join(map(repr, sorted(image)))}")
        try:
            return base64.b64decode(image["b64"], validate=True)
        except (binascii.Error, ValueError) as err:
            raise RequestError(f"instance {i} is not valid base64: {err}") from None
    if isinstance(image, list):
        return image
    raise RequestError(f'instance {i} must be {{"b64": ...}} or a nested list of RGB '
                       f"pixels. Received: {type(image).__name__}")


def predict_response(outputs, columnar: bool) -> dict:
    """The body answering `:predict`: one row per image."""
    return {"outputs" if columnar else "predictions": outputs.tolist()}


def model_status() -> dict:
    """`GET /v1/models/NAME`: the one version, AVAILABLE."""
    return {"model_version_status": [{
        "version": VERSION, "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }]}


def _tensor(name, dtype, dims) -> dict:
    return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""}
                                                     for d in dims]},
            "name": name}


def model_metadata(service, name: str) -> dict:
    """`GET /v1/models/NAME/metadata`: the `serving_default` signature."""
    height, width = service.input_size
    return {
        "model_spec": {"name": name, "signature_name": "", "version": VERSION},
        "metadata": {"signature_def": {"signature_def": {SIGNATURE: {
            "inputs": {INPUT: _tensor(INPUT, "DT_FLOAT", (-1, height, width, 3))},
            "outputs": {service.output_name: _tensor(
                service.output_name, "DT_FLOAT", (-1, service.output_size))},
            "method_name": "tensorflow/serving/predict",
        }}}},
    }
