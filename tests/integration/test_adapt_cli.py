"""``lightning-meta adapt``: a trained learner's checkpoint adapted to a new task given as files (class folders of
images, or CSV tables for regression), its query predictions written as CSV equal to ``learner.adapt`` in Python;
every bad input is one line on stderr and a non-zero exit, never a traceback.

Two runs go through a fresh process (``python -m lightning_meta adapt``), as users run it; the others call the same
entry point (``cli_main``) in this process, which is what the console script runs."""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_trainer
from PIL import Image
from torch.utils.data import TensorDataset

from lightning_meta import MAML, ClassificationTasks, EpisodicDataModule, MetaLearner, OmniglotTasks, SinusoidTasks
from lightning_meta.cli import cli_main
from lightning_meta.data.folders import read_class_folders, read_image_folder, read_x_csv, read_xy_csv
from lightning_meta.data.preprocessing import ImagePreprocessing
from lightning_meta.models import MLP, Conv4

SIZE, WAYS = 16, 3
PREP = ImagePreprocessing(image_size=SIZE, channels=1, invert=True)


class TinyImages(ClassificationTasks):
    """Random 1x16x16 images of 12 classes, recorded with an Omniglot-like preprocessing (grayscale, inverted)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (12 * 4, 1, SIZE, SIZE), generator=g, dtype=torch.uint8)
        super().__init__(
            TensorDataset(images, torch.arange(48) % 12),
            ways=WAYS,
            shots=1,
            queries=1,
            split_fractions=(0.5, 0.25, 0.25),
        )

    def preprocessing(self) -> ImagePreprocessing:
        return PREP


def fit_and_save(learner: MetaLearner, tasks, path: Path) -> Path:
    trainer = tiny_trainer(max_steps=1, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(learner, EpisodicDataModule(tasks, meta_batch_size=2, val_episodes=0, test_episodes=0))
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def image_ckpt(tmp_path_factory) -> Path:
    learner = MAML(Conv4(out_features=WAYS, hidden=8, image_size=SIZE), inner_lr=0.1, eval_inner_steps=2)
    return fit_and_save(learner, TinyImages(), tmp_path_factory.mktemp("image") / "maml.ckpt")


@pytest.fixture(scope="module")
def sine_ckpt(tmp_path_factory) -> Path:
    learner = MAML(MLP(1, 1, hidden=[16, 16]), inner_lr=0.01, eval_inner_steps=3)
    return fit_and_save(learner, SinusoidTasks(shots=5, queries=5), tmp_path_factory.mktemp("sine") / "sine.ckpt")


def save_image(path: Path, seed: int, size: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


def make_task(root: Path, classes=("alpha", "beta", "gamma"), shots: int = 2, queries: int = 4) -> tuple[Path, Path]:
    """``root/support/<class>/<i>.png`` and ``root/query/q<i>.png``, random grayscale images of another size than
    the learner's (the preprocessing resizes them)."""
    for c, name in enumerate(classes):
        for i in range(shots):
            save_image(root / "support" / name / f"{i}.png", seed=10 * c + i)
    for i in range(queries):
        save_image(root / "query" / f"q{i}.png", seed=100 + i)
    return root / "support", root / "query"


def adapt(*args: str) -> list[str]:
    return ["adapt", *map(str, args)]


def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    """``cli_main(argv)`` in this process: ``(exit status, stdout, stderr)``."""
    capsys.readouterr()  # what the test printed before (e.g. training)
    try:
        cli_main(argv)
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    out = capsys.readouterr()
    return status, out.out, out.err


def assert_one_line_error(status: int, err: str, *fragments: str, expected: int = 2) -> None:
    assert status == expected, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("lightning-meta adapt: error: ")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def python_predictions(ckpt: Path, support: Path, query: Path, steps=None):
    learner = MetaLearner.load_from_checkpoint(ckpt)
    prep = learner.task_info["preprocessing"]
    x, names, _ = read_class_folders(support, prep)
    query_x, files = read_image_folder(query, prep)
    adapted = learner.adapt(x, names, steps=steps)
    return adapted.classes, [f.name for f in files], adapted.predict_proba(query_x), adapted.predict(query_x)


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def assert_csv_equals_python(rows, classes, files, probabilities, predicted) -> None:
    assert [r["file"] for r in rows] == files
    assert [r["prediction"] for r in rows] == predicted
    assert list(rows[0]) == ["file", "prediction", *(f"score_{c}" for c in classes)]
    got = torch.tensor([[float(r[f"score_{c}"]) for c in classes] for r in rows])
    torch.testing.assert_close(got, probabilities.float(), atol=1e-5, rtol=0)


