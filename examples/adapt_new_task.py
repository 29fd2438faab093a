"""Use a trained learner on a new task of your own: a folder of a few images per class, in a fresh process.

    python examples/adapt_new_task.py [--steps 500] [--root ../shared/data/omniglot | --synthetic]

1. Here: train MAML (Conv-4, 5-way 1-shot) briefly on Omniglot when a copy is found (``--root``,
   ``$LIGHTNING_META_OMNIGLOT`` or ``../shared/data/omniglot``), else (or with ``--synthetic``) on synthetic glyphs
   drawn by this script, so that it runs with no data; save a checkpoint with the optimizer state.
2. In a new process, as your own script would: load the checkpoint with no arguments, write a folder of PNG images of
   5 classes never seen in training (``support/<class>/*.png``, labeled by their folder, and ``query/*.png``), read
   them with the preprocessing the learner recorded (``learner.task_info["preprocessing"]``), adapt, predict, print
   the accuracy, and export the adapted learner with ``torch.export`` (checked against it, saved as ``adapted.pt2``).

The folder layout is the one ``lightning-meta adapt --support my_task/support --query my_task/query`` reads.
With the defaults (500 steps, meta-batch 16) it takes 4-5 minutes on 2 CPU cores and classified 25 of 25 queries
after adapting with 3 images per class, on Omniglot and on the synthetic glyphs alike (one run each).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

WAYS, SHOTS, QUERIES = 5, 3, 5  # the new task: 5 classes, 3 labeled images each, 5 images each to predict
SIZE = 28


# ------------------------------------------------------------------ data
def find_omniglot(root: str | None) -> Path | None:
    """``--root``, else ``$LIGHTNING_META_OMNIGLOT``, else ``../shared/data/omniglot`` (from here, or beside the
    repository): the first that holds Omniglot's zips or folders."""
    repo = Path(__file__).resolve().parent.parent
    candidates = [
        root,
        os.environ.get("LIGHTNING_META_OMNIGLOT"),
        "../shared/data/omniglot",
        repo.parent / "shared" / "data" / "omniglot",
    ]
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if (path / "images_background.zip").exists() or (path / "images_background").is_dir():
            return path
    if root is not None:
        raise SystemExit(f"--root {root}: no Omniglot there (images_background.zip or images_background/)")
    return None


def glyph(kind: int, example: int, seed: int) -> Image.Image:
    """Example ``example`` of synthetic class ``kind``: three pen strokes whose ends are fixed per class, drawn in dark
    ink on white, with per-example jitter in position and width (a stand-in for handwritten characters)."""
    strokes = np.random.default_rng([seed, kind]).uniform(4, SIZE - 4, size=(3, 4))
    jitter = np.random.default_rng([seed, kind, example + 1])
    image = Image.new("L", (SIZE, SIZE), color=255)
    draw = ImageDraw.Draw(image)
    shift = jitter.normal(0, 1.0, size=2)
    for x0, y0, x1, y1 in strokes:
        ends = np.array([x0, y0, x1, y1]) + np.tile(shift, 2) + jitter.normal(0, 0.7, size=4)
        draw.line(tuple(ends.tolist()), fill=0, width=int(jitter.integers(2, 4)))
    return image


def synthetic_tasks(classes: int = 120, per_class: int = 20, seed: int = 0):
    """Synthetic glyph classes as an image task source that records its preprocessing, as Omniglot's does."""
    from torch.utils.data import TensorDataset

    from lightning_meta import ClassificationTasks, ImagePreprocessing

    prep = ImagePreprocessing(image_size=SIZE, channels=1, invert=True)  # ink is 1, as Omniglot's

    class GlyphTasks(ClassificationTasks):
        def preprocessing(self) -> ImagePreprocessing:
            return prep  # recorded in the checkpoint: a new process prepares new images the same way

    images = prep.stack([glyph(c, i, seed) for c in range(classes) for i in range(per_class)])
    labels = torch.arange(classes).repeat_interleave(per_class)
    splits = {"train": list(range(classes - 20)), "val": list(range(classes - 20, classes)), "test": []}
    return GlyphTasks(TensorDataset(images, labels), ways=WAYS, shots=1, queries=5, splits=splits)


