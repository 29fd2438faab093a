"""Every bad input we know of, with the error it gets: raised early, of the right type, naming the bad value.

The table in ``docs/reliability.md`` is generated from ``CASES`` (``python tests/integration/test_bad_inputs.py``
rewrites it) and a test keeps the two in step.
"""

from __future__ import annotations

import re
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, for `python tests/integration/test_bad_inputs.py`
from conftest import REPO, index_dataset, mixed_sizes, tiny_trainer  # noqa: E402

from lightning_meta import (  # noqa: E402
    MAML,
    BlackBoxAdaptation,
    ClassificationTasks,
    EpisodicDataModule,
    OmniglotTasks,
    SinusoidTasks,
    TaskBatch,
)
from lightning_meta.cli import main as cli_main  # noqa: E402
from lightning_meta.data.omniglot import load_omniglot, load_omniglot_cached  # noqa: E402
from lightning_meta.models import MLP, SNAIL, Conv4, ResNet12  # noqa: E402

DOC = REPO / "docs" / "reliability.md"
START, END = "<!-- bad-inputs:start -->", "<!-- bad-inputs:end -->"


@dataclass
class Case:
    what: str  # the bad input, as a user would write it
    when: str  # construction, setup or first batch
    call: Callable[[Path], object]
    error: type[Exception]
    names: tuple[str, ...]  # substrings the message must contain: the bad value and what would be valid


def first_batch(model: pl.LightningModule, dm: EpisodicDataModule) -> None:
    trainer = tiny_trainer(fast_dev_run=1, enable_checkpointing=True)
    trainer.fit(model, dm)


def images(classes: int = 30, per_class: int = 2) -> ClassificationTasks:
    x = torch.rand(classes * per_class, 1, 28, 28)
    return ClassificationTasks(TensorDataset(x, torch.arange(classes * per_class) % classes), ways=5, shots=1,
                               queries=1, split_fractions=(0.6, 0.2, 0.2))


def sinusoids(**kwargs) -> EpisodicDataModule:
    return EpisodicDataModule(SinusoidTasks(shots=5, queries=5), meta_batch_size=2, val_episodes=0, **kwargs)


def batch_step(batch: TaskBatch) -> None:
    MAML(MLP(), inner_lr=0.01).training_step(batch, 0)


def not_a_zip(root: Path) -> None:
    (root / "images_background.zip").write_text("<html>rate limited</html>")
    (root / "images_evaluation.zip").write_text("<html>rate limited</html>")
    OmniglotTasks(str(root), cache_dir=str(root / "cache")).setup()


def garbage(root: Path) -> Path:
    """A file of garbage bytes where a checkpoint should be (a wrong file, or a copy that is not a checkpoint)."""
    path = root / "model.ckpt"
    path.write_bytes(bytes(range(256)) * 4)
    return path


def fit_from(path: Path) -> None:
    trainer = tiny_trainer(max_steps=1)
    trainer.fit(MAML(MLP(), inner_lr=0.01), sinusoids(), ckpt_path=str(path))


def cli_fit_from(path: Path) -> None:
    cli_main(["fit", "--config", str(REPO / "examples" / "configs" / "sinusoid_maml.yaml"), "--trainer.logger=false",
              "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false", f"--ckpt_path={path}"])




