"""``lightning-meta adapt``: adapt a trained learner (a checkpoint) to a new task given as files, and predict its
queries, from the command line (``python -m lightning_meta adapt`` too).

What it does is [MetaLearner.adapt][lightning_meta.MetaLearner.adapt] on examples read by the readers of
``lightning_meta.data.folders``: the same numbers as

    learner = MetaLearner.load_from_checkpoint(ckpt)
    x, names, _ = read_class_folders(support, learner.task_info["preprocessing"])
    query_x, files = read_image_folder(query, learner.task_info["preprocessing"])
    learner.adapt(x, names, steps).predict_proba(query_x)

Bad input (a missing or empty folder, an unreadable image or checkpoint, a support set the learner cannot take) is
one line on stderr, ``lightning-meta adapt: error: ...``, and exit status 2 (usage: the arguments or files given)
or 1 (the learner failed); never a traceback, unless ``--traceback`` asks for one.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROG = "lightning-meta adapt"

DESCRIPTION = """\
Adapt a trained learner to a new task given as files, and predict the task's queries.

Classification (the learner was trained on classification tasks):
  --support DIR   one folder per class, named after the class, holding that class's images:
                    support/cat/1.png  support/cat/2.png  support/dog/1.png ...
                  (at least 2 class folders; MAML, iMAML and Reptile heads take exactly the number of
                  classes they were trained with, e.g. 5; black-box learners up to the ways they were
                  built for; ProtoNet any number)
  --query DIR     the images to classify, directly in DIR (sorted by name), or one image file.
  Images are prepared as the training images were: the checkpoint's recorded preprocessing
  (task_info["preprocessing"]: size, channels, inversion, normalization). Names starting with "."
  are ignored; every other file is read as an image.
  Output CSV columns: file, prediction, score_<class> ... (class probabilities, classes sorted by name).

Regression (the learner was trained on regression tasks, e.g. a MAML on SinusoidTasks):
  --support FILE  a CSV file with a header row: input columns "x" (one input) or "x0,x1,..." and target
                  columns "y" or "y0,y1,...", one example per row, e.g.
                    x,y
                    -1.5,0.82
                    0.3,1.97
  --query FILE    a CSV file of input columns (the same names); "y" columns, if any, are ignored.
  Output CSV columns: the query's x columns, then the predicted y columns (named as in --support).
"""

EPILOG = """\
The CSV goes to stdout unless --output names a file. Exit status: 0 on success; 2 for bad arguments or
input files (a missing or empty class folder, fewer than 2 classes, an unreadable image or CSV, a file
that is not a lightning-meta checkpoint, a checkpoint without recorded preprocessing given image folders);
1 when the learner cannot take the task (e.g. more classes than its head outputs). Errors are one line on
stderr.

In Python: MetaLearner.load_from_checkpoint(ckpt).adapt(support_x, support_y, steps) with the readers of
lightning_meta.data.folders (read_class_folders, read_image_folder, read_xy_csv, read_x_csv).

Examples:
  lightning-meta adapt --ckpt_path best.ckpt --support support/ --query query/ --output predictions.csv
  lightning-meta adapt --ckpt_path sine.ckpt --support points.csv --query grid.csv --steps 10
"""


class AdaptError(Exception):
    """A failure reported as one line: ``status`` 2 (bad arguments or input files) or 1 (the learner failed)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ckpt_path",
        "--ckpt-path",
        required=True,
        metavar="CKPT",
        help="a learner checkpoint written by lightning-meta fit, a Lightning Trainer "
        "(ModelCheckpoint, trainer.save_checkpoint) or MetaLearner training in Python",
    )
    parser.add_argument(
        "--support",
        required=True,
        metavar="PATH",
        help="the labeled examples of the new task: a folder of class folders of images "
        "(classification) or a CSV file of x,y rows (regression); see above",
    )
    parser.add_argument(
        "--query",
        required=True,
        metavar="PATH",
        help="the examples to predict: a folder of images or one image (classification), or a "
        "CSV file of x rows (regression)",
    )
    parser.add_argument(
        "--steps",
        type=_steps,
        default=None,
        metavar="K",
        help="inner adaptation steps (default: the learner's eval_inner_steps; learners without an "
        "inner loop, ProtoNet and black-box, take none: leave it out or give 0)",
    )
    parser.add_argument(
        "--output",
        "-o",
        default=None,
        metavar="FILE",
        help="write the predictions CSV to FILE (default: print it to stdout)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        metavar="DEVICE",
        help="where to adapt and predict: cpu (default), cuda, cuda:1, mps ...",
    )
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="on an error, show the full Python traceback (for bug reports) instead of one line",
    )
    return parser


