import zipfile

import pytest
import torch

from lightning_meta import EpisodicDataModule
from lightning_meta.data import OmniglotTasks
from lightning_meta.data.omniglot import load_omniglot_cached, vinyals_split


@pytest.fixture(scope="module")
def vinyals(omniglot):
    tasks = OmniglotTasks(str(omniglot), ways=5, shots=1, queries=15)
    tasks.setup()
    return tasks


def test_counts_match_the_published_dataset(omniglot):
    raw = load_omniglot_cached(omniglot)
    assert raw["images"].shape == (1623, 20, 28, 28)  # 1,623 characters x 20 drawers = 32,460 images
    assert raw["images"].shape[0] * raw["images"].shape[1] == 32460
    assert int(raw["background"].sum()) == 964  # images_background: 964 characters, 19,280 images
    assert len({n.split("/")[0] for n in raw["names"]}) == 50


def test_vinyals_split_sizes_and_disjoint(vinyals):
    sizes = [vinyals.num_classes(s) for s in ("train", "val", "test")]
    assert sizes == [4112, 688, 1692]
    sets = [set(vinyals.split_labels(s)) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    shipped = vinyals_split("trainval")
    assert len(shipped) == 4800 and set(shipped) == set(vinyals_split("train")) | set(vinyals_split("val"))


def test_batch_shapes_ink_and_rotations(vinyals):
    dm = EpisodicDataModule(vinyals, meta_batch_size=32, train_episodes_per_epoch=64)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.support_x.shape == (32, 5, 1, 28, 28) and batch.query_x.shape == (32, 75, 1, 28, 28)
    assert batch.query_y.min() == 0 and batch.query_y.max() == 4
    assert batch.support_x.min() >= 0.0 and batch.support_x.max() <= 1.0
    ink = batch.support_x.mean().item()
    assert 0.03 < ink < 0.2  # strokes on an empty background
    # a rot090 class is the rot000 class turned by 90 degrees
    base = vinyals.class_names.index("Angelic/character01/rot000")
    turned = vinyals.class_names.index("Angelic/character01/rot090")
    x = vinyals._inputs
    assert torch.equal(torch.rot90(x[base * 20 : base * 20 + 20], 1, dims=(2, 3)), x[turned * 20 : turned * 20 + 20])


def test_alphabet_split(omniglot):
    tasks = OmniglotTasks(str(omniglot), ways=5, shots=1, queries=5, split="alphabets", rotations=False)
    tasks.setup()
    sizes = [tasks.num_classes(s) for s in ("train", "val", "test")]
    assert sum(sizes[:2]) == 964 and sizes[2] == 659


def _extract(zip_path, dest, alphabets):
    with zipfile.ZipFile(zip_path) as archive:
        for name in archive.namelist():
            if name.split("/")[1:2] and name.split("/")[1] in alphabets:
                archive.extract(name, dest)


def test_folder_layout_and_missing_root_errors(omniglot, tmp_path):
    with pytest.raises(FileNotFoundError, match="images_background.zip exists under root"):
        OmniglotTasks(str(tmp_path), cache_dir=str(tmp_path / "cache")).setup()
    _extract(omniglot / "images_background.zip", tmp_path, {"Greek", "Korean"})
    with pytest.raises(FileNotFoundError, match="images_evaluation"):
        OmniglotTasks(str(tmp_path), cache_dir=str(tmp_path / "cache")).setup()
    _extract(omniglot / "images_evaluation.zip", tmp_path, {"Kannada"})
    with pytest.raises(ValueError, match="lacks classes of the Vinyals split"):
        OmniglotTasks(str(tmp_path), cache_dir=str(tmp_path / "cache")).setup()
    tasks = OmniglotTasks(str(tmp_path), ways=5, shots=1, queries=5, split="alphabets",
                          cache_dir=str(tmp_path / "cache"))
    tasks.setup()
    full = load_omniglot_cached(omniglot)
    small = load_omniglot_cached(tmp_path, cache_dir=str(tmp_path / "cache"))
    i = full["names"].index("Greek/character01")
    assert torch.equal(small["images"][small["names"].index("Greek/character01")], full["images"][i])
    assert list((tmp_path / "cache").glob("omniglot-28px-*.pt"))  # cached for the next start


def test_incomplete_character_is_named(omniglot, tmp_path):
    _extract(omniglot / "images_background.zip", tmp_path, {"Greek"})
    _extract(omniglot / "images_evaluation.zip", tmp_path, {"Kannada"})
    next((tmp_path / "images_background" / "Greek" / "character01").glob("*.png")).unlink()
    with pytest.raises(ValueError, match="incomplete: every character needs 20 drawings"):
        OmniglotTasks(str(tmp_path), split="alphabets", cache_dir=str(tmp_path / "c")).setup()