x3, y3 = torch.zeros(2, 5, 1), torch.zeros(2, 5, 1)
CASES = [
    Case("`MAML(inner_lr=float('nan'))`", "construction", lambda _: MAML(MLP(), inner_lr=float("nan")), ValueError,
         ("inner_lr", "finite", "nan")),
    Case("`MAML(inner_lr=float('inf'))`", "construction", lambda _: MAML(MLP(), inner_lr=float("inf")), ValueError,
         ("inner_lr", "finite", "inf")),
    Case("`MAML(inner_lr=-0.1)`", "construction", lambda _: MAML(MLP(), inner_lr=-0.1), ValueError,
         ("inner_lr", "> 0", "-0.1")),
    Case("`MAML(optimizer=torch.optim.Adam(params))` (an optimizer, not a factory)", "construction",
         lambda _: MAML(MLP(), optimizer=torch.optim.Adam(MLP().parameters())), ValueError,
         ("optimizer", "callable", "functools.partial(torch.optim.Adam", "Adam")),
    Case("`MAML(optimizer=lambda params: None)` (returns no optimizer)", "start of fit",
         lambda _: first_batch(MAML(MLP(), optimizer=lambda params: None), sinusoids()), TypeError,
         ("optimizer", "torch.optim.Optimizer", "NoneType")),
    Case("`MAML(inner_loss_scale=0)`", "construction", lambda _: MAML(MLP(), inner_loss_scale=0), ValueError,
         ("inner_loss_scale", "> 0")),
    Case("`MAML(inner_steps=0)`", "construction", lambda _: MAML(MLP(), inner_steps=0), ValueError,
         ("inner_steps", ">= 1", "0")),
    Case("`MAML(inner_steps=True)`", "construction", lambda _: MAML(MLP(), inner_steps=True), ValueError,
         ("inner_steps", "True")),
    Case("`MAML(eval_inner_steps=True)`", "construction", lambda _: MAML(MLP(), eval_inner_steps=True), ValueError,
         ("eval_inner_steps", "True")),
    Case("`MAML(meta_gradient='third_order')`", "construction",
         lambda _: MAML(MLP(), meta_gradient="third_order"), ValueError, ("meta_gradient", "third_order", "hvp")),
    Case("`MAML(meta_gradient='hvp', vectorize=True)`", "construction",
         lambda _: MAML(MLP(), meta_gradient="hvp", vectorize=True), ValueError, ("vectorize", "hvp")),
    Case("`MAML(Conv4(), batch_norm='none')`", "construction", lambda _: MAML(Conv4(), batch_norm="none"),
         ValueError, ("batch_norm='none'", "BatchNorm", "transductive")),
    Case("`MAML(MLP(), adapt='encoder.*')`", "construction", lambda _: MAML(MLP(), adapt="encoder.*"), ValueError,
         ("encoder.*", "matches no parameter", "body.0.weight")),
    Case("`BlackBoxAdaptation(MLP(out_features=8), aggregator='max')`", "construction",
         lambda _: BlackBoxAdaptation(MLP(out_features=8), feature_dim=8, aggregator="max"), ValueError,
         ("aggregator", "max", "attention")),
    Case("`BlackBoxAdaptation(..., encoder_tasks=0)`", "construction",
         lambda _: BlackBoxAdaptation(MLP(out_features=8), feature_dim=8, encoder_tasks=0), ValueError,
         ("encoder_tasks", "'auto', 'all'", "got 0")),
    Case("`BlackBoxAdaptation(..., predict_variance=False).predictive(batch)`", "first batch",
         lambda _: BlackBoxAdaptation(MLP(out_features=8), feature_dim=8).predictive(
             SinusoidTasks().sample("test", [torch.Generator()])), ValueError,
         ("predict_variance=True", "predict_variance=False")),
    Case("`BlackBoxAdaptation(..., hidden=30, heads=4)`", "construction",
         lambda _: BlackBoxAdaptation(MLP(out_features=8), feature_dim=8, hidden=30, heads=4), ValueError,
         ("hidden=30", "heads=4")),
    Case("`EpisodicDataModule(tasks=dataset)` (not a task source)", "construction",
         lambda _: EpisodicDataModule(index_dataset()), TypeError, ("TaskSource", "TensorDataset")),
    Case("`EpisodicDataModule(meta_batch_size=0)`", "construction",
         lambda _: EpisodicDataModule(SinusoidTasks(), meta_batch_size=0), ValueError, ("meta_batch_size", "0")),
    Case("`SinusoidTasks(amplitude=(5.0, 0.1))`", "construction", lambda _: SinusoidTasks(amplitude=(5.0, 0.1)),
         ValueError, ("amplitude", "low <= high")),
    Case("`ClassificationTasks(dataset, ways=30)` on 20 classes", "setup",
         lambda _: EpisodicDataModule(ClassificationTasks(index_dataset(), ways=30)).setup("fit"), ValueError,
         ("ways=30", "classes")),
    Case("`ClassificationTasks(dataset, shots=5, queries=15)` with 10 examples per class", "setup",
         lambda _: EpisodicDataModule(ClassificationTasks(index_dataset(), ways=2, shots=5)).setup("fit"),
         ValueError, ("shots + queries", "20", "exceeds")),
    Case("`OmniglotTasks(root)` where root has no Omniglot", "setup",
         lambda root: OmniglotTasks(str(root)).setup(), FileNotFoundError, ("images_background", "Expected layout")),
    Case("`images_background.zip` that is not a zip (an HTML error page)", "setup", not_a_zip, ValueError,
         ("images_background.zip", "not a zip", "Expected layout")),
    Case("`MAML(Conv4(out_features=3))` on 5-way tasks", "first batch",
         lambda _: first_batch(MAML(Conv4(out_features=3)), EpisodicDataModule(images(), meta_batch_size=2)),
         ValueError, ("(3,)", "5-way", "out_features=5")),
    Case("`MAML(MLP(out_features=3))` on sinusoids (targets `[K, 1]`)", "first batch",
         lambda _: first_batch(MAML(MLP(out_features=3), inner_lr=0.01), sinusoids()), ValueError,
         ("(3,)", "(1,)", "out_features=1")),
    Case("`BlackBoxAdaptation(ways=5)` trained on 10-way tasks", "first batch",
         lambda _: first_batch(BlackBoxAdaptation(MLP(in_features=3, out_features=8), feature_dim=8, ways=5),
                               EpisodicDataModule(ClassificationTasks(index_dataset(30), ways=10, queries=2,
                                                                     split_fractions=(0.34, 0.33, 0.33)),
                                                  meta_batch_size=2)),
         ValueError, ("ways=5", "10-way", "cannot answer 10 classes", "ways=10")),
    Case("`BlackBoxAdaptation(ways=5)` trained on 3-way tasks", "first batch",
         lambda _: first_batch(BlackBoxAdaptation(MLP(in_features=3, out_features=8), feature_dim=8, ways=5),
                               EpisodicDataModule(ClassificationTasks(index_dataset(), ways=3, queries=2,
                                                                     split_fractions=(0.5, 0.25, 0.25)),
                                                  meta_batch_size=2)),
         ValueError, ("ways=5", "3-way", "needs 5-way tasks", "2 of its 5 class scores", "ways=3")),
    Case("`Conv4(out_features=None)`", "construction", lambda _: Conv4(out_features=None), ValueError,
         ("out_features", "integer >= 1", "None")),
    Case("`Conv4(image_size=10)`", "construction", lambda _: Conv4(image_size=10), ValueError,
         ("image_size", ">= 16", "10")),
    Case("`MLP(hidden=(40, 0))`", "construction", lambda _: MLP(hidden=(40, 0)), ValueError,
         ("hidden[1]", ">= 1", "0")),
    Case("`MLP(activation='gelu')`", "construction", lambda _: MLP(activation="gelu"), ValueError,
         ("activation", "'relu'", "'gelu'")),
    Case("`ResNet12(out_features=None)`", "construction", lambda _: ResNet12(out_features=None), ValueError,
         ("out_features", "integer >= 1", "None")),
    Case("`SNAIL(in_features=0, sequence_length=6)`", "construction", lambda _: SNAIL(0, 6), ValueError,
         ("in_features", ">= 1", "0")),
    Case("`EpisodicDataModule(seed='abc')`", "construction",
         lambda _: EpisodicDataModule(SinusoidTasks(), seed="abc"), ValueError, ("seed", "integer", "'abc'")),
    Case("`ClassificationTasks(dataset)` over images of different sizes", "setup",
         lambda _: EpisodicDataModule(ClassificationTasks(mixed_sizes(), ways=2)).setup("fit"), ValueError,
         ("dataset[0] is (1, 28, 28)", "dataset[7] is (1, 32, 32)", "resizes every image to one size",
          "image_size")),
    Case("`MAML.load_from_checkpoint(path)`, path a file of garbage bytes", "load",
         lambda root: MAML.load_from_checkpoint(garbage(root), model=MLP()), ValueError,
         ("model.ckpt", "not a readable PyTorch checkpoint", "truncated")),
    Case("`trainer.fit(model, dm, ckpt_path=path)`, path a file of garbage bytes", "start of fit",
         lambda root: fit_from(garbage(root)), ValueError, ("model.ckpt", "not a readable PyTorch checkpoint")),
    Case("`lightning-meta fit --ckpt_path path`, path a file of garbage bytes", "argument parsing",
         lambda root: cli_fit_from(garbage(root)), ValueError, ("model.ckpt", "not a readable PyTorch checkpoint")),
    Case("`TaskBatch` whose tensors disagree on T", "first batch",
         lambda _: batch_step(TaskBatch(x3, y3, torch.zeros(3, 5, 1), torch.zeros(3, 5, 1))), ValueError,
         ("number of tasks", "support_x (2, 5, 1)", "query_x (3, 5, 1)")),
    Case("`TaskBatch` with 5 support inputs and 4 support targets", "first batch",
         lambda _: batch_step(TaskBatch(x3, y3[:, :4], x3, y3)), ValueError,
         ("examples per task", "support_y (2, 4, 1)")),
    Case("`TaskBatch` whose query inputs have another shape", "first batch",
         lambda _: batch_step(TaskBatch(x3, y3, torch.zeros(2, 5, 2), y3)), ValueError,
         ("input shape", "query_x (2, 5, 2)")),
]