def _steps(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


# ----------------------------------------------------------------- checkpoint
def read_record(path: str) -> tuple[str, dict[str, Any]]:
    """``(learner class path, task_info)`` recorded in the checkpoint at ``path``; an :class:`AdaptError` when the
    file is missing, not a PyTorch checkpoint, or not a lightning-meta learner's."""
    from lightning_meta.checkpoints import read_lightning_checkpoint, recorded_learner

    try:
        checkpoint = read_lightning_checkpoint(path)
    except ValueError as error:
        raise AdaptError(_one_line(error)) from error
    record = checkpoint.get("lightning_meta") or {}
    learner = recorded_learner(checkpoint)
    if not learner or not _is_meta_learner(learner):
        what = f"a checkpoint of {learner}" if learner else "a Lightning checkpoint that records no learner"
        raise AdaptError(
            f"{path} is not a lightning-meta learner's checkpoint ({what}); adapt needs one written by "
            "training a MAML, IMAML, Reptile, ProtoNet or BlackBoxAdaptation"
        )
    return learner, dict(record.get("task") or {})


def _is_meta_learner(class_path: str) -> bool:
    from lightning_meta.algorithms.base import MetaLearner
    from lightning_meta.models.spec import import_class

    try:
        found = import_class(class_path)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(found, type) and issubclass(found, MetaLearner)


def load_learner(path: str, device: str):
    """The learner of the checkpoint at ``path`` on ``device``, in evaluation mode."""
    from lightning_meta.algorithms.base import MetaLearner

    try:
        learner = MetaLearner.load_from_checkpoint(path, map_location="cpu")
    except (ValueError, TypeError, KeyError, RuntimeError, ImportError, AttributeError) as error:
        raise AdaptError(f"cannot load the learner from {path}: {_one_line(error)}") from error
    try:
        return learner.to(device).eval()
    except (RuntimeError, AssertionError, ValueError) as error:
        raise AdaptError(f"--device {device}: {_one_line(error)}") from error


# ------------------------------------------------------------------- the task
def task_type_of(task_info: dict[str, Any], support: Path) -> str:
    """The recorded task type, else what ``--support`` looks like (a folder: classification; a file: regression)."""
    recorded = task_info.get("task_type")
    if recorded in ("classification", "regression"):
        return recorded
    return "classification" if support.is_dir() else "regression"


def classify(learner, task_info: dict[str, Any], args: argparse.Namespace) -> tuple[list[str], list[list[Any]]]:
    """``(header, rows)`` of the classification CSV."""
    from lightning_meta.data.folders import read_class_folders, read_image_folder

    support = Path(args.support)
    if support.is_file():
        raise AdaptError(
            f"--support {args.support} is a file, but this learner classifies: pass a folder with one "
            "folder of images per class (support/cat/1.png, support/dog/1.png, ...)"
        )
    preprocessing = task_info.get("preprocessing")
    if not preprocessing:
        source = task_info.get("source")
        where = (
            f"its task source {source} does not describe an image preprocessing"
            if source
            else ("it was written before lightning-meta recorded task_info, or trained without a task source")
        )
        raise AdaptError(
            f"{args.ckpt_path} records no image preprocessing (task_info['preprocessing'] is missing: "
            f"{where}), so adapt cannot tell how to turn image files into the learner's inputs (size, "
            "channels, inversion, normalization); in Python, prepare the tensors as in training and "
            "call learner.adapt(support_x, names)"
        )
    try:
        support_x, names, _ = read_class_folders(support, preprocessing)
        query_x, files = read_image_folder(args.query, preprocessing)
    except ValueError as error:
        raise AdaptError(_one_line(error)) from error
    adapted = _adapt(learner, support_x, names, args)
    probabilities = _run(
        lambda: adapted.predict_proba(query_x.to(learner.device, learner.dtype)), "predicting the queries"
    )
    classes = [str(c) for c in adapted.classes]
    query_root = Path(args.query)
    header = ["file", "prediction", *(f"score_{c}" for c in classes)]
    rows = []
    for file, p in zip(files, probabilities.cpu().tolist()):
        name = file.name if query_root.is_file() else os.fspath(file.relative_to(query_root))
        best = max(range(len(p)), key=p.__getitem__)
        rows.append([name, classes[best], *(_number(v) for v in p)])
    return header, rows


def regress(learner, args: argparse.Namespace) -> tuple[list[str], list[list[Any]]]:
    """``(header, rows)`` of the regression CSV."""
    from lightning_meta.data.folders import read_x_csv, read_xy_csv

    if Path(args.support).is_dir():
        raise AdaptError(
            f"--support {args.support} is a folder, but this learner does regression: pass a CSV file "
            "of x,y rows (header x,y or x0,x1,...,y0,y1,...)"
        )
    try:
        support_x, support_y, x_names, y_names = read_xy_csv(args.support)
        query_x, query_names = read_x_csv(args.query)
    except ValueError as error:
        raise AdaptError(_one_line(error)) from error
    if query_names != x_names:
        raise AdaptError(
            f"--query {args.query} has input columns {','.join(query_names)}, but --support "
            f"{args.support} has {','.join(x_names)}: use the same x columns"
        )
    adapted = _adapt(learner, support_x, support_y, args)
    predictions = _run(lambda: adapted(query_x.to(learner.device, learner.dtype)), "predicting the queries")
    predictions = predictions.reshape(len(query_x), -1).float().cpu()
    if predictions.shape[1] != len(y_names):
        raise AdaptError(
            f"the learner predicts {predictions.shape[1]} values per query, but --support has {len(y_names)} y columns",
            status=1,
        )
    header = [*x_names, *y_names]
    rows = [
        [*(_number(v) for v in x), *(_number(v) for v in y)] for x, y in zip(query_x.tolist(), predictions.tolist())
    ]
    return header, rows


def _adapt(learner, support_x, support_y, args: argparse.Namespace):
    """``learner.adapt``, its ``ValueError`` (e.g. a support set the head cannot take) reported as one line."""
    return _run(lambda: learner.adapt(support_x, support_y, steps=args.steps), "adapting to the support set")


def _run(fn, doing: str):
    try:
        return fn()
    except ValueError as error:
        raise AdaptError(_one_line(error), status=1) from error
    except RuntimeError as error:  # torch: inputs of a shape the network cannot take
        raise AdaptError(
            f"the learner failed {doing} (inputs of a shape it cannot take?): {_one_line(error)}", status=1
        ) from error


def _number(value: float) -> str:
    return f"{value:.8g}"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def write_csv(header: list[str], rows: list[list[Any]], output: str | None) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    if output is None:
        sys.stdout.write(buffer.getvalue())
        sys.stdout.flush()
        return
    try:
        Path(output).write_text(buffer.getvalue())
    except OSError as error:
        raise AdaptError(f"--output {output}: cannot write it: {error.strerror or error}") from error
    print(f"wrote {len(rows)} predictions to {output}")


# ----------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> None:
    """Adapt and write the predictions; an :class:`AdaptError` on bad input."""
    for name in ("support", "query"):
        if not Path(getattr(args, name)).exists():
            raise AdaptError(f"--{name} {getattr(args, name)}: no such file or folder")
    _, task_info = read_record(args.ckpt_path)
    task_type = task_type_of(task_info, Path(args.support))
    learner = load_learner(args.ckpt_path, args.device)
    header, rows = classify(learner, task_info, args) if task_type == "classification" else regress(learner, args)
    write_csv(header, rows, args.output)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-meta adapt ARGV``; returns the exit status (argparse's usage errors exit with 2 themselves)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except AdaptError as error:
        if args.traceback:
            traceback.print_exc()
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return error.status
    except Exception as error:  # noqa: BLE001 - an unforeseen failure is still one line, unless --traceback
        if args.traceback:
            traceback.print_exc()
        hint = "" if args.traceback else " (rerun with --traceback for the details)"
        print(f"{PROG}: error: {type(error).__name__}: {_one_line(error)}{hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
