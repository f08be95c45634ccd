"""Grad-CAM: which parts of an image a class score depends on.

    from keras_xception import Xception, grad_cam, overlay, preprocess_input
    from keras_xception.images import decode

    model = Xception()
    photo = decode("cat.jpg", target_size=None)       # the photo, any size
    x = preprocess_input(decode("cat.jpg")[None])     # (1, 299, 299, 3)
    heatmap = grad_cam(model, x)[0]                    # (10, 10), in [0, 1]
    picture = overlay(photo, heatmap)                  # uint8, the photo's size

`grad_cam` follows Selvaraju et al., "Grad-CAM: Visual Explanations from
Deep Networks via Gradient-based Localization" (ICCV 2017), and the keras.io
example "Grad-CAM class activation visualization": the gradient of the class
score before the softmax (the logit) with respect to the activation `A` of the
last convolutional block (`block14_sepconv2_act`, shape `(h, w, 2048)`) gives
one weight per channel, its spatial mean `alpha_k`; the map is
`ReLU(sum_k alpha_k * A_k)`, divided by its maximum.

It works on the model as it is, without rebuilding or changing it: the
model's own layers are run once forward, with the activation of the explained
layer recorded, and once backward, from the chosen logits to that
activation. The layer is found in a flat `Xception()` model and in a model
that calls an Xception base as a sub-model (`Xception(include_top=False)`
followed by pooling and `Dense` layers, as `build_classifier` makes), at any
depth of nesting. The logit is the pre-activation of a final `Dense` layer
(its softmax, or any other activation, left out), the input of a final
`Activation` or `Softmax` layer, or else the model's output itself.

The functional graph is run with Keras's `Function._run_through_graph` (the
method `Functional.call` itself uses), which is not public API; Keras is
pinned to 3.15 for it.
"""

from __future__ import annotations

import collections

import numpy as np

from keras_xception import architecture
from keras_xception.errors import ConfigError, counted

DEFAULT_LAYER = "block14_sepconv2_act"

# A layer every Xception base has: the first convolution.
_BASE_MARKER = "block1_conv1"

# viridis (Nathaniel J. Smith and Stefan van der Walt, CC0), the perceptually
# uniform colormap of matplotlib: 256 RGB colours, dark blue to yellow, as
# 8-bit hex triples (matplotlib's `_viridis_data` times 255, rounded).
_VIRIDIS_HEX = (
    "44015444025645045745055946075a46085c460a5d460b5e470d60470e61471063471164"
    "47136548146748166848176948186a481a6c481b6d481c6e481d6f481f70482071482173"
    "482374482475482576482677482878482979472a7a472c7a472d7b472e7c472f7d46307e"
    "46327e46337f463480453581453781453882443983443a83443b84433d84433e85423f85"
    "4240864241864142874144874045884046883f47883f48893e49893e4a893e4c8a3d4d8a"
    "3d4e8a3c4f8a3c508b3b518b3b528b3a538b3a548c39558c39568c38588c38598c375a8c"
    "375b8d365c8d365d8d355e8d355f8d34608d34618d33628d33638d32648e32658e31668e"
    "31678e31688e30698e306a8e2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e"
    "2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e297a8e297b8e287c8e287d8e"
    "277e8e277f8e27808e26818e26828e26828e25838e25848e25858e24868e24878e23888e"
    "23898e238a8d228b8d228c8d228d8d218e8d218f8d21908d21918c20928c20928c20938c"
    "1f948c1f958b1f968b1f978b1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f88"
    "1fa0881fa1881fa1871fa28720a38620a48621a58521a68522a78522a88423a98324aa83"
    "25ab8225ac8226ad8127ad8128ae8029af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b"
    "32b67a34b67935b77937b87838b9773aba763bbb753dbc743fbc7340bd7242be7144bf70"
    "46c06f48c16e4ac16d4cc26c4ec36b50c46a52c56954c56856c66758c7655ac8645cc863"
    "5ec96260ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece5870cf5773d05675d05477d153"
    "7ad1517cd2507fd34e81d34d84d44b86d54989d5488bd6468ed64590d74393d74195d840"
    "98d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32addc30b0dd2fb2dd2db5de2b"
    "b8de29bade28bddf26c0df25c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21a"
    "d8e219dae319dde318dfe318e2e418e5e419e7e419eae51aece51befe51cf1e51df4e61e"
    "f6e620f8e621fbe723fde725"
)