# ------------------------------------------------------------------ step 1: train and save
def train(args: argparse.Namespace, omniglot: Path | None, checkpoint: Path) -> None:
    import pytorch_lightning as pl

    from lightning_meta import MAML, EpisodicDataModule, OmniglotTasks
    from lightning_meta.models import Conv4

    pl.seed_everything(0, verbose=False)
    tasks = OmniglotTasks(str(omniglot), ways=WAYS, shots=1, queries=5) if omniglot else synthetic_tasks()
    dm = EpisodicDataModule(tasks, meta_batch_size=args.meta_batch_size, val_episodes=16)
    learner = MAML(Conv4(out_features=WAYS), inner_lr=0.4, inner_steps=1, eval_inner_steps=3)
    trainer = pl.Trainer(
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(learner, dm)
    trainer.save_checkpoint(checkpoint, weights_only=False)  # with the optimizer: training can resume from it
    data = "Omniglot" if omniglot else "synthetic glyphs"
    print(f"trained MAML for {args.steps} steps on {data}; saved {checkpoint}")


# ------------------------------------------------------------------ step 2: a new process uses it
def write_new_task(folder: Path, omniglot: Path | None) -> None:
    """A user's folder: ``support/<class>/<i>.png`` (SHOTS per class) and ``query/<class>-<i>.png`` (QUERIES per
    class; the class in a query's name is only there to score the predictions). The classes are Omniglot test
    characters, or synthetic glyphs of classes never drawn in training."""
    if omniglot is not None:
        from lightning_meta import OmniglotTasks

        tasks = OmniglotTasks(str(omniglot), ways=WAYS, shots=SHOTS, queries=QUERIES)
        tasks.setup()
        batch = tasks.sample("test", [torch.Generator().manual_seed(0)])
        as_image = lambda x: Image.fromarray((255 - x[0] * 255).round().byte().numpy(), mode="L")  # noqa: E731
        sets = {"support": (batch.support_x[0], batch.support_y[0]), "query": (batch.query_x[0], batch.query_y[0])}
        for part, (images, labels) in sets.items():
            for y in range(WAYS):
                for i, x in enumerate(images[labels == y]):
                    as_image(x).save(task_file(folder, part, f"character_{y + 1}", i))
        return
    for c in range(WAYS):
        for i in range(SHOTS + QUERIES):
            part, index = ("support", i) if i < SHOTS else ("query", i - SHOTS)
            glyph(1000 + c, i, seed=0).save(task_file(folder, part, f"glyph_{'abcde'[c]}", index))  # new classes


def task_file(folder: Path, part: str, name: str, index: int) -> Path:
    path = folder / part / name / f"{index}.png" if part == "support" else folder / part / f"{name}-{index}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def use(checkpoint: Path, omniglot: Path | None) -> None:
    from lightning_meta import ImagePreprocessing, MetaLearner

    learner = MetaLearner.load_from_checkpoint(checkpoint, weights_only=True)  # no arguments: all in the checkpoint
    print(
        f"loaded {type(learner).__name__}, trained on {learner.task_info['source']} "
        f"({learner.task_info['ways']}-way {learner.task_info['shots']}-shot)"
    )
    prep = ImagePreprocessing.from_dict(learner.task_info["preprocessing"])
    folder = checkpoint.parent / "my_task"
    write_new_task(folder, omniglot)

    support = sorted((folder / "support").glob("*/*.png"))
    query = sorted((folder / "query").glob("*.png"))
    support_x, support_y = prep.stack(support), [path.parent.name for path in support]  # class name: the folder
    query_x, truth = prep.stack(query), [path.stem.rsplit("-", 1)[0] for path in query]
    print(f"support: {len(support)} images of classes {sorted(set(support_y))}; query: {len(query)} images")

    adapted = learner.adapt(support_x, support_y)  # MAML: eval_inner_steps SGD steps on the support images
    predicted = adapted.predict(query_x)  # all queries of the task at once (MAML's transductive BatchNorm)
    accuracy = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
    print(f"accuracy on the {len(truth)} query images: {100 * accuracy:.1f} %")
    confidence = adapted.predict_proba(query_x).max(1).values
    print(f"{query[0].relative_to(folder)} -> {predicted[0]} (p = {confidence[0]:.2f})")

    program = torch.export.export(adapted, (query_x,))
    with warnings.catch_warnings():  # torch's note on CPU weights when it packages them: all of these are on CPU
        warnings.filterwarnings("ignore", message="No complete tensor found")
        torch.export.save(program, folder / "adapted.pt2")
    reloaded = torch.export.load(folder / "adapted.pt2").module()
    difference = (reloaded(query_x) - adapted(query_x)).abs().max().item()
    assert difference <= 1e-5, difference
    print(f"torch.export: {folder / 'adapted.pt2'} answers as the adapted learner (max difference {difference:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="training steps (meta-batches)")
    parser.add_argument("--meta-batch-size", type=int, default=16)
    parser.add_argument("--root", default=None, help="Omniglot's folder (default: found, else synthetic glyphs)")
    parser.add_argument("--synthetic", action="store_true", help="synthetic glyphs even where Omniglot is found")
    parser.add_argument("--use", default=None, metavar="CKPT", help=argparse.SUPPRESS)  # step 2, in the new process
    args = parser.parse_args()
    omniglot = None if args.synthetic else find_omniglot(args.root)
    if args.use is not None:
        use(Path(args.use), omniglot)
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "learner.ckpt"
        train(args, omniglot, checkpoint)
        command = [sys.executable, __file__, "--use", str(checkpoint)]
        command += ["--root", str(omniglot)] if omniglot is not None else ["--synthetic"]
        proc = subprocess.run(command)  # a new process: nothing but the checkpoint is shared
        if proc.returncode != 0:
            raise SystemExit(f"the new process failed (exit {proc.returncode})")


if __name__ == "__main__":
    main()
