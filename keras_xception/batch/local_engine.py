"""The in-process engine: `images.iter_batches` feeds one model, shard by shard.

It is the pipeline `keras-xception classify` runs (a few threads decode a
bounded number of images ahead of the model), with each shard's results
handed to the sink as soon as the shard is complete, so memory holds one
shard's results at most.
"""

from __future__ import annotations

import contextlib

import numpy as np


def run(shards, spec, *, batch_size, max_pixels, write, progress):
    """Processes `shards` in order.

    Args:
        shards: The `sources.Shard`s to process.
        spec: The `models.ModelSpec`.
        batch_size: Images per forward pass.
        max_pixels: The pixel limit for `images.decode`.
        write: Called as `write(shard, table, errors)` when a shard is done.
        progress: A `progress.Progress`.
    """
    from keras_xception.batch.models import Predictor, empty_columns, result_table
    from keras_xception.images import iter_batches

    predictor = Predictor(spec)
    for shard in shards:
        errors, paths, parts = [], [], []

        def on_error(path, message, errors=errors):
            errors.append((path, message))
            progress.update(1)

        batches = iter_batches(
            shard.paths, target_size=predictor.image_size, batch_size=batch_size,
            on_error=on_error, max_pixels=max_pixels,
        )
        with contextlib.closing(batches):
            for batch_paths, images in batches:
                parts.append(predictor(images))
                paths.extend(batch_paths)
                progress.update(len(batch_paths))
        columns = _concatenate(parts) if parts else empty_columns(spec.kind, spec.top)
        write(shard, result_table(spec.kind, paths, columns), errors)


def _concatenate(parts):
    out = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if isinstance(values[0], np.ndarray):
            out[key] = np.concatenate(values)
        else:
            out[key] = [row for v in values for row in v]
    return out
