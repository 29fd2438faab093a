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
