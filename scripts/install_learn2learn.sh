#!/usr/bin/env bash
# Builds and installs learn2learn 0.2.0 (the only PyPI release) on Python >= 3.11.
#
# On Python 3.10, `pip install "lightning-meta[learn2learn]"` installs learn2learn itself; on 3.11+ that extra
# installs nothing and this script is the way: learn2learn's sdist ships Cython-generated C that includes
# `longintrepr.h`, removed in Python 3.11 (upstream issue #413), so `pip install learn2learn` fails. This
# script regenerates the C files with a current Cython and installs the package without its heavy optional
# dependencies (gym, torchvision, gsutil, qpth, ...). learn2learn's own `__init__` imports those sub-packages
# eagerly; the script makes the `gym`, `text` and `vision` imports optional so `learn2learn.data` and
# `learn2learn.algorithms` load beside a torch build that has no matching torchvision. Only PyPI is contacted.
set -euo pipefail
python -m pip install -q "cython>=3,<4" "setuptools<81" scipy tqdm requests
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The sdist, not a wheel: `--no-binary learn2learn` (not `:all:`, which also applies to the sdist's build
# requirements, so pip would first compile Cython and setuptools from their sources just to read learn2learn's
# metadata), and `--no-build-isolation` (that metadata is read with the Cython and setuptools installed above).
# Measured on 2 busy CPU cores, fresh venv with torch 2.13.0, empty pip cache: this whole script took 512 s wall
# (212 s CPU) with `--no-binary :all:`, 270-430 s of it in this download compiling Cython's own C modules
# (19 seen, refnanny.c among them); now 79 s (29 s CPU), the download 3.5 s, and the only C compiled is
# learn2learn's own 3 extensions.
python -m pip download -q --no-deps --no-binary learn2learn --no-build-isolation "learn2learn==0.2.0" -d "$work"
tar -xzf "$work"/learn2learn-0.2.0.tar.gz -C "$work"
src="$work/learn2learn-0.2.0"
rm -rf "$src/.eggs"
(cd "$src" && python - <<'PY'
from pathlib import Path
from Cython.Build import cythonize
for pyx in Path("learn2learn/data").glob("*.pyx"):
    pyx.with_suffix(".c").unlink(missing_ok=True)
cythonize([str(p) for p in Path("learn2learn/data").glob("*.pyx")], compiler_directives={"language_level": 3})
init = Path("learn2learn/__init__.py")
text = init.read_text()
for name in ("gym", "text", "vision"):
    text = text.replace(f"from . import {name}\n",
                        f"try:\n    from . import {name}\nexcept ImportError:  # optional dependency missing\n    pass\n")
init.write_text(text)
PY
)
python -m pip install -q --no-deps --no-build-isolation "$src"
python -c "import learn2learn as l2l; print('learn2learn', l2l.__version__, 'importable')"
