"""Multiply-add counts of a Keras model, layer by layer.

Only the layers that multiply weights by activations are counted: `Conv2D`,
`SeparableConv2D` (depthwise and pointwise parts), `DepthwiseConv2D` and
`Dense`, one multiply-add (MAC) per weight use. Bias additions,
BatchNormalization, activations, pooling and residual additions are a
fraction of a percent of the total and are left out, as `fvcore` and timm's
published figures leave them out. One MAC is two FLOPs.

Xception at 299x299 with its classifier counts 8,357,403,496 MACs (8.36
GMAC, 16.71 GFLOP; timm lists 8.4 GMAC): 7.71 G in the separable
convolutions, 0.65 G in the plain ones and 2.05 M in the classifier.
"""

from __future__ import annotations

import copy
import dataclasses
import math

from keras_xception.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LayerFlops:
    """The multiply-adds of one layer for one input image.

    Attributes:
        name: The layer's name.
        kind: The layer's class name.
        macs: Multiply-adds per image.
        output_shape: The layer's output shape, batch dimension excluded.
    """

    name: str
    kind: str
    macs: int
    output_shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """Multiply-adds of a model for one input image.

    Attributes:
        layers: One `LayerFlops` per counted layer, in model order.
    """

    layers: tuple[LayerFlops, ...]

    @property
    def macs(self) -> int:
        """Total multiply-adds per image."""
        return sum(layer.macs for layer in self.layers)

    @property
    def flops(self) -> int:
        """Total floating-point operations per image (two per MAC)."""
        return 2 * self.macs

    def by_kind(self) -> dict[str, int]:
        """Multiply-adds per layer class, e.g. `{"SeparableConv2D": ...}`."""
        totals: dict[str, int] = {}
        for layer in self.layers:
            totals[layer.kind] = totals.get(layer.kind, 0) + layer.macs
        return totals

    def table(self) -> str:
        """A readable per-layer table, one line per counted layer."""
        width = max((len(layer.name) for layer in self.layers), default=4)
        lines = [f"{'layer':<{width}}  {'kind':<16} {'output':<18} {'MMAC':>10}"]
        for layer in self.layers:
            shape = "x".join(str(d) for d in layer.output_shape)
            lines.append(
                f"{layer.name:<{width}}  {layer.kind:<16} {shape:<18} "
                f"{layer.macs / 1e6:>10.2f}"
            )
        lines.append(f"{'total':<{width}}  {'':<16} {'':<18} {self.macs / 1e6:>10.2f}")
        return "\n".join(lines)


def _layer_macs(layer) -> int:
    kind = type(layer).__name__
    if kind not in ("Conv2D", "SeparableConv2D", "DepthwiseConv2D", "Dense"):
        return 0
    out_shape = tuple(layer.output.shape[1:])
    in_shape = tuple(layer.input.shape[1:])
    if kind in ("Conv2D", "SeparableConv2D", "DepthwiseConv2D"):
        channels_first = layer.data_format == "channels_first"
        in_channels = in_shape[0] if channels_first else in_shape[-1]
        spatial = out_shape[1:] if channels_first else out_shape[:-1]
        positions = math.prod(spatial)
        window = math.prod(layer.kernel_size)
        if kind == "Conv2D":
            return positions * window * (in_channels // layer.groups) * layer.filters
        depthwise = positions * window * in_channels * layer.depth_multiplier
        if kind == "DepthwiseConv2D":
            return depthwise
        pointwise = positions * in_channels * layer.depth_multiplier * layer.filters
        return depthwise + pointwise
    # Dense applies to the last axis of an input of any rank.
    return math.prod(in_shape) * layer.units


def _with_input_size(model, input_shape):
    """A copy of functional `model`'s graph built for `input_shape`."""
    import keras

    config = copy.deepcopy(model.get_config())
    inputs = [entry for entry in config["layers"] if entry["class_name"] == "InputLayer"]
    if len(inputs) != 1:
        raise ConfigError(
            "count_flops(..., input_shape=...) needs a model with one input. "
            f"Received a model with {len(inputs)} inputs."
        )
    inputs[0]["config"]["batch_shape"] = [None, *input_shape]
    return keras.Model.from_config(config)


def count_flops(model, input_shape=None) -> FlopCount:
    """Counts the multiply-adds of `model` for one image, layer by layer.

    Args:
        model: A functional `keras.Model` (e.g. from `Xception(...)`, with or
            without `optimize_for_inference`).
        input_shape: Optional input shape without the batch dimension, e.g.
            `(299, 299, 3)`; required if the model's input has a free height
            or width, and otherwise replaces the model's own input size.

    Returns:
        A `FlopCount`: `.macs` the total, `.layers` the per-layer breakdown,
        `.table()` a printable table.

    Raises:
        keras_xception.errors.ConfigError: If the input size is not static
            and `input_shape` is not given.
    """
    if input_shape is not None:
        model = _with_input_size(model, tuple(int(d) for d in input_shape))
    for tensor in model.inputs:
        if any(d is None for d in tensor.shape[1:]):
            raise ConfigError(
                "count_flops needs a static input size: pass `input_shape`, "
                f"e.g. (299, 299, 3). Received a model with input shape "
                f"{tuple(tensor.shape)}."
            )
    counted = []
    for layer in model.layers:
        macs = _layer_macs(layer)
        if macs:
            counted.append(
                LayerFlops(layer.name, type(layer).__name__, macs,
                           tuple(layer.output.shape[1:]))
            )
    return FlopCount(tuple(counted))
