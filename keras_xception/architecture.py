"""The Xception architecture as data.

One table describes the network; `model.py` builds Keras layers from it and
`weights/validate.py` checks weight files against it without importing Keras.
Nothing else in the package repeats a filter count or a layer name.

The layout is the one in Chollet (2017), figure 5, as implemented by the
original Keras source (`keras/src/applications/xception.py`):

- a stem of two plain 3x3 convolutions (`block1`);
- entry flow `block2`-`block4` and exit block `block13`: two separable
  convolutions, a 3x3 stride-2 max pool, and a strided 1x1 residual
  convolution with BatchNormalization;
- middle flow `block5`-`block12`: three separable convolutions and an
  identity residual;
- `block14`: two separable convolutions with post-activation.
"""

from __future__ import annotations

import dataclasses

DEFAULT_SIZE = 299
MIN_SIZE = 71
FEATURES = 2048


@dataclasses.dataclass(frozen=True)
class Block:
    """A residual block of separable convolutions.

    Attributes:
        name: Layer-name prefix, e.g. `"block4"`.
        filters: Output channels of each separable convolution, in order.
        downsample: `True` for a block that ends in a 3x3 stride-2 max pool
            with a strided 1x1 convolution on the residual branch; `False`
            for an identity residual.
        relu_first: Whether a ReLU precedes the first separable convolution.
            Only `block2` starts without one (it follows the stem's ReLU).
    """

    name: str
    filters: tuple[int, ...]
    downsample: bool
    relu_first: bool = True


STEM = (
    # (name, filters, strides)
    ("block1_conv1", 32, 2),
    ("block1_conv2", 64, 1),
)

BLOCKS = (
    Block("block2", (128, 128), downsample=True, relu_first=False),
    Block("block3", (256, 256), downsample=True),
    Block("block4", (728, 728), downsample=True),
    *(Block(f"block{i}", (728, 728, 728), downsample=False) for i in range(5, 13)),
    Block("block13", (728, 1024), downsample=True),
)

EXIT = (
    # (name, filters): separable conv -> BN -> ReLU
    ("block14_sepconv1", 1536),
    ("block14_sepconv2", 2048),
)

@dataclasses.dataclass(frozen=True)
class LayerWeights:
    """The weights one layer holds, in the order Keras stores them.

    Attributes:
        name: The layer's name in this package's model.
        kind: The Keras layer class (`"Conv2D"`, `"SeparableConv2D"`,
            `"BatchNormalization"` or `"Dense"`).
        shapes: Shape of each weight, in Keras's order (kernel before bias;
            gamma, beta, moving mean, moving variance for BatchNormalization;
            depthwise before pointwise kernel).
    """

    name: str
    kind: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def size(self) -> int:
        total = 0
        for shape in self.shapes:
            count = 1
            for dim in shape:
                count *= dim
            total += count
        return total


def residual_names(block: Block) -> tuple[str, str]:
    """Names of a downsampling block's residual 1x1 conv and its BatchNorm."""
    return f"{block.name}_residual_conv", f"{block.name}_residual_bn"


def _conv(name, k, cin, cout):
    return LayerWeights(name, "Conv2D", ((k, k, cin, cout),))


def _sepconv(name, cin, cout):
    return LayerWeights(name, "SeparableConv2D", ((3, 3, cin, 1), (1, 1, cin, cout)))


def _bn(name, channels):
    return LayerWeights(name, "BatchNormalization", ((channels,),) * 4)


def weight_layout(include_top=True, *, classes=1000, channels=3):
    """Every weighted layer of Xception, in Keras's topological order.

    This is the order `keras.applications.Xception(...).layers` lists its
    weighted layers, which is the order of the official Keras 2 HDF5 files
    (they are loaded by position, not by name) and the order in which Keras 3
    numbers same-class layers in a `.weights.h5` file.

    Args:
        include_top: Whether to include the `predictions` Dense layer.
        classes: Units of the `predictions` layer.
        channels: Input channels.

    Returns:
        A tuple of `LayerWeights`.
    """
    out = []
    cin = channels
    for name, filters, _ in STEM:
        out += [_conv(name, 3, cin, filters), _bn(f"{name}_bn", filters)]
        cin = filters
    for block in BLOCKS:
        block_in = cin
        for i, filters in enumerate(block.filters, start=1):
            out += [
                _sepconv(f"{block.name}_sepconv{i}", cin, filters),
                _bn(f"{block.name}_sepconv{i}_bn", filters),
            ]
            cin = filters
        if block.downsample:
            conv_name, bn_name = residual_names(block)
            out += [_conv(conv_name, 1, block_in, cin), _bn(bn_name, cin)]
    for name, filters in EXIT:
        out += [_sepconv(name, cin, filters), _bn(f"{name}_bn", filters)]
        cin = filters
    if include_top:
        out.append(LayerWeights("predictions", "Dense", ((cin, classes), (classes,))))
    return tuple(out)


def count_params(include_top=True, *, classes=1000, channels=3) -> int:
    """Parameter count of the model `weight_layout` describes."""
    return sum(
        layer.size
        for layer in weight_layout(include_top, classes=classes, channels=channels)
    )
