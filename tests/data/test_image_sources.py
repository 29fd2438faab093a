"""miniImageNet, tieredImageNet, CIFAR-FS and FC100 task sources on small synthetic copies in every accepted layout.

The copies (``lightning_meta.data.synthetic``) carry the real class names of the shipped splits, 3 random images
per class; the split sizes asserted are those of the published splits.
"""

from __future__ import annotations

import os
import pickle
import tarfile
import time

import numpy as np
import pytest
import torch
from conftest import run_script
from PIL import Image

from lightning_meta import MAML, CIFARFSTasks, EpisodicDataModule, FC100Tasks, MiniImageNetTasks, TieredImageNetTasks
from lightning_meta._lightning import pl
from lightning_meta.data import synthetic
from lightning_meta.data.augment import Augmentation, apply
from lightning_meta.data.miniimagenet import miniimagenet_split
from lightning_meta.data.tieredimagenet import tieredimagenet_split
from lightning_meta.data.workers import fork_deadlock_fixed
from lightning_meta.models import Conv4

SPLITS = ("train", "val", "test")
PER_CLASS = 3
CASES = {  # id: (source class, writer, layout, published split sizes)
    "mini-pickle": (MiniImageNetTasks, synthetic.synthetic_miniimagenet, "pickle", (64, 16, 20)),
    "mini-csv": (MiniImageNetTasks, synthetic.synthetic_miniimagenet, "csv", (64, 16, 20)),
    "mini-folders": (MiniImageNetTasks, synthetic.synthetic_miniimagenet, "folders", (64, 16, 20)),
    "mini-flat": (MiniImageNetTasks, synthetic.synthetic_miniimagenet, "flat", (64, 16, 20)),
    "tiered-png": (TieredImageNetTasks, synthetic.synthetic_tieredimagenet, "png", (351, 97, 160)),
    "tiered-npz": (TieredImageNetTasks, synthetic.synthetic_tieredimagenet, "npz", (351, 97, 160)),
    "tiered-folders": (TieredImageNetTasks, synthetic.synthetic_tieredimagenet, "folders", (351, 97, 160)),
    "cifarfs-archive": (CIFARFSTasks, synthetic.synthetic_cifar100, "archive", (64, 16, 20)),
    "cifarfs-folder": (CIFARFSTasks, synthetic.synthetic_cifar100, "folder", (64, 16, 20)),
    "fc100-archive": (FC100Tasks, synthetic.synthetic_cifar100, "archive", (60, 20, 20)),
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """``{case id: root}``, written on first use (the CIFAR archive is shared by CIFAR-FS and FC100)."""
    base, made = tmp_path_factory.mktemp("image_sources"), {}

    def get(case: str):
        _, writer, layout, _ = CASES[case]
        key = f"{writer.__name__}-{layout}"
        if key not in made:
            made[key] = writer(base / key, layout=layout, images_per_class=PER_CLASS)
        return made[key]

    return get


def make(case: str, roots, cache, **kwargs):
    cls = CASES[case][0]
    kwargs = {"ways": 5, "shots": 1, "queries": 2, "cache_dir": str(cache), **kwargs}
    tasks = cls(str(roots(case)), **kwargs)
    tasks.setup()
    return tasks


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("image_cache")


def expected_first_image(case: str, root, class_name: str) -> np.ndarray:
    """The first image of ``class_name`` as the layout stores it, decoded independently: ``[H, W, 3]`` uint8."""
    layout = CASES[case][2]
    if case.startswith("mini"):
        split = next(s for s in SPLITS if class_name in miniimagenet_split(s))
        if layout == "pickle":
            with open(root / f"mini-imagenet-cache-{split}.pkl", "rb") as f:
                data = pickle.load(f)
            return data["image_data"][data["class_dict"][class_name][0]]
        path = {"csv": root / "images" / f"{class_name}00000001.jpg",
                "folders": root / split / class_name / f"{class_name}_00000.png",
                "flat": root / class_name / f"{class_name}_00000.png"}[layout]
        return np.asarray(Image.open(path).convert("RGB"))
    if case.startswith("tiered"):
        split = next(s for s in SPLITS if class_name in tieredimagenet_split(s))
        if layout == "folders":
            return np.asarray(Image.open(root / split / class_name / f"{class_name}_00000.png").convert("RGB"))
        with open(root / f"{split}_labels.pkl", "rb") as f:
            labels = pickle.load(f)
        row = int(np.argmax(labels["label_specific"] == labels["label_specific_str"].index(class_name)))
        if layout == "npz":
            return np.load(root / f"{split}_images.npz")["images"][row]
        with open(root / f"{split}_images_png.pkl", "rb") as f:
            import io

            return np.asarray(Image.open(io.BytesIO(pickle.load(f)[row].tobytes())).convert("RGB"))
    if layout == "archive":
        with tarfile.open(root / "cifar-100-python.tar.gz") as archive:
            parts = {m: pickle.load(archive.extractfile(f"cifar-100-python/{m}")) for m in ("train", "meta")}
    else:
        parts = {m: pickle.loads((root / "cifar-100-python" / m).read_bytes()) for m in ("train", "meta")}
    fine = parts["meta"]["fine_label_names"].index(class_name.split("/")[1])
    row = parts["train"]["fine_labels"].index(fine)
    return parts["train"]["data"][row].reshape(3, 32, 32).transpose(1, 2, 0)


@pytest.mark.parametrize("case", list(CASES))
def test_split_sizes_shipped_classes_and_pixels(case, roots, cache):
    tasks = make(case, roots, cache)
    sizes = CASES[case][3]
    assert tuple(tasks.num_classes(s) for s in SPLITS) == sizes
    names = {s: {tasks.class_name(c) for c in tasks.split_labels(s)} for s in SPLITS}
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
    if case.startswith("mini"):
        assert names == {s: set(miniimagenet_split(s)) for s in SPLITS}
    elif case.startswith("tiered"):
        supers = [len({tasks.super_category(c) for c in tasks.split_labels(s)}) for s in SPLITS]
        assert supers == [20, 6, 8] and sum(sizes) == 608
    elif case.startswith("fc100"):
        assert [len({n.split("/")[0] for n in names[s]}) for s in SPLITS] == [12, 4, 4]
    assert int(tasks._counts.min()) == int(tasks._counts.max()) == PER_CLASS
    size = 32 if "cifar" in case or "fc100" in case else 84
    assert tuple(tasks._inputs.shape) == (sum(sizes) * PER_CLASS, 3, size, size)
    for label in (0, len(tasks.class_names) - 1):  # pixels of the cache == PIL's (or the array's) decoding
        name = tasks.class_name(label)
        stored = tasks._inputs[int(tasks._examples[label, 0])].permute(1, 2, 0).numpy()
        assert np.array_equal(stored, expected_first_image(case, roots(case), name))


def test_labels_are_remapped_per_task(roots, cache):
    tasks = make("mini-pickle", roots, cache, normalize=False)
    lookup = {tasks._inputs[i].numpy().tobytes(): int(c) for c, row in enumerate(tasks._examples) for i in row}
    orders = set()
    for seed in range(12):
        batch = tasks.sample("val", [torch.Generator().manual_seed(seed)])
        assert sorted(batch.support_y[0].tolist()) == list(range(5))
        assert sorted(batch.query_y[0].tolist()) == sorted(list(range(5)) * 2)

        def classes(x):
            return [lookup[(im * 255).round().to(torch.uint8).numpy().tobytes()] for im in x]

        support, query = classes(batch.support_x[0]), classes(batch.query_x[0])
        of_label = {int(y): c for y, c in zip(batch.support_y[0], support)}
        assert all(of_label[int(y)] == c for y, c in zip(batch.query_y[0], query))  # same class, same label
        assert set(of_label.values()) <= set(tasks.split_labels("val"))
        orders.add(tuple(np.argsort([of_label[i] for i in range(5)]).tolist()))
    assert len(orders) > 1  # label 0 is not always the smallest class id: a random order per task


def test_normalization_constants(roots, cache):
    g = torch.Generator
    raw = make("cifarfs-archive", roots, cache, normalize=False).sample("val", [g().manual_seed(3)]).support_x
    norm = make("cifarfs-archive", roots, cache).sample("val", [g().manual_seed(3)]).support_x
    mean = torch.tensor([129.37731888, 124.10583864, 112.47758569]).view(3, 1, 1) / 255
    std = torch.tensor([68.20947949, 65.43124043, 70.45866994]).view(3, 1, 1) / 255
    torch.testing.assert_close(norm, (raw - mean) / std)
    assert MiniImageNetTasks.mean[0] == pytest.approx(0.47214, abs=1e-5)


def test_augmentation_seeded_train_only(roots, cache):
    plain = make("mini-pickle", roots, cache, normalize=False)
    aug = make("mini-pickle", roots, cache, normalize=False, augment=True)

    def draw(tasks, split, seed=5):
        return tasks.sample(split, [torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)])

    a, b, p = draw(aug, "train"), draw(aug, "train"), draw(plain, "train")
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)  # a function of the seed
    assert torch.equal(a.support_y, p.support_y) and torch.equal(a.query_y, p.query_y)  # same tasks
    assert not torch.allclose(a.support_x, p.support_x)
    assert float(a.query_x.min()) >= 0.0 and float(a.query_x.max()) <= 1.0
    assert not torch.equal(draw(aug, "train", 7).support_x, a.support_x)
    for split in ("val", "test"):  # evaluation is never augmented
        assert torch.equal(draw(aug, split).query_x, draw(plain, split).query_x)