Explanation = collections.namedtuple("Explanation", "heatmaps class_indices logits")
Explanation.__doc__ = """What `explain_batch` found for a batch of images.

Attributes:
    heatmaps: float32 `(N, h, w)`, each scaled to [0, 1] (see `grad_cam`).
    class_indices: int64 `(N,)`, the class explained for each image.
    logits: float32 `(N, classes)`, the class scores before the final
        activation (see `logits_to_outputs`).
"""


def viridis() -> np.ndarray:
    """The viridis colormap: a uint8 array of shape (256, 3), RGB."""
    return np.frombuffer(bytes.fromhex("".join(_VIRIDIS_HEX)), np.uint8).reshape(256, 3)


# --- finding the layer ------------------------------------------------------


def _graph(model):
    """The functional graph of `model` (a built `Sequential`'s own), or None."""
    import keras

    if isinstance(model, keras.Sequential):
        model = getattr(model, "_functional", None)
    if isinstance(model, keras.Model) and hasattr(model, "_run_through_graph") \
            and hasattr(model, "_nodes_by_depth"):
        return model
    return None


def _sub_models(model):
    graph = _graph(model)
    if graph is None:
        return []
    return [layer for layer in graph.layers if _graph(layer) is not None]


def _find_base(model):
    """The path `[model, sub-model, ..., base]` to the Xception base, or None.

    The base is the first model (breadth first: `model` itself, then its
    sub-models in layer order) that has a layer named `block1_conv1` and one
    named `block14_sepconv2_act`.
    """
    queue = collections.deque([[model]])
    while queue:
        path = queue.popleft()
        graph = _graph(path[-1])
        if graph is None:
            continue
        names = {layer.name for layer in graph.layers}
        if _BASE_MARKER in names and DEFAULT_LAYER in names:
            return path
        queue.extend(path + [sub] for sub in _sub_models(path[-1]))
    return None


def find_layer(model, layer_name=None):
    """Finds the layer Grad-CAM explains, inside `model`'s Xception base.

    Args:
        model: A flat `Xception` model, or a model with an Xception base as a
            sub-model.
        layer_name: A layer of the base with a 4D output, or `None` for
            `block14_sepconv2_act`.

    Returns:
        `(path, layer)`: `path` lists the models from `model` down to the
        base, `layer` is the base's layer.

    Raises:
        ConfigError: If `model` has no Xception base, `layer_name` names no
            layer of it, or the layer's output is not a 4D feature map.
    """
    import keras

    if not isinstance(model, keras.Model):
        raise ConfigError(
            "grad_cam needs a Keras model with an Xception base. "
            f"Received: model={type(model).__name__}"
        )
    path = _find_base(model)
    if path is None:
        raise ConfigError(
            f"The model {model.name!r} has no Xception base: no layer or "
            f"sub-model has the layers {_BASE_MARKER!r} and {DEFAULT_LAYER!r}. "
            "Pass an `Xception` model, or a model that calls one as a sub-model."
        )
    base = _graph(path[-1])
    name = DEFAULT_LAYER if layer_name is None else layer_name
    layers = {layer.name: layer for layer in base.layers}
    if not isinstance(name, str) or name not in layers:
        raise ConfigError(
            f"The Xception base {path[-1].name!r} has no layer named {name!r}; "
            f"pass the name of one of its layers, e.g. {DEFAULT_LAYER!r} or "
            f"'block13_sepconv2_act'. Received: layer_name={layer_name!r}"
        )
    layer = layers[name]
    if isinstance(layer, keras.layers.InputLayer) or len(layer.output.shape) != 4:
        raise ConfigError(
            f"Grad-CAM explains a layer whose output is a feature map "
            f"(batch, height, width, channels); {name!r} is not one. "
            f"Received: layer_name={layer_name!r}"
        )
    if getattr(base.get_layer(_BASE_MARKER), "data_format", None) == "channels_first":
        raise ConfigError(
            "grad_cam supports channels_last models only (images of shape "
            "(N, height, width, 3)); this Xception base is channels_first."
        )
    return path, layer


