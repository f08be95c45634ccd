"""`keras-xception fine-tune DATA_DIR --output OUT.keras`: train a classifier.

DATA_DIR holds one folder of images per class. The whole folder is checked
before training: a corrupt or non-image file, an empty class folder or a
single class stops the command with a message that names the problem (see
`keras_xception.data`). Training runs in two phases, the head with the base
frozen and then the top blocks at a low learning rate (see
`keras_xception.transfer.fit_classifier`), and prints one line per epoch with
the validation metrics.

OUT.keras takes raw RGB images in [0, 255] of size `--image-size` and carries
its class names (`keras_xception.transfer.read_class_names`); it is written
under a temporary name and renamed when complete, so a failed run never
leaves a half-written file.

Backups and checkpoints go to `--work-dir` (default `OUT.training/` next to
the output); after an interruption the same command with `--resume`
continues from the last completed epoch.
"""

from __future__ import annotations

import os
import sys

from keras_xception import architecture, transfer
from keras_xception.errors import ConfigError
from keras_xception.weights.downloader import is_url

# Set by the local multi-worker launcher, which has checked every image
# already, so that its workers do not decode the whole dataset again.
_CHECKED_ENV = "KERAS_XCEPTION_DATA_CHECKED"


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "fine-tune",
        help="train a classifier for your own classes on the Xception base",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "data_dir",
        metavar="DATA_DIR",
        help="folder with one subfolder of images per class",
    )
    parser.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="OUT.keras",
        help="where to save the trained model",
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="starting weights of the base: 'imagenet' (default), a weights file, "
        "or an http(s) URL; 'none' gives a randomly initialized base that is "
        "still frozen and in inference mode, useful only to try the pipeline "
        "(train from scratch with the Python builder instead)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=architecture.DEFAULT_SIZE,
        metavar="S",
        help=f"train on SxS images (default {architecture.DEFAULT_SIZE}, at least {architecture.MIN_SIZE})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="B",
        help="global batch size, split across replicas (default 32)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=5,
        metavar="N",
        help="epochs of phase 1, the new head on the frozen base (default 5)",
    )
    parser.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=5,
        metavar="M",
        help="epochs of phase 2, unfrozen top blocks at a low learning rate "
        "(default 5; 0 skips it)",
    )
    parser.add_argument(
        "--unfreeze-from",
        default=transfer.DEFAULT_UNFREEZE_FROM,
        metavar="blockN",
        help="first block trained in phase 2 (default %(default)s)",
    )
    parser.add_argument(
        "--val-split",
        type=float,
        default=0.2,
        metavar="F",
        help="fraction of each class held out for validation (default 0.2; 0 for none)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=transfer.HEAD_LEARNING_RATE,
        metavar="LR",
        help="learning rate of phase 1 (default %(default)g)",
    )
    parser.add_argument(
        "--fine-tune-learning-rate",
        type=float,
        default=transfer.FINE_TUNE_LEARNING_RATE,
        metavar="LR",
        help="learning rate of phase 2 (default %(default)g)",
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=transfer.DEFAULT_DROPOUT,
        help="dropout before the classifier (default %(default)g)",
    )
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="compute in float16 on GPUs (bfloat16 on CPUs); weights stay float32",
    )
    parser.add_argument(
        "--strategy",
        choices=("default", "mirrored", "multiworker"),
        default="default",
        help="default: one device; mirrored: all GPUs of this host; "
        "multiworker: the cluster in TF_CONFIG, or --workers local processes",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="with --strategy multiworker and no TF_CONFIG: start N local workers "
        "on loopback ports",
    )
    parser.add_argument(
        "--work-dir",
        metavar="DIR",
        help="folder for backups and checkpoints (default: OUT.training next to the output)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run found in the work folder",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1337,
        help="seed of the validation split and shuffling",
    )
    parser.set_defaults(run=run)
    return parser


def _work_dir(args):
    if args.work_dir:
        return args.work_dir
    return os.path.splitext(args.output)[0] + ".training"


def _check_options(args):
    if not args.output.endswith(".keras"):
        raise ConfigError(
            f"--output must name a .keras file. Received: --output {args.output}"
        )
    if args.image_size < architecture.MIN_SIZE:
        raise ConfigError(
            f"--image-size must be at least {architecture.MIN_SIZE}. "
            f"Received: --image-size {args.image_size}"
        )
    for flag, value, low in (
        ("--batch-size", args.batch_size, 1),
        ("--epochs", args.epochs, 0),
        ("--fine-tune-epochs", args.fine_tune_epochs, 0),
    ):
        if value < low:
            raise ConfigError(
                f"{flag} must be at least {low}. Received: {flag} {value}"
            )
    if args.epochs + args.fine_tune_epochs == 0:
        raise ConfigError(
            "Nothing to train: --epochs and --fine-tune-epochs are both 0."
        )
    if not 0 <= args.val_split < 1:
        raise ConfigError(
            f"--val-split must be in [0, 1). Received: --val-split {args.val_split}"
        )
    if not 0 <= args.dropout < 1:
        raise ConfigError(
            f"--dropout must be in [0, 1). Received: --dropout {args.dropout}"
        )
    for flag, value in (
        ("--learning-rate", args.learning_rate),
        ("--fine-tune-learning-rate", args.fine_tune_learning_rate),
    ):
        if not value > 0:
            raise ConfigError(f"{flag} must be positive. Received: {flag} {value}")
    transfer._block_index(args.unfreeze_from)
    weights = args.weights
    if weights.lower() == "none":
        args.weights = None
    elif weights != "imagenet" and not is_url(weights):
        if not os.path.isfile(weights):
            raise ConfigError(
                "--weights must be 'imagenet', 'none', an http(s) URL or an "
                f"existing weights file. Received: --weights {weights}"
            )
    if args.workers is not None:
        if args.strategy != "multiworker":
            raise ConfigError("--workers only applies with --strategy multiworker.")
        if args.workers < 1:
            raise ConfigError(
                f"--workers must be at least 1. Received: --workers {args.workers}"
            )