def run_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "lightning_meta", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


# --------------------------------------------------------------- classification
def test_console_adapt_writes_the_csv_python_adapt_gives(image_ckpt, tmp_path):
    support, query = make_task(tmp_path)
    out = tmp_path / "predictions.csv"
    proc = run_process(
        *adapt("--ckpt_path", image_ckpt, "--support", support, "--query", query, "--output", out), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"wrote 4 predictions to {out}" in proc.stdout
    assert_csv_equals_python(read_csv(out.read_text()), *python_predictions(image_ckpt, support, query))


def test_adapt_prints_the_csv_with_steps(image_ckpt, tmp_path, capsys):
    support, query = make_task(tmp_path)
    status, out, err = run_main(
        capsys, adapt("--ckpt_path", image_ckpt, "--support", support, "--query", query, "--steps", 5)
    )
    assert status == 0, err
    rows = read_csv(out)
    assert len(rows) == 4
    assert_csv_equals_python(rows, *python_predictions(image_ckpt, support, query, steps=5))
    zero = run_main(capsys, adapt("--ckpt_path", image_ckpt, "--support", support, "--query", query, "--steps", 0))
    assert zero[0] == 0 and zero[1] != out  # the steps reach the inner loop


def test_a_single_query_image(image_ckpt, tmp_path, capsys):
    support, query = make_task(tmp_path)
    status, out, err = run_main(
        capsys, adapt("--ckpt_path", image_ckpt, "--support", support, "--query", query / "q2.png")
    )
    assert status == 0, err
    assert [r["file"] for r in read_csv(out)] == ["q2.png"]


def test_omniglot_checkpoint_on_omniglot_character_folders(omniglot, tmp_path, capsys):
    """A MAML trained (1 step) on OmniglotTasks, adapted to 5 characters of images_evaluation.zip unpacked as PNG
    class folders (105x105, dark ink on white: resized and inverted by the recorded preprocessing)."""
    tasks = OmniglotTasks(str(omniglot), ways=5, shots=1, queries=1)
    ckpt = fit_and_save(MAML(Conv4(out_features=5, hidden=8), inner_lr=0.4), tasks, tmp_path / "omniglot.ckpt")
    assert torch.load(ckpt, weights_only=True)["lightning_meta"]["task"]["preprocessing"] == {
        "image_size": 28,
        "channels": 1,
        "invert": True,
        "mean": None,
        "std": None,
    }
    archive = omniglot / "images_evaluation.zip"
    if not archive.exists():
        pytest.skip(f"{archive} not found (an unpacked copy only)")
    with zipfile.ZipFile(archive) as zf:
        pngs = sorted(n for n in zf.namelist() if n.endswith(".png"))
        characters = sorted({str(Path(n).parent) for n in pngs})[:5]
        for c, character in enumerate(characters):
            drawings = [n for n in pngs if str(Path(n).parent) == character][:3]
            for i, name in enumerate(drawings):  # 2 support drawings per character, the third a query
                target = (
                    tmp_path / ("query" if i == 2 else f"support/char{c}") / (f"char{c}.png" if i == 2 else f"{i}.png")
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(name))
    support, query = tmp_path / "support", tmp_path / "query"
    status, out, err = run_main(capsys, adapt("--ckpt_path", ckpt, "--support", support, "--query", query))
    assert status == 0, err
    assert_csv_equals_python(read_csv(out), *python_predictions(ckpt, support, query))


# ------------------------------------------------------------------- regression
def test_regression_csv_equals_python_adapt(sine_ckpt, tmp_path, capsys):
    x = torch.linspace(-4, 4, 6)
    (tmp_path / "support.csv").write_text("x,y\n" + "".join(f"{v},{2 * math.sin(v)}\n" for v in x.tolist()))
    (tmp_path / "query.csv").write_text("x\n0.25\n-1.5\n3\n")
    status, out, err = run_main(
        capsys,
        adapt(
            "--ckpt_path",
            sine_ckpt,
            "--support",
            tmp_path / "support.csv",
            "--query",
            tmp_path / "query.csv",
            "--steps",
            4,
        ),
    )
    assert status == 0, err
    rows = read_csv(out)
    assert list(rows[0]) == ["x", "y"] and [float(r["x"]) for r in rows] == [0.25, -1.5, 3.0]
    learner = MetaLearner.load_from_checkpoint(sine_ckpt)
    support_x, support_y, _, _ = read_xy_csv(tmp_path / "support.csv")
    query_x, _ = read_x_csv(tmp_path / "query.csv")
    expected = learner.adapt(support_x, support_y, steps=4)(query_x)
    torch.testing.assert_close(torch.tensor([[float(r["y"])] for r in rows]), expected, atol=1e-5, rtol=0)


def test_regression_bad_inputs(sine_ckpt, tmp_path, capsys):
    (tmp_path / "query.csv").write_text("x\n0.5\n")
    (tmp_path / "bad.csv").write_text("x,y\n1.0,oops\n")
    status, _, err = run_main(
        capsys, adapt("--ckpt_path", sine_ckpt, "--support", tmp_path / "bad.csv", "--query", tmp_path / "query.csv")
    )
    assert_one_line_error(status, err, "bad.csv, line 2, column 'y'", "'oops' is not a number")
    (tmp_path / "wide.csv").write_text("x0,x1,y\n1,2,3\n")
    (tmp_path / "wide_q.csv").write_text("x0,x1\n1,2\n")
    status, _, err = run_main(
        capsys, adapt("--ckpt_path", sine_ckpt, "--support", tmp_path / "wide.csv", "--query", tmp_path / "wide_q.csv")
    )
    assert_one_line_error(status, err, "the learner failed adapting", expected=1)  # a 1-input MLP, 2 inputs
    status, _, err = run_main(
        capsys, adapt("--ckpt_path", sine_ckpt, "--support", tmp_path, "--query", tmp_path / "query.csv")
    )
    assert_one_line_error(status, err, "this learner does regression", "CSV file of x,y rows")


# ------------------------------------------------------------------- bad inputs
def test_an_empty_class_folder_is_named(image_ckpt, tmp_path, capsys):
    support, query = make_task(tmp_path)
    (support / "delta").mkdir()
    status, _, err = run_main(capsys, adapt("--ckpt_path", image_ckpt, "--support", support, "--query", query))
    assert_one_line_error(status, err, f"the class folder '{support / 'delta'}' is empty")


def test_fewer_than_two_class_folders(image_ckpt, tmp_path, capsys):
    support, query = make_task(tmp_path, classes=("alpha",))
    status, _, err = run_main(capsys, adapt("--ckpt_path", image_ckpt, "--support", support, "--query", query))
    assert_one_line_error(status, err, "needs at least 2 class folders", "found 1: 'alpha'")


def test_an_unreadable_image_is_named_in_a_fresh_process(image_ckpt, tmp_path):
    support, query = make_task(tmp_path)
    broken = query / "q9.png"
    broken.write_bytes(b"not a png at all")
    proc = run_process(*adapt("--ckpt_path", image_ckpt, "--support", support, "--query", query), cwd=tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr, f"cannot read the image '{broken}'")
    assert proc.stdout == ""


def test_an_unreadable_support_image_is_named(image_ckpt, tmp_path, capsys):
    support, query = make_task(tmp_path)
    broken = support / "beta" / "9.png"
    broken.write_bytes(b"")
    status, _, err = run_main(capsys, adapt("--ckpt_path", image_ckpt, "--support", support, "--query", query))
    assert_one_line_error(status, err, f"cannot read the image '{broken}'")


def test_not_a_pytorch_file(tmp_path, capsys):
    support, query = make_task(tmp_path)
    garbage = tmp_path / "model.ckpt"
    garbage.write_bytes(bytes(range(256)) * 4)
    status, _, err = run_main(capsys, adapt("--ckpt_path", garbage, "--support", support, "--query", query))
    assert_one_line_error(status, err, f"{garbage} is not a readable PyTorch checkpoint")
    status, _, err = run_main(
        capsys, adapt("--ckpt_path", tmp_path / "missing.ckpt", "--support", support, "--query", query)
    )
    assert_one_line_error(status, err, "missing.ckpt: no such file")


def test_not_a_lightning_meta_checkpoint(tmp_path, capsys):
    support, query = make_task(tmp_path)
    tensor_file, other = tmp_path / "tensor.pt", tmp_path / "other.ckpt"
    torch.save(torch.zeros(3), tensor_file)
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 0.1}}, other)
    status, _, err = run_main(capsys, adapt("--ckpt_path", tensor_file, "--support", support, "--query", query))
    assert_one_line_error(status, err, "not a Lightning checkpoint")
    status, _, err = run_main(capsys, adapt("--ckpt_path", other, "--support", support, "--query", query))
    assert_one_line_error(status, err, "is not a lightning-meta learner's checkpoint")
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "torch.nn.Linear"}}, other)
    status, _, err = run_main(capsys, adapt("--ckpt_path", other, "--support", support, "--query", query))
    assert_one_line_error(status, err, "is not a lightning-meta learner's checkpoint (a checkpoint of torch.nn.Linear)")