def message_of(case: Case, root: Path) -> str:
    with pytest.raises(case.error) as info:
        case.call(root)
    return str(info.value)


@pytest.mark.parametrize("case", CASES, ids=[re.sub(r"\W+", "-", c.what).strip("-")[:60] for c in CASES])
def test_bad_input_gets_a_clear_early_error(case, tmp_path):
    message = message_of(case, tmp_path)
    for part in case.names:
        assert part in message, f"{part!r} not in: {message}"
    assert "IndexError" not in message and "size mismatch" not in message
    assert "weights_only" not in message and "stack expects" not in message


def render(root: Path) -> str:
    rows = ["| Bad input | Caught at | Error | Message |", "|---|---|---|---|"]
    for case in CASES:
        sub = root / re.sub(r"\W+", "_", case.what)[:40]
        sub.mkdir(parents=True, exist_ok=True)
        message = message_of(case, sub).replace(str(sub), "ROOT").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {case.what} | {case.when} | `{case.error.__name__}` | {message} |")
    return "\n".join(rows)


def test_docs_table_is_in_step_with_the_cases(tmp_path):
    text = DOC.read_text()
    table = text[text.index(START) + len(START) : text.index(END)].strip()
    assert table == render(tmp_path), "docs/reliability.md is stale: run `python tests/integration/test_bad_inputs.py`"