def _final_op(model):
    """The operation that computes the single output of `model`'s graph."""
    graph = _graph(model)
    if graph is None:
        return None
    if len(graph.outputs) != 1:
        raise ConfigError(
            "grad_cam explains a model with one output (the class scores). "
            f"Received: a model with {len(graph.outputs)} outputs"
        )
    op = graph.outputs[0]._keras_history.operation
    inner = _final_op(op) if _graph(op) is not None else None
    return inner or op


# --- the forward and backward passes -------------------------------------------


def _score_fn(op):
    """How to get the logits from the model's final operation `op`.

    Returns:
        `(function, activation)`: a replacement for `op` that returns the
        logits, and the activation it leaves out (which turns logits into
        the model's own scores); `(None, None)` if `op`'s output is used as
        it is.
    """
    import keras
    from keras import ops

    if isinstance(op, keras.layers.Dense):
        activation = op.activation
        if activation in (None, keras.activations.linear):
            return None, None
        if getattr(op, "quantization_mode", None):
            raise ConfigError(
                f"grad_cam cannot take the logits of the quantized layer "
                f"{op.name!r}. Explain the model before quantizing it."
            )

        def logits(x, **kwargs):
            x = ops.cast(x, op.compute_dtype)
            y = ops.matmul(x, op.kernel)
            if op.bias is not None:
                y = ops.add(y, op.bias)
            return y

        return logits, activation
    if isinstance(op, keras.layers.Softmax) or (
        isinstance(op, keras.layers.Activation)
        and op.activation is not keras.activations.linear
    ):
        activation = op if isinstance(op, keras.layers.Softmax) else op.activation
        return (lambda x, *args, **kwargs: x), activation
    return None, None


def _inference_call(op):
    """`op` as `Functional.call(..., training=False)` calls it."""
    from keras.src.models.functional import operation_fn

    return operation_fn(op, training=False)


def _run(model, x, replacements):
    """Runs `model`'s graph in inference mode, with some operations replaced.

    Returns the single output (a backend tensor).
    """
    from keras import tree

    def operation_fn(op):
        return replacements.get(id(op)) or _inference_call(op)

    return tree.flatten(_graph(model)._run_through_graph(x, operation_fn))[0]


def _forward(path, layer, final, x, on_activation):
    """The logits of `path[0]` on `x`.

    Args:
        path: The models from the outermost down to the Xception base.
        layer: The explained layer of the base.
        final: `(function, operation)`: a replacement for the operation that
            makes the model's output, returning logits; `(None, op)` to keep it.
        x: The images, a backend tensor.
        on_activation: Called with the explained layer's output; what it
            returns is used in its place.
    """
    replacements = {}
    for sub in path[1:]:
        replacements[id(sub)] = (
            lambda sub: lambda *args, **kwargs: _run(sub, args[0], replacements)
        )(sub)
    standard = _inference_call(layer)
    replacements[id(layer)] = lambda *args, **kwargs: on_activation(
        standard(*args, **kwargs)
    )
    if final[0] is not None:
        replacements[id(final[1])] = final[0]
    return _run(path[0], x, replacements)


def _check_images(model, images):
    x = np.asarray(images)
    if x.dtype == object or not np.issubdtype(x.dtype, np.number):
        raise ConfigError(
            "`images` must be a numeric array of shape (N, height, width, 3). "
            f"Received: images of dtype {x.dtype}"
        )
    expected = tuple(model.inputs[0].shape) if len(model.inputs) == 1 else None
    if expected is None:
        raise ConfigError(
            "grad_cam explains a model with one image input. Received: a model "
            f"with {len(model.inputs)} inputs"
        )
    wanted = "(N, " + ", ".join("any" if d is None else str(d) for d in expected[1:]) + ")"
    bad = x.ndim != len(expected) or x.shape[0] < 1 or any(
        d is not None and d != got for d, got in zip(expected[1:], x.shape[1:])
    )
    if not bad and x.ndim == 4:
        bad = min(x.shape[1:3]) < architecture.MIN_SIZE
    if bad:
        raise ConfigError(
            f"`images` must be a batch of shape {wanted} for the model "
            f"{model.name!r} (preprocessed images, at least "
            f"{architecture.MIN_SIZE}x{architecture.MIN_SIZE}). "
            f"Received: images.shape={x.shape}"
        )
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ConfigError("`images` must be finite. Received: images with NaN or infinity")
    return x


