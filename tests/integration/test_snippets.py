"""Every Python snippet in README.md and docs/ runs as a file, as a user pastes it: extracted from the Markdown,
with only data paths, step counts and sizes substituted (``SUBSTITUTIONS``), in a fresh interpreter in an empty
directory, checked by exit status and output. A snippet added to the docs is run here without any change."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, launch_nodes, run_user_file

from lightning_meta.data import synthetic
from lightning_meta.data.omniglot import load_omniglot_cached

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

#: what a user changes before running a snippet: local data paths, step counts, episode counts and sizes
SUBSTITUTIONS = {
    '"path/to/omniglot"': "{omniglot!r}",
    '"data/miniimagenet"': "{miniimagenet!r}",
    "max_steps=60_000": "max_steps=3",
    "max_steps=3000": "max_steps=3",
    "max_steps=6000": "max_steps=6",
    "val_check_interval=500": "val_check_interval=3",
    "meta_batch_size=32": "meta_batch_size=4",
    "meta_batch_size=25": "meta_batch_size=4",
    "train_episodes_per_epoch=1000": "train_episodes_per_epoch=8",
    "train_episodes_per_epoch=25 * 10_000": "train_episodes_per_epoch=4 * 3",
    "train_episodes_per_epoch=32 * 1000": "train_episodes_per_epoch=4 * 3",
    "val_episodes=100": "val_episodes=4",
    "test_episodes=600": "test_episodes=8",
}
#: what each snippet must print (besides exiting 0), by page and position on it
EXPECTED = {
    ("README.md", 0): "test/acc",
    ("docs/index.md", 0): "test/acc",
    ("docs/functional.md", 0): "{0: ",
    ("docs/functional.md", 1): "0 ",
    ("docs/howto/datasets.md", 0): "torch.Size([16, 25, 1, 28, 28]) torch.Size([16, 75])",
    ("docs/howto/datasets.md", 1): "torch.Size([4, 5, 8])",
    ("docs/datasets.md", 0): "torch.Size([4, 5, 3, 84, 84])",
    ("docs/learners.md", 0): "test/acc",
    ("docs/learners.md", 1): "torch.Size([1, 10, 1])",
    ("docs/use.md", 0): "['circle', 'cross', 'line', 'square', 'triangle']",
    ("docs/use.md", 1): "SGD 0.01 0.9",
    ("docs/use.md", 2): "True True",
}
#: snippets that are one node of a multi-node job: launched as two nodes on the loopback interface
TWO_NODES = {("docs/howto/multinode.md", 0)}


def snippets() -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        for index, match in enumerate(FENCE.finditer(page.read_text())):
            found.append((str(page.relative_to(REPO)), index, match.group(1)))
    return found


SNIPPETS = snippets()


def substitute(code: str, values: dict[str, str]) -> str:
    for old, new in SUBSTITUTIONS.items():
        code = code.replace(old, new.format(**values))
    return code


def test_every_substitution_and_expectation_is_used():
    """A substitution or expectation that no snippet uses any more is stale: the docs changed under it."""
    code = "".join(c for *_, c in SNIPPETS)
    assert [old for old in SUBSTITUTIONS if old not in code] == []
    keys = {(page, index) for page, index, _ in SNIPPETS}
    assert set(EXPECTED) - keys == set() and TWO_NODES - keys == set()


@pytest.fixture(scope="module")
def values(tmp_path_factory, omniglot) -> dict[str, str]:
    """Local data for the snippets, and one cache folder (``$LIGHTNING_META_CACHE``) for all of them, with Omniglot's
    decoded tensor built once here (each snippet would otherwise decode the zips again)."""
    root = tmp_path_factory.mktemp("snippet_data")
    mini = synthetic.synthetic_miniimagenet(root / "miniimagenet", "csv", images_per_class=20, image_size=84)
    load_omniglot_cached(omniglot, cache_dir=str(root / "cache"))
    return {"omniglot": str(omniglot), "miniimagenet": str(mini), "cache": str(root / "cache")}


def run_snippet(code: str, cwd: Path, values: dict[str, str], stdin: bool = False) -> subprocess.CompletedProcess:
    return run_user_file(code, cwd, "snippet.py", stdin, timeout=400, LIGHTNING_META_CACHE=values["cache"])


def run_two_nodes(code: str, cwd: Path, values: dict[str, str]) -> list[subprocess.CompletedProcess]:
    script = cwd / "train.py"
    script.write_text(code)
    return launch_nodes([sys.executable, str(script)], cwd, timeout=400, LIGHTNING_META_CACHE=values["cache"])


def assert_ok(proc: subprocess.CompletedProcess, where: str, expected: str | None) -> None:
    output = f"{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, f"{where}: exit {proc.returncode}\n{output[-5000:]}"
    if expected is not None:
        assert expected in proc.stdout, f"{where}: {expected!r} not printed\n{proc.stdout[-3000:]}"


@pytest.mark.parametrize(("page", "index", "code"), SNIPPETS, ids=[f"{p}:{i}" for p, i, _ in SNIPPETS])
def test_snippet_runs_as_a_file(page, index, code, values, tmp_path):
    if "learn2learn" in code and importlib.util.find_spec("learn2learn") is None:
        pytest.skip("learn2learn is not installed (bash scripts/install_learn2learn.sh installs it)")
    code = substitute(code, values)
    where = f"{page} snippet {index}"
    if (page, index) in TWO_NODES:
        for node, proc in enumerate(run_two_nodes(code, tmp_path, values)):
            assert_ok(proc, f"{where}, node {node}", None)
        return
    assert_ok(run_snippet(code, tmp_path, values), where, EXPECTED.get((page, index)))


def test_readme_snippet_piped_into_python_dash(values, tmp_path):
    """``python - < train.py``: the README's "Use" snippet without a file (workers included)."""
    code = substitute(SNIPPETS[[p for p, *_ in SNIPPETS].index("README.md")][2], values)
    assert "num_workers=2" in code
    assert_ok(run_snippet(code, tmp_path, values, stdin=True), "README snippet from stdin", "test/acc")