def _worker_argv(args):
    argv = [
        sys.executable,
        "-m",
        "keras_xception.cli",
        "fine-tune",
        args.data_dir,
        "--output",
        args.output,
        "--weights",
        "none" if args.weights is None else args.weights,
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--fine-tune-epochs",
        str(args.fine_tune_epochs),
        "--unfreeze-from",
        str(args.unfreeze_from),
        "--val-split",
        repr(args.val_split),
        "--learning-rate",
        repr(args.learning_rate),
        "--fine-tune-learning-rate",
        repr(args.fine_tune_learning_rate),
        "--dropout",
        repr(args.dropout),
        "--strategy",
        "multiworker",
        "--work-dir",
        _work_dir(args),
        "--seed",
        str(args.seed),
    ]
    if args.mixed_precision:
        argv.append("--mixed-precision")
    if args.resume:
        argv.append("--resume")
    return argv


def _describe(folder, train, val):
    counts = ", ".join(f"{name} {n}" for name, n in folder.counts().items())
    return (
        f"{len(folder.paths)} images in {folder.num_classes} classes ({counts}); "
        f"training on {len(train[0])}, validating on {len(val[0])}"
    )


def run(args) -> int:
    from keras_xception import data, distributed
    from keras_xception.transfer import RunState

    _check_options(args)
    work_dir = _work_dir(args)
    config = distributed.tf_config()
    launcher = args.strategy == "multiworker" and config is None
    if (
        args.strategy == "multiworker"
        and config is not None
        and args.workers is not None
    ):
        size = distributed.cluster_size(config)
        if size != args.workers:
            raise ConfigError(
                f"--workers {args.workers} does not match the {size} tasks in TF_CONFIG."
            )
    if launcher and args.workers is None:
        raise ConfigError(
            "--strategy multiworker needs TF_CONFIG describing the cluster "
            "(one process per host), or --workers N to start N local workers."
        )
    if (
        distributed.is_chief(config)
        and RunState(work_dir).interrupted()
        and not args.resume
    ):
        raise ConfigError(
            f"{work_dir!r} holds an interrupted training run. Pass --resume to "
            "continue it, or delete the folder to start over."
        )

    checked = os.environ.get(_CHECKED_ENV) == "1"
    folder = data.scan(args.data_dir, check_images=not checked)
    train, val = data.split(folder, args.val_split, seed=args.seed)

    if launcher:
        print(
            f"{_describe(folder, train, val)}; starting {args.workers} local workers",
            flush=True,
        )
        env = dict(os.environ, **{_CHECKED_ENV: "1"})
        distributed.launch_local_workers(_worker_argv(args), args.workers, env=env)
        print(f"saved {args.output}", flush=True)
        return 0
    return _train(args, folder, train, val, work_dir, config)


def _train(args, folder, train, val, work_dir, config) -> int:
    import keras

    from keras_xception import data, distributed
    from keras_xception.transfer import (
        build_classifier,
        fit_classifier,
        save_classifier,
    )

    chief = distributed.is_chief(config)
    say = (lambda *a: print(*a, flush=True)) if chief else (lambda *a: None)

    policy = keras.config.dtype_policy()
    if args.mixed_precision:
        import tensorflow as tf

        gpu = bool(tf.config.list_physical_devices("GPU"))
        keras.config.set_dtype_policy("mixed_float16" if gpu else "mixed_bfloat16")
    try:
        strategy = distributed.get_strategy(args.strategy)
        replicas = distributed.replicas(strategy)
        if args.batch_size < replicas:
            raise ConfigError(
                f"--batch-size {args.batch_size} is smaller than the {replicas} "
                "replicas it is split across."
            )
        say(
            f"{_describe(folder, train, val)}; strategy {args.strategy} with {replicas} replica(s)"
        )
        train_ds = data.make_dataset(
            *train,
            image_size=args.image_size,
            batch_size=args.batch_size,
            shuffle=True,
            seed=args.seed,
        )
        val_ds = None
        if val[0]:
            val_ds = data.make_dataset(
                *val, image_size=args.image_size, batch_size=args.batch_size
            )
        with distributed.strategy_scope(strategy):
            model = build_classifier(
                folder.num_classes,
                image_size=args.image_size,
                weights=args.weights,
                dropout=args.dropout,
                class_names=folder.class_names,
            )
        history = fit_classifier(
            model,
            train_ds,
            val_ds,
            epochs=args.epochs,
            fine_tune_epochs=args.fine_tune_epochs,
            unfreeze_from=args.unfreeze_from,
            learning_rate=args.learning_rate,
            fine_tune_learning_rate=args.fine_tune_learning_rate,
            work_dir=distributed.worker_dir(work_dir, config),
            resume=args.resume,
            verbose=chief,
        )
        distributed.save_model(
            lambda path: save_classifier(model, path), args.output, config
        )
    finally:
        keras.config.set_dtype_policy(policy)
    final = ", ".join(
        f"{key} {values[-1]:.4f}"
        for key, values in history.items()
        if key in ("accuracy", "val_accuracy") and values
    )
    names = ", ".join(folder.class_names)
    say(f"saved {args.output} ({folder.num_classes} classes: {names}; {final})")
    return 0
