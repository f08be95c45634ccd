"""`keras-xception fine-tune DATA_DIR --output OUT.keras`: train a classifier.

DATA_DIR holds one folder of images per class. Before any image is decoded,
the output is checked (its folder writable; an existing OUT.keras is only
replaced with --overwrite) and every file's header is read: a non-image
file, an unreadable image, an empty class folder or a single class stops
the command with one line naming the problem. An image that cannot be
decoded later (deleted or damaged during training) is skipped with a
warning naming it. Training runs in two phases, the head with the base
frozen and then the top blocks at a low learning rate, and prints one line
per epoch ("phase 2/2 (fine-tune), epoch 3/5: ...") on stderr; the saved
model's path is the one line on stdout.

OUT.keras takes raw RGB images in [0, 255] of size `--image-size` and
carries its class names and training history; it is written under a
temporary name and renamed when complete, so a failed run never leaves a
half-written file.

Checkpoints go to `--work-dir` (default `OUT.training/` next to the
output) after every epoch, each written atomically. After an interruption
(even SIGKILL) the same command with `--resume` continues after the last
completed epoch; `--overwrite` instead starts over. When the job ends the
checkpoints are removed and `best.weights.h5` (the best epoch's weights)
is kept in the work folder.

Exit status: 0 when the model is saved, 1 for any expected error (one line
on stderr), 130 when interrupted with Ctrl-C.
"""

from __future__ import annotations

import dataclasses

from keras_xception import architecture
from keras_xception.training import classifier as transfer
from keras_xception.training.settings import STRATEGIES


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
        help="global batch size, split evenly across replicas and workers (default 32)",
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
        choices=STRATEGIES,
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
        help="continue the interrupted run found in the work folder, after its "
        "last completed epoch; an error if there is none",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUT.keras, and start over when the work folder "
        "holds an interrupted run",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1337,
        help="seed of the validation split, the shuffling, the new layers' initial "
        "weights, dropout and augmentation: the same command repeats its run",
    )
    parser.set_defaults(run=run)
    return parser


def settings_from_args(args):
    """The `Settings` of the parsed arguments (validated on creation)."""
    from keras_xception.training.settings import Settings

    names = {field.name for field in dataclasses.fields(Settings)}
    return Settings(**{k: v for k, v in vars(args).items() if k in names})


def run(args) -> int:
    from keras_xception.training import job, launcher

    settings = settings_from_args(args)
    try:
        return job.run(settings, argv=getattr(args, "argv", None))
    except launcher.WorkerFailed as err:
        if not err.reported:
            raise
        return 1  # the chief's own error line is already on stderr