def _check_classes(class_index, n, classes):
    if class_index is None:
        return None
    if isinstance(class_index, (int, np.integer)) and not isinstance(class_index, bool):
        values = [class_index] * n
    else:
        try:
            values = list(class_index)
        except TypeError:
            values = None
        if values is None or len(values) != n or any(
            isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values
        ):
            raise ConfigError(
                f"`class_index` must be None, an integer or a sequence of {n} "
                f"integers (one per image). Received: class_index={class_index!r}"
            )
    for v in values:
        if not 0 <= v < classes:
            raise ConfigError(
                f"`class_index` must be from 0 to {classes - 1} (the model has "
                f"{counted(classes, 'class', 'classes')}). Received: class_index={class_index!r}"
            )
    return np.asarray(values, dtype=np.int64)


def _gradients(path, layer, final, x, class_index):
    """`(activation, gradient, logits, classes)` as NumPy arrays (TensorFlow or JAX)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        seen = []
        with tf.GradientTape(watch_accessed_variables=False) as tape:

            def record(activation):
                tape.watch(activation)
                seen.append(activation)
                return activation

            logits = tf.cast(_forward(path, layer, final, tf.constant(x), record), tf.float32)
            classes = class_index
            if classes is None:
                classes = np.argmax(logits.numpy(), axis=-1)
            target = tf.reduce_sum(logits * tf.one_hot(classes, logits.shape[-1]))
        gradient = tape.gradient(target, seen[0])
        return (np.asarray(seen[0], np.float32), np.asarray(gradient, np.float32),
                logits.numpy(), classes)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        x = jnp.asarray(x)

        def logits_of(delta):
            seen = []

            def record(activation):
                activation = activation + delta.astype(activation.dtype)
                seen.append(activation)
                return activation

            out = _forward(path, layer, final, x, record)
            return out.astype(jnp.float32), seen[0]

        shape = tuple(layer.output.shape)
        if None in shape[1:]:
            shape = jax.eval_shape(lambda d: logits_of(d)[1], jnp.zeros(())).shape
        delta = jnp.zeros((x.shape[0],) + tuple(shape[1:]), jnp.float32)
        logits, backward, activation = jax.vjp(logits_of, delta, has_aux=True)
        classes = class_index
        if classes is None:
            classes = np.argmax(np.asarray(logits), axis=-1)
        (gradient,) = backward(jax.nn.one_hot(classes, logits.shape[-1], dtype=logits.dtype))
        return (np.asarray(activation, np.float32), np.asarray(gradient, np.float32),
                np.asarray(logits), classes)
    raise ConfigError(
        "grad_cam runs on the TensorFlow and JAX backends. "
        f"Received: KERAS_BACKEND={backend!r}"
    )


def heatmaps_from(activation, gradient) -> np.ndarray:
    """Grad-CAM maps from a layer's activation and the class score's gradient.

    Args:
        activation: float `(N, h, w, C)`, the layer's output.
        gradient: float `(N, h, w, C)`, the gradient of each image's class
            score with respect to it.

    Returns:
        float32 `(N, h, w)`: `ReLU(sum_c mean_hw(gradient)_c * activation_c)`,
        each map divided by its maximum (all zeros where the map is all zero).
    """
    weights = np.mean(gradient, axis=(1, 2), dtype=np.float32)
    maps = np.einsum("nhwc,nc->nhw", activation, weights).astype(np.float32)
    maps = np.maximum(maps, 0.0)
    peak = maps.max(axis=(1, 2), keepdims=True)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


def explain_batch(model, images, class_index=None, layer_name=None) -> Explanation:
    """`grad_cam`, also returning the classes explained and the logits.

    Args and Raises: as for `grad_cam`.

    Returns:
        An `Explanation`: `(heatmaps, class_indices, logits)`.
    """
    path, layer = find_layer(model, layer_name)
    final_op = _final_op(model)
    score_fn, _ = _score_fn(final_op)
    x = _check_images(model, images)
    classes = model.outputs[0].shape[-1]
    chosen = _check_classes(class_index, x.shape[0], classes)
    activation, gradient, logits, chosen = _gradients(
        path, layer, (score_fn, final_op), x, chosen
    )
    return Explanation(heatmaps_from(activation, gradient),
                       np.asarray(chosen, np.int64), np.asarray(logits, np.float32))


def logits_to_outputs(model, logits) -> np.ndarray:
    """The model's own outputs for `logits`: its final activation applied.

    `keras_xception.source.probabilities` then makes them probabilities by
    the score rule every command shares.

    Args:
        model: The model the logits come from.
        logits: float `(N, classes)` from `explain_batch`.

    Returns:
        float32 `(N, classes)`.
    """
    from keras import ops

    _, activation = _score_fn(_final_op(model))
    if activation is None:
        return np.asarray(logits, np.float32)
    return np.asarray(ops.convert_to_numpy(activation(ops.convert_to_tensor(logits))),
                      np.float32)


def grad_cam(model, images, class_index=None, layer_name=None) -> np.ndarray:
    """Grad-CAM heatmaps: where in each image the class score comes from.

    One forward and one backward pass over the batch (see the module
    docstring for the algorithm). The model is used as it is: nothing in it
    is rebuilt or changed.

    Args:
        model: A Keras model with an Xception base: a flat `Xception()`
            model, or a model that calls an Xception base as a sub-model
            (e.g. `Xception(include_top=False)` followed by pooling and
            `Dense` layers, as `build_classifier` makes). It must have one
            input and one output (the class scores).
        images: A batch the model takes, shape `(N, height, width, 3)`: for
            `Xception`, images passed through `preprocess_input`; for a model
            with its own preprocessing (`build_classifier`'s), pixels in
            [0, 255]. Any size the model accepts.
        class_index: The class to explain: `None` for each image's top class
            (its highest logit), an int for the same class in every image,
            or a sequence of N ints, one per image.
        layer_name: The base's layer to explain, `None` for
            `block14_sepconv2_act`, the last convolutional block's
            activation. Its output must be a feature map.

    Returns:
        float32 NumPy array of shape `(N, h, w)`, the explained layer's
        resolution (10x10 for 299x299 images at the default layer), each map
        scaled to [0, 1] by its own maximum (all zeros where the map is all
        zero).

    Raises:
        ConfigError: (a `ValueError`) if the model has no Xception base,
            `layer_name` names no feature-map layer of it, `images` does not
            have a shape the model takes (or holds NaN or infinity), or
            `class_index` is out of range or not one int per image.
    """
    return explain_batch(model, images, class_index, layer_name).heatmaps


def _check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) \
            or not 0 <= alpha <= 1:
        raise ConfigError(f"`alpha` must be a number from 0 to 1. Received: alpha={alpha!r}")
    return float(alpha)


# Rows of the photo blended at a time by `overlay`: its float temporaries are
# a few bytes per pixel of one strip, never of the whole photo.
_STRIP_PIXELS = 1 << 18


def _bilinear_taps(in_size: int, out_size: int):
    """Pillow's bilinear weights for resizing `in_size` samples to `out_size`.

    The coefficients of `precompute_coeffs` in Pillow's `Resample.c`, in
    double precision: output `i` is `sum_t weights[i, t] * input[first[i] + t]`.

    Returns:
        `(first, weights)`: int `(out_size,)` and float64 `(out_size, taps)`
        (unused taps have weight 0 and point at a valid input).
    """
    scale = float(np.float32(in_size)) / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # The bilinear filter's support is 1.
    taps = int(np.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)
    last = np.minimum((center + support + 0.5).astype(np.int64), in_size)
    t = np.arange(taps)
    weights = np.maximum(
        1.0 - np.abs((t + first[:, None] - center[:, None] + 0.5) / filterscale), 0.0)
    weights[t >= (last - first)[:, None]] = 0.0
    total = weights.sum(axis=1, keepdims=True)  # Summed in order, as Pillow does.
    weights = np.divide(weights, total, out=weights, where=total != 0)
    return first, weights


def _heat_rows(heat, width: int, height: int):
    """Resizes `heat` to `(height, width)` as Pillow's bilinear `resize` does, in strips.

    Pillow resizes in two passes: each row to the new width, then each
    column to the new height. The first pass is small (the heatmap's rows at
    the photo's width) and is Pillow's own; the second is done here, with
    Pillow's weights and its double-precision sums, one strip of output rows
    at a time, so no full-size float map is ever made.

    Returns:
        A function `rows(top, bottom)` giving float32 `(bottom - top, width)`.
    """
    from PIL import Image

    wide = np.asarray(Image.fromarray(heat, mode="F").resize(
        (width, heat.shape[0]), Image.Resampling.BILINEAR), dtype=np.float64)
    first, weights = _bilinear_taps(heat.shape[0], height)
    last_row = heat.shape[0] - 1

    def rows(top, bottom):
        total = np.zeros((bottom - top, width), np.float64)
        for t in range(weights.shape[1]):
            source = np.minimum(first[top:bottom] + t, last_row)
            total += wide[source] * weights[top:bottom, t, None]
        return total.astype(np.float32)

    return rows


def overlay(image, heatmap, alpha=0.4, *, out=None) -> np.ndarray:
    """Paints a heatmap over a photo, at the photo's size.

    The heatmap is resized to the photo bilinearly (Pillow's bilinear
    `resize`), coloured with the perceptually uniform viridis colormap (dark
    blue for 0, yellow for 1) and blended: `(1 - alpha) * image + alpha *
    colour`, rounded. The work is done a strip of rows at a time, so besides
    the result it needs a few MB however large the photo: a 13000 x 13000
    photo costs its 507 MB of uint8 output and nothing of its size in floats.

    Args:
        image: The photo, `(H, W, 3)` RGB: uint8, or floats in [0, 255] (as
            `keras_xception.images.decode(path, target_size=None)` returns).
            It is not changed unless it is `out`.
        heatmap: `(h, w)`, values in [0, 1] (e.g. one map from `grad_cam`);
            values outside are clipped.
        alpha: The colour's weight, from 0 (the photo only) to 1 (the
            heatmap only).
        out: A writable uint8 `(H, W, 3)` array to write the result into, or
            `None` for a new one. It may be `image` itself (a uint8 photo
            decoded with `decode(path, target_size=None, dtype="uint8")` that
            nothing else needs), which then needs no memory of the photo's
            size at all.

    Returns:
        uint8 array of shape `(H, W, 3)`: `out` if given.

    Raises:
        ConfigError: If `image` is not `(H, W, 3)`, `heatmap` is not a
            finite 2D array, `alpha` is not in [0, 1], or `out` is not a
            writable uint8 array of the image's shape.
    """
    alpha = _check_alpha(alpha)
    picture = np.asarray(image)
    if picture.ndim != 3 or picture.shape[-1] != 3 or 0 in picture.shape:
        raise ConfigError(
            "`image` must be an RGB image of shape (height, width, 3). "
            f"Received: image.shape={picture.shape}"
        )
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2 or 0 in heat.shape or not np.isfinite(heat).all():
        raise ConfigError(
            "`heatmap` must be a finite 2D map of shape (h, w). "
            f"Received: heatmap of shape {heat.shape}"
        )
    if out is None:
        out = np.empty(picture.shape, np.uint8)
    elif not isinstance(out, np.ndarray) or out.dtype != np.uint8 \
            or out.shape != picture.shape or not out.flags.writeable:
        raise ConfigError(
            f"`out` must be a writable uint8 array of the image's shape "
            f"{picture.shape}. Received: out="
            + (f"array of dtype {out.dtype}, shape {out.shape}"
               + ("" if out.flags.writeable else ", read-only")
               if isinstance(out, np.ndarray) else type(out).__name__)
        )
    height, width = picture.shape[:2]
    heat_rows = _heat_rows(np.clip(heat, 0.0, 1.0), width, height)
    # The same float32 arithmetic as blending whole arrays: alpha * colour is
    # looked up per level, (1 - alpha) * image computed per strip.
    tint = np.float32(alpha) * viridis().astype(np.float32)
    keep = np.float32(1.0 - alpha)
    step = max(1, _STRIP_PIXELS // width)
    for top in range(0, height, step):
        bottom = min(top + step, height)
        levels = np.rint(np.clip(heat_rows(top, bottom), 0.0, 1.0) * np.float32(255))
        blend = picture[top:bottom].astype(np.float32)
        blend *= keep
        blend += tint[levels.astype(np.intp)]
        np.rint(blend, out=blend)
        np.clip(blend, 0, 255, out=blend)
        out[top:bottom] = blend
    return out
