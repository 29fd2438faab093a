"""MkDocs hook: bundle KaTeX into the site at build time, from the npm registry, so math renders offline.

`pymdownx.arithmatex` (generic) leaves `\\(...\\)` and `\\[...\\]` in `<span/div class="arithmatex">`; a
script has to typeset them in the reader's browser. Rather than load KaTeX from a CDN at view time, or
commit 0.6 MB of minified JS, CSS and fonts, the first build fetches the pinned release with
`npm pack katex@VERSION` (one 1.5 MB tarball, about a second), checks it against the pinned sha512 integrity,
and keeps what the site needs (`katex.min.js`, `katex.min.css`, the woff2 fonts, the license) in a cache
outside the repository (`$LIGHTNING_META_DOCS_CACHE`, default `~/.cache/lightning-meta-docs`). Every build
then adds those files to the site as `javascripts/katex/...`; `docs/javascripts/katex-init.js` renders the
arithmatex elements with them.

Needs Node.js's `npm` on the first build only (or a cache filled by an earlier build). To move to another
KaTeX release, change `VERSION` and `INTEGRITY` (`npm view katex@VERSION dist.integrity`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

VERSION = "0.19.1"
INTEGRITY = "sha512-jG8uKntjSEcm2EpQOh0XturpPuuC9r3Sq5HLHdsFdWZT27E672SF19QEi+of0/YeOy15lDgRhKvr5614uRrEfA=="
SITE_PREFIX = "javascripts/katex"


def _cache_dir() -> Path:
    root = os.environ.get("LIGHTNING_META_DOCS_CACHE") or Path.home() / ".cache" / "lightning-meta-docs"
    return Path(root) / f"katex-{VERSION}"


def _wanted(name: str) -> str | None:
    """Where a tarball member the site needs goes in the cache, else None."""
    if name == "package/LICENSE":
        return "LICENSE"
    rest = name.removeprefix("package/dist/")
    if rest != name and (rest in ("katex.min.js", "katex.min.css")
                         or (rest.startswith("fonts/") and rest.endswith(".woff2"))):
        return rest
    return None


def _fetch(target: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise PluginError(f"docs/hooks/katex.py: KaTeX {VERSION} is not cached in {target} and `npm` is not on "
                          "PATH to fetch it (install Node.js, or build once where npm exists and copy the cache)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [npm, "pack", f"katex@{VERSION}", "--pack-destination", tmp, "--ignore-scripts", "--silent"]
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)
        tarball = Path(tmp) / f"katex-{VERSION}.tgz"
        if run.returncode != 0 or not tarball.exists():
            raise PluginError(f"docs/hooks/katex.py: `npm pack katex@{VERSION}` failed: {run.stderr.strip()}")
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if digest != INTEGRITY:
            raise PluginError(f"docs/hooks/katex.py: katex-{VERSION}.tgz has integrity {digest}, pinned {INTEGRITY}")
        staging = Path(tmp) / "katex"
        with tarfile.open(tarball) as tar:
            for member in tar.getmembers():
                dest = _wanted(member.name)
                if dest is None or not member.isfile():
                    continue
                out = staging / dest
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())
        if not (staging / "katex.min.js").exists():
            raise PluginError(f"docs/hooks/katex.py: katex-{VERSION}.tgz has no dist/katex.min.js")
        try:
            staging.rename(target)  # atomic: a concurrent build either sees the whole cache or none
        except OSError:
            if not (target / "katex.min.js").exists():
                raise


def on_files(files: Files, config) -> Files:
    """Add the cached KaTeX files to the site (fetching them first if needed)."""
    cache = _cache_dir()
    if not (cache / "katex.min.js").exists():
        _fetch(cache)
    for path in sorted(p for p in cache.rglob("*") if p.is_file()):
        files.append(File.generated(config, f"{SITE_PREFIX}/{path.relative_to(cache).as_posix()}",
                                    abs_src_path=str(path)))
    return files