def edited_checkpoint(ckpt: Path, path: Path, preprocessing) -> Path:
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["lightning_meta"]["task"]["preprocessing"] = preprocessing
    torch.save(checkpoint, path)
    return path


def test_a_checkpoint_without_preprocessing_says_what_is_missing(image_ckpt, tmp_path, capsys):
    support, query = make_task(tmp_path)
    ckpt = edited_checkpoint(image_ckpt, tmp_path / "no_prep.ckpt", None)
    status, _, err = run_main(capsys, adapt("--ckpt_path", ckpt, "--support", support, "--query", query))
    assert_one_line_error(
        status, err, "records no image preprocessing", "task_info['preprocessing'] is missing", "TinyImages"
    )


def test_images_the_learner_cannot_take(image_ckpt, tmp_path, capsys):
    support, query = make_task(tmp_path)
    rgb = edited_checkpoint(image_ckpt, tmp_path / "rgb.ckpt", {"image_size": SIZE, "channels": 3})
    status, _, err = run_main(capsys, adapt("--ckpt_path", rgb, "--support", support, "--query", query))
    assert_one_line_error(status, err, "the learner failed adapting to the support set", expected=1)
    bad = edited_checkpoint(image_ckpt, tmp_path / "bad.ckpt", {"image_size": SIZE, "channels": 2})
    status, _, err = run_main(capsys, adapt("--ckpt_path", bad, "--support", support, "--query", query))
    assert_one_line_error(status, err, "recorded image preprocessing", "channels must be 1")


