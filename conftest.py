"""Doctest setup for the package's docstring examples (tests/ has its own conftest)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

OMNIGLOT = Path(os.environ.get("LIGHTNING_META_OMNIGLOT", Path(__file__).resolve().parent.parent / "shared" / "data"
                               / "omniglot"))


@pytest.fixture(autouse=True)
def _omniglot_for_doctests(request, doctest_namespace) -> None:
    """``omniglot_root`` in docstring examples: the local copy the tests use; examples that read it skip, saying
    why, where there is none."""
    doctest_namespace["omniglot_root"] = str(OMNIGLOT)
    if "Omniglot" in request.node.name and not (OMNIGLOT / "images_background.zip").exists() \
            and not (OMNIGLOT / "images_background").is_dir():
        pytest.skip(f"Omniglot not found at {OMNIGLOT}; set LIGHTNING_META_OMNIGLOT to a local copy")


#: docstring examples of the RGB datasets read small synthetic copies (``lightning_meta.data.synthetic``)
SYNTHETIC_ROOTS = {
    "MiniImageNetTasks": ("miniimagenet_root", "synthetic_miniimagenet", {"images_per_class": 3}),
    "TieredImageNetTasks": ("tieredimagenet_root", "synthetic_tieredimagenet", {"images_per_class": 3,
                                                                                "layout": "npz"}),
    "CIFARFSTasks": ("cifar100_root", "synthetic_cifar100", {"images_per_class": 3}),
    "FC100Tasks": ("cifar100_root", "synthetic_cifar100", {"images_per_class": 3}),
}


@pytest.fixture(autouse=True)
def _image_roots_for_doctests(request, doctest_namespace, tmp_path_factory, monkeypatch) -> None:
    """``miniimagenet_root``, ``tieredimagenet_root`` and ``cifar100_root`` in those classes' docstring examples:
    synthetic stand-ins in the real layouts (no real copy is needed), with the cache in a temporary folder."""
    for name, (key, writer, kwargs) in SYNTHETIC_ROOTS.items():
        if request.node.name.endswith(f".{name}"):
            from lightning_meta.data import synthetic

            root = tmp_path_factory.mktemp(key)
            doctest_namespace[key] = str(getattr(synthetic, writer)(root / "data", **kwargs))
            monkeypatch.setenv("LIGHTNING_META_CACHE", str(root / "cache"))
