"""Fine-tuning a classifier on the Xception base, as a job that survives real runs.

Modules, one job each:

- `settings`: the validated settings of a job (`Settings`);
- `data`: the dataset folder (scan, split, per-worker shards, `tf.data`);
- `classifier`: the model (`build_classifier`, `unfreeze`);
- `loop`: the two-phase training loop (`fit_classifier`);
- `checkpoints`: crash-safe checkpoints and resuming;
- `saving`: the `.keras` file with its class names;
- `distributed`: strategies and multi-worker training;
- `launcher`: local worker processes;
- `job`: one job from `Settings`, as `keras-xception fine-tune` runs it.

`keras_xception.transfer` re-exports the functions most code needs.
"""