def test_more_classes_than_the_head_takes(image_ckpt, tmp_path, capsys):
    support, query = make_task(tmp_path, classes=("a", "b", "c", "d"))
    status, _, err = run_main(capsys, adapt("--ckpt_path", image_ckpt, "--support", support, "--query", query))
    assert_one_line_error(status, err, "the support set has 4 classes", "outputs (3,) scores", expected=1)


def test_missing_paths_and_usage(image_ckpt, tmp_path, capsys):
    status, _, err = run_main(
        capsys, adapt("--ckpt_path", image_ckpt, "--support", tmp_path / "nope", "--query", tmp_path)
    )
    assert_one_line_error(status, err, "--support", "nope: no such file or folder")
    support, _ = make_task(tmp_path)
    status, _, err = run_main(
        capsys, adapt("--ckpt_path", image_ckpt, "--support", support, "--query", tmp_path / "support")
    )
    assert_one_line_error(status, err, "holds no images", "put the query images directly in it")
    status, _, err = run_main(capsys, adapt("--ckpt_path", image_ckpt, "--support", support))
    assert status == 2 and "--query" in err and "usage: lightning-meta adapt" in err
    status, out, _ = run_main(capsys, adapt("--help"))
    assert status == 0 and "score_<class>" in out and "x0,x1" in out