# ------------------------------------------------------------------ the Omniglot cache is derived data
def tiny_omniglot(root: Path, characters: int = 2) -> Path:
    """A minimal Omniglot tree (folders): one alphabet per set, ``characters`` characters of 20 drawings."""
    from PIL import Image

    for set_name in ("images_background", "images_evaluation"):
        for c in range(characters):
            folder = root / set_name / f"Alphabet_of_{set_name[7:]}" / f"character{c + 1:02d}"
            folder.mkdir(parents=True)
            for d in range(20):
                pixels = (torch.rand(8, 8) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels, mode="L").save(folder / f"{c:04d}_{d + 1:02d}.png")
    return root


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "other tensor"])
def test_a_corrupt_omniglot_cache_is_rebuilt_with_a_warning(tmp_path, damage):
    root, cache = tiny_omniglot(tmp_path / "omniglot"), tmp_path / "cache"
    good = load_omniglot_cached(root, 8, str(cache))
    (path,) = cache.glob("*.pt")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "zeroed":
        path.write_bytes(bytes(len(data)))
    else:
        torch.save({"images": torch.zeros(3, 3), "names": [], "background": torch.zeros(0)}, path)
    with pytest.warns(UserWarning, match=re.escape(str(path))):
        again = load_omniglot_cached(root, 8, str(cache))
    assert torch.equal(again["images"], good["images"]) and again["names"] == good["names"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt file is good again
        assert torch.equal(load_omniglot_cached(root, 8, str(cache))["images"], good["images"])


def test_a_zip_that_is_not_a_zip_names_the_file(tmp_path):
    tiny_omniglot(tmp_path)
    bad = tmp_path / "elsewhere"
    bad.mkdir()
    (bad / "images_background.zip").write_bytes(b"PK\x03\x04 truncated")
    (bad / "images_evaluation").symlink_to(tmp_path / "images_evaluation")
    with pytest.raises(ValueError, match="images_background.zip is not a zip archive"):
        load_omniglot(bad, 8)
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as z:  # a real zip of the same folder loads
        for png in sorted((tmp_path / "images_background").rglob("*.png")):
            z.write(png, png.relative_to(tmp_path).as_posix())
    (bad / "images_background.zip").write_bytes((tmp_path / "ok.zip").read_bytes())
    assert load_omniglot(bad, 8)["images"].shape == (4, 20, 8, 8)


if __name__ == "__main__":  # rewrite the table in docs/reliability.md
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        table = render(Path(tmp))
    text = DOC.read_text()
    DOC.write_text(text[: text.index(START) + len(START)] + "\n" + table + "\n" + text[text.index(END) :])
    print(f"wrote {len(CASES)} rows to {DOC}")
