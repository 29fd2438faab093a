"""``ImagePreprocessing`` prepares a user's image file exactly as the task source prepared its training images: the
oracle is each source's own decoder (Omniglot's ``_decode``, the RGB sources' ``decode_image`` and normalization)."""

from __future__ import annotations

import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_meta import ImagePreprocessing, MiniImageNetTasks, OmniglotTasks, SinusoidTasks
from lightning_meta.data.image_cache import decode_image
from lightning_meta.data.image_tasks import ImageTasks
from lightning_meta.data.omniglot import _decode


def test_an_omniglot_png_is_prepared_as_omniglot_tasks_prepares_it(omniglot, tmp_path):
    with zipfile.ZipFile(omniglot / "images_background.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))[:3]
        raw = [archive.read(n) for n in names]
    prep = ImagePreprocessing.from_dict(OmniglotTasks(str(omniglot)).describe()["preprocessing"])
    for i, data in enumerate(raw):
        path = tmp_path / f"{i}.png"
        path.write_bytes(data)
        expected = _decode(data, 28).float().div(255.0)[None]  # the source's decoder, then uint8 -> [0, 1]
        assert torch.equal(prep(path), expected)
        assert float(expected.mean()) < 0.5, "inverted: ink is 1 on a 0 background"


def test_an_rgb_file_is_resized_and_normalized_as_the_rgb_sources_do(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    tasks = MiniImageNetTasks(str(tmp_path), image_size=32)  # nothing is read until setup
    prep = ImagePreprocessing.from_dict(tasks.describe()["preprocessing"])
    pixels = torch.from_numpy(decode_image(np.frombuffer(bytearray((tmp_path / "x.png").read_bytes()), np.uint8), 32))
    expected = ImageTasks._normalize(SimpleNamespace(mean=tasks.mean, std=tasks.std), pixels.float().div_(255.0))
    assert torch.equal(prep(tmp_path / "x.png"), expected)
    assert prep.stack([tmp_path / "x.png"] * 2).shape == (2, 3, 32, 32)
    unnormalized = MiniImageNetTasks(str(tmp_path), image_size=32, normalize=False).preprocessing()
    assert unnormalized.mean is None and torch.equal(unnormalized(tmp_path / "x.png"), pixels.float() / 255)


def test_sources_describe_what_adaptation_needs_as_plain_data():
    info = OmniglotTasks("/nowhere", ways=20, shots=5, queries=3).describe()
    assert info == {"source": "OmniglotTasks", "task_type": "classification", "ways": 20, "shots": 5, "queries": 3,
                    "train_ways": None, "preprocessing": {"image_size": 28, "channels": 1, "invert": True,
                                                          "mean": None, "std": None}}
    assert SinusoidTasks(shots=10).describe()["preprocessing"] is None
    assert SinusoidTasks(shots=10).describe()["task_type"] == "regression"


def test_bad_preprocessing_values_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="channels must be 1 .* or 3 .*, got 2"):
        ImagePreprocessing(image_size=28, channels=2)
    with pytest.raises(ValueError, match="mean needs 3 values"):
        ImagePreprocessing(image_size=28, mean=(0.5,), std=(0.2,))
    with pytest.raises(ValueError, match="mean and std go together"):
        ImagePreprocessing(image_size=28, channels=1, mean=(0.5,))
    with pytest.raises(ValueError, match="image_size must be an int >= 1, got 0"):
        ImagePreprocessing(image_size=0)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read the image '.*broken\.png'"):
        ImagePreprocessing(image_size=8)(tmp_path / "broken.png")
    grey = ImagePreprocessing(image_size=8, channels=1)(Image.fromarray(np.full((4, 4, 3), 255, np.uint8)))
    assert grey.shape == (1, 8, 8) and torch.allclose(grey, torch.ones(1, 8, 8)), "RGB input is converted"
