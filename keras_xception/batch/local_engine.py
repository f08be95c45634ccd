"""The in-process engine: `images.iter_batches` feeds one model, shard by shard.

It is the pipeline `keras-xception classify` runs (a few threads decode a
bounded number of images ahead of the model), with each shard's results
written (`sink.write_shard`) as soon as the shard is complete, so memory
holds one shard's results at most.
"""

from __future__ import annotations

import contextlib

import numpy as np


def run(shards, spec, *, batch_size, max_pixels, output, on_shard, progress):
    """Processes `shards` in order, writing each into `output` when it is complete.

    Args:
        shards: The `sources.Shard`s to process.
        spec: The `models.ModelSpec`.
        batch_size: Images per forward pass.
        max_pixels: The pixel limit for `images.decode`.
        output: The output folder, as `sink.Sink.open` prepared it.
        on_shard: Called as `on_shard(shard, errors)` once a shard is
            written, `errors` its unreadable inputs as `(path, reason)`.
        progress: A `progress.Progress`.
    """
    from keras_xception.batch import sink
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
        columns = concatenate(parts) if parts else empty_columns(spec.kind, spec.top)
        sink.write_shard(output, shard, result_table(spec.kind, paths, columns), errors)
        on_shard(shard, errors)


def concatenate(parts):
    """The result columns of several batches (`Predictor` outputs) as one."""
    out = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if isinstance(values[0], np.ndarray):
            out[key] = np.concatenate(values)
        else:
            out[key] = [row for v in values for row in v]
    return out