def test_augmentation_ops_by_hand():
    x = torch.rand(2, 3, 6, 6)
    aug = Augmentation(padding=2)
    identity = torch.tensor([[2.0, 2.0, 0.0, 1.0, 1.0, 1.0]] * 2)  # centred crop, no flip, factors 1
    torch.testing.assert_close(apply(aug, x, identity), x)
    flipped = identity.clone()
    flipped[:, 2] = 1
    torch.testing.assert_close(apply(aug, x, flipped), x.flip(-1))
    shifted = identity.clone()
    shifted[:, :2] = 0  # window at the top-left corner of the padded image: two zero rows and columns
    out = apply(aug, x, shifted)
    assert float(out[:, :, :2].abs().sum()) == 0.0 and torch.equal(out[:, :, 2:, 2:], x[:, :, :4, :4])
    dark = identity.clone()
    dark[:, 3] = 0.5  # brightness 0.5
    torch.testing.assert_close(apply(aug, x, dark), x * 0.5)
    gray = identity.clone()
    gray[:, 5] = 0.0  # saturation 0: every channel is the luma
    luma = (x * torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(apply(aug, x, gray), luma.expand_as(x))


def test_cache_rebuilt_on_change_and_corruption(tmp_path):
    classes = {s: miniimagenet_split(s) for s in SPLITS}
    root = synthetic.synthetic_miniimagenet(tmp_path / "mini", "csv", images_per_class=PER_CLASS, classes=classes)
    cache = tmp_path / "cache"
    first = MiniImageNetTasks(str(root), ways=5, shots=1, queries=2, cache_dir=str(cache))
    first.setup()
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]
    # changed data: a new key, and the new pixels
    image = root / "images" / "n0153282900000001.jpg"
    new = np.full((84, 84, 3), 7, dtype=np.uint8)
    image.write_bytes(synthetic.png_bytes(new))
    os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = MiniImageNetTasks(str(root), ways=5, shots=1, queries=2, cache_dir=str(cache))
    second.setup()
    assert second.cache_file != first.cache_file
    label = second.class_names.index("n01532829")
    assert np.array_equal(second._inputs[int(second._examples[label, 0])].permute(1, 2, 0).numpy(), new)
    expected = second._inputs.clone()
    path = second.cache_file
    size = path.stat().st_size
    corruptions = {
        "truncated": lambda: os.truncate(path, size // 2),
        "garbled": lambda: path.write_bytes(path.read_bytes()[: size // 2] + b"\xff" * 4096
                                            + path.read_bytes()[size // 2 + 4096 :]),
        "bad json": lambda: path.with_suffix(".json").write_text("{not json"),
        "no json": lambda: path.with_suffix(".json").unlink(),
    }
    for name, corrupt in corruptions.items():
        corrupt()
        with pytest.warns(UserWarning, match="unusable.*rebuilding"):
            again = MiniImageNetTasks(str(root), ways=5, shots=1, queries=2, cache_dir=str(cache))
            again.setup()
        assert torch.equal(again._inputs, expected), name
        assert path.stat().st_size == size
    assert not [p for p in cache.iterdir() if ".tmp" in p.name]  # no temporary files left behind


def test_missing_and_partial_layouts_name_path_and_layout(tmp_path, roots, cache):
    empty = tmp_path / "empty"
    empty.mkdir()
    for cls in (MiniImageNetTasks, TieredImageNetTasks, CIFARFSTasks, FC100Tasks):
        with pytest.raises(FileNotFoundError, match=f"no accepted layout under root='{empty}'.*Expected layout"):
            cls(str(empty), cache_dir=str(cache)).setup()
    with pytest.raises(FileNotFoundError, match="not a directory"):
        MiniImageNetTasks(str(tmp_path / "nowhere")).setup()
    small = {"train": miniimagenet_split("train")[:5], "val": miniimagenet_split("val")[:5],
             "test": miniimagenet_split("test")[:5]}
    mini = synthetic.synthetic_miniimagenet(tmp_path / "pkl", "pickle", images_per_class=2, classes=small)
    with pytest.raises(ValueError, match="lacks 85 classes of its standard split"):
        MiniImageNetTasks(str(mini), cache_dir=str(cache)).setup()
    (mini / "mini-imagenet-cache-val.pkl").unlink()
    with pytest.raises(FileNotFoundError, match=r"mini-imagenet-cache-val.pkl missing.*Expected layout: \(a\)"):
        MiniImageNetTasks(str(mini), cache_dir=str(cache)).setup()
    csv = synthetic.synthetic_miniimagenet(tmp_path / "csv", "csv", images_per_class=1, classes=small)
    (csv / "test.csv").unlink()
    with pytest.raises(FileNotFoundError, match="test.csv missing for the CSV layout"):
        MiniImageNetTasks(str(csv), cache_dir=str(cache)).setup()
    folders = synthetic.synthetic_miniimagenet(tmp_path / "dirs", "folders", images_per_class=1, classes=small)
    os.rename(folders / "train" / small["train"][0], folders / "val" / small["train"][0])
    with pytest.raises(ValueError, match="is in the 'val' part .* puts it in 'train'"):
        MiniImageNetTasks(str(folders), cache_dir=str(cache)).setup()
    for child in (folders / "test").iterdir():
        os.rename(child, folders / child.name)
    (folders / "test").rmdir()
    with pytest.raises(FileNotFoundError, match="test missing .*needs train/, val/ and test/"):
        MiniImageNetTasks(str(folders), cache_dir=str(cache)).setup()
    tiered = tmp_path / "tiered"
    tiered.mkdir()
    (tiered / "train_labels.pkl").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="labels pickles without"):
        TieredImageNetTasks(str(tiered), cache_dir=str(cache)).setup()
    (tiered / "train_images_png.pkl").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="val_images_png.pkl.*missing for the png cache layout"):
        TieredImageNetTasks(str(tiered), cache_dir=str(cache)).setup()
    broken = tmp_path / "cifar"
    broken.mkdir()
    archive = (roots("cifarfs-archive") / "cifar-100-python.tar.gz").read_bytes()
    (broken / "cifar-100-python.tar.gz").write_bytes(archive[: len(archive) // 2])
    with pytest.raises(ValueError, match="is not a complete CIFAR-100 python archive.*Expected layout"):
        CIFARFSTasks(str(broken), cache_dir=str(cache)).setup()


def test_workers_share_the_cache_and_see_the_same_episodes(roots, cache):
    tasks = make("mini-pickle", roots, cache, augment=True)
    assert len(pickle.dumps(tasks)) < 100_000 < tasks._inputs.numel()  # workers get the path, not the array
    clone = pickle.loads(pickle.dumps(tasks))
    g = [torch.Generator().manual_seed(1)]
    assert torch.equal(clone.sample("train", g).support_x, tasks.sample("train", [torch.Generator().manual_seed(1)])
                       .support_x)
    runs = {}
    for workers in (0, 2):
        dm = EpisodicDataModule(tasks, meta_batch_size=2, train_episodes_per_epoch=4, val_episodes=6,
                                num_workers=workers, seed=3)
        dm.setup("fit")
        runs[workers] = list(dm.val_dataloader()) + list(dm.train_dataloader())
    assert len(runs[0]) == len(runs[2]) == 5  # 3 validation + 2 (augmented) training meta-batches
    for a, b in zip(runs[0], runs[2]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_conv4_takes_rgb_84_and_32():
    assert Conv4(in_channels=3, image_size=84)(torch.zeros(2, 3, 84, 84)).shape == (2, 5)
    assert Conv4(in_channels=3, image_size=84, embed_only=True).feature_dim == 1600
    assert Conv4(in_channels=3, image_size=32, embed_only=True)(torch.zeros(2, 3, 32, 32)).shape == (2, 256)


@pytest.mark.parametrize("case", ["mini-csv", "tiered-npz", "cifarfs-archive", "fc100-archive"])
def test_maml_fit_two_steps(case, roots, cache):
    tasks = make(case, roots, cache, augment=True)
    size = tasks.image_size
    model = MAML(Conv4(in_channels=3, hidden=8, image_size=size), inner_lr=0.01, inner_steps=1)
    before = [p.detach().clone() for p in model.parameters()]
    dm = EpisodicDataModule(tasks, meta_batch_size=2, train_episodes_per_epoch=4, val_episodes=2)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=1, val_check_interval=2)
    trainer.fit(model, dm)
    assert trainer.global_step == 2
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    accuracy = float(trainer.callback_metrics["val/acc"])
    assert 0.0 <= accuracy <= 1.0 and torch.isfinite(trainer.callback_metrics["train/loss"])


def test_eval_episodes_identical_across_ddp_world_sizes(tmp_path):
    """A real 2-rank ``ddp`` launch on CPU (gloo), 2 workers per rank (``"auto"``: forkserver on this CPython),
    validates and tests over a synthetic miniImageNet: the ranks' shards are disjoint, their union is the whole
    fixed set (odd sizes, so the shards differ), and every episode is bitwise the one a single process (world
    size 1, no workers) draws."""
    from ddp_image_episodes import EVAL, datamodule, episodes

    root = synthetic.synthetic_miniimagenet(tmp_path / "mini", "pickle", images_per_class=PER_CLASS, image_size=32)
    cache = tmp_path / "cache"
    single = datamodule(str(root), str(cache))
    single.setup()  # writes the cache the ranks then read
    expected = {split: episodes(list(loader.sampler), list(loader))
                for split, loader in (("val", single.val_dataloader()), ("test", single.test_dataloader()))}
    out = tmp_path / "out"
    out.mkdir()
    run_script("ddp_image_episodes.py", str(out), str(root), str(cache), "2", timeout=240)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for rank, saved in enumerate(ranks):
        assert (saved["world_size"], saved["rank"], saved["backend"]) == (2, rank, "gloo")
        method = "fork" if fork_deadlock_fixed() else "forkserver"  # worker_start_method="auto" in a DDP rank
        assert saved["loaders"] == [{"num_workers": 2, "start_method": method}] * 2
    for split in ("val", "test"):
        shards = [saved[split] for saved in ranks]
        assert len(expected[split]) == EVAL[f"{split}_episodes"]
        assert not shards[0].keys() & shards[1].keys() and len(shards[0]) == len(shards[1]) + 1
        assert sorted(shards[0].keys() | shards[1].keys()) == sorted(expected[split])
        for shard in shards:
            for index, tensors in shard.items():
                for got, want in zip(tensors, expected[split][index]):
                    assert got.dtype == want.dtype and torch.equal(got, want), (split, index)
