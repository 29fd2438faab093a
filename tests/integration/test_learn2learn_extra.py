"""The `learn2learn` extra asks pip only for what installs on each Python the package claims."""

import pytest
from conftest import REPO
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def extra_on(python: str) -> list[str]:
    """Names the `learn2learn` extra installs on Python ``python`` (markers evaluated as pip does)."""
    env = {"python_version": python, "python_full_version": f"{python}.0", "extra": "learn2learn"}
    reqs = [Requirement(r) for r in project()["optional-dependencies"]["learn2learn"]]
    return [r.name for r in reqs if r.marker is None or r.marker.evaluate(env)]


@pytest.mark.parametrize("python", ["3.10", "3.11", "3.12", "3.13", "3.14"])
def test_learn2learn_extra_installs_on_every_claimed_python(python):
    assert SpecifierSet(project()["requires-python"]).contains(f"{python}.0")
    # learn2learn 0.2.0's sdist builds on 3.10 but not on 3.11+ (`longintrepr.h`, upstream issue #413)
    assert extra_on(python) == (["learn2learn"] if python == "3.10" else [])


def test_the_route_for_python_311_and_later_exists():
    script = REPO / "scripts" / "install_learn2learn.sh"
    assert script.exists() and "longintrepr.h" in script.read_text()
    assert "install_learn2learn.sh" in (REPO / "pyproject.toml").read_text()
    assert "install_learn2learn.sh" in (REPO / "tests" / "l2l.py").read_text()  # the skip reason says so
