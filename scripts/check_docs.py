"""Check the built documentation as a reader sees it: every page loaded in headless Chromium, after its scripts ran.

    python scripts/check_docs.py SITE_DIR [--chromium /usr/bin/chromium] [--screenshots DIR] [--pages concepts,api]

Serves SITE_DIR with ``python -m http.server`` on localhost, dumps each page's DOM after JavaScript ran
(``--dump-dom`` with a virtual time budget) and fails, naming page and problem, when:

* math is left raw: ``\\(`` / ``\\[`` in the text a reader sees, an ``arithmatex`` element that KaTeX did not
  render, or a KaTeX error;
* an API object has no heading (a ``doc-class`` / ``doc-function`` block whose first element is not a heading);
* a Sphinx role (``:class:`X```, ``:func:`` ...), a reST ``text::`` literal-block marker or an unresolved
  mkdocstrings cross-reference (``[X][a.b]``) shows in the text, or a docstring example is not a code block
  (``>>>`` in prose, or Markdown's reading of it: a blockquote inside a docstring);
* an image the page shows is missing from the site.

``--screenshots DIR`` also saves a PNG of each checked page there (keep them out of git). Exits 0 when all
pages pass, 1 with the list of problems otherwise, 2 when Chromium is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
# Markdown turns :class:`X` into ":class:" + <code>X</code>, so the role is followed by code (skipped) or a space.
SPHINX_ROLE = re.compile(r":(?:class|func|meth|attr|mod|obj|data|exc|ref|py:\w+):(?=[`\s]|$)")
SPHINX_LITERAL = re.compile(r"[^\s:]::(?=\s|$)")  # reST "text::" before a literal block
RAW_CROSSREF = re.compile(r"\]\[(?:lightning_meta|torch|pytorch_lightning)[\w.]*\]")
RAW_MATH = re.compile(r"\\\(|\\\)|\\\[|\\\]")
SKIP_TEXT = {"code", "pre", "script", "style", "annotation", "svg", "textarea"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """What the checks need from a DOM dump: prose text, math and API blocks, image sources."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, set[str]]] = []
        self.prose: list[str] = []
        self.arithmatex = self.katex = self.katex_errors = self.arithmatex_rendered = 0
        self.images: list[str] = []
        self.api_blocks: list[tuple[str, str | None]] = []  # (block kind, first child: "tag#id")
        self.docstring_quotes: list[str] = []  # text of blockquotes inside docstrings (flattened ">>>")
        self._quote_pending = False
        self._await_first_child: list[int] = []  # stack depths of doc-object blocks waiting for a child
        self._arith_depths: list[int] = []

    def _skipping(self) -> bool:
        return any(tag in SKIP_TEXT or "katex-mathml" in cls for tag, cls in self.stack)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        cls = set((a.get("class") or "").split())
        if self._await_first_child and self._await_first_child[-1] == len(self.stack):
            self._await_first_child.pop()
            self.api_blocks[-1] = (self.api_blocks[-1][0], f"{tag}#{a.get('id') or ''}")
        if "arithmatex" in cls:
            self.arithmatex += 1
            self._arith_depths.append(len(self.stack))
        if "katex" in cls:
            self.katex += 1
            if self._arith_depths:
                self.arithmatex_rendered += 1
                self._arith_depths.pop()  # count each arithmatex element once
        if "katex-error" in cls:
            self.katex_errors += 1
        if tag == "img" and a.get("src"):
            self.images.append(a["src"])
        if "doc-object" in cls and ({"doc-class", "doc-function", "doc-module"} & cls):
            kind = next(c for c in ("doc-class", "doc-function", "doc-module") if c in cls)
            self.api_blocks.append((kind, None))
            self._await_first_child.append(len(self.stack) + 1)
        if tag == "blockquote" and any("doc-contents" in c for _, c in self.stack):
            self._quote_pending = True
        if tag not in VOID:
            self.stack.append((tag, cls))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break
        while self._arith_depths and self._arith_depths[-1] >= len(self.stack):
            self._arith_depths.pop()
        while self._await_first_child and self._await_first_child[-1] > len(self.stack) + 1:
            self._await_first_child.pop()

    def handle_data(self, data: str) -> None:
        if self._quote_pending and data.strip():
            self.docstring_quotes.append(" ".join(data.split())[:60])
            self._quote_pending = False
        if not self._skipping():
            self.prose.append(data)


def article_text(page: Page) -> str:
    return " ".join(" ".join(page.prose).split())


def problems_of(name: str, page: Page, site: Path, url: str, math_expected: bool) -> list[str]:
    out = []
    text = article_text(page)

    def context(match: re.Match) -> str:
        return text[max(0, match.start() - 40): match.end() + 40]

    if (m := RAW_MATH.search(text)) is not None:
        out.append(f"{name}: raw math in the rendered text: ...{context(m)}...")
    if math_expected and page.katex == 0:
        out.append(f"{name}: has math but no KaTeX element after scripts ran (KaTeX not loaded?)")
    if page.arithmatex_rendered < page.arithmatex:
        out.append(f"{name}: {page.arithmatex - page.arithmatex_rendered} of {page.arithmatex} math elements "
                   "not rendered by KaTeX")
    if page.katex_errors:
        out.append(f"{name}: {page.katex_errors} KaTeX error(s) (red TeX source in the page)")
    for m in SPHINX_ROLE.finditer(text):
        out.append(f"{name}: raw Sphinx role: ...{context(m)}...")
    for m in SPHINX_LITERAL.finditer(text):
        out.append(f"{name}: reST literal-block marker '::' in the text: ...{context(m)}...")
    for m in RAW_CROSSREF.finditer(text):
        out.append(f"{name}: unresolved cross-reference: ...{context(m)}...")
    if (m := re.search(r">>>", text)) is not None:
        out.append(f"{name}: doctest prompt in prose (example not rendered as code): ...{context(m)}...")
    for quoted in page.docstring_quotes:
        out.append(f"{name}: docstring text rendered as a quote (a '>>>' example not rendered as code?): {quoted}")
    for kind, first in page.api_blocks:
        if first is None or not re.fullmatch(r"h[1-6]#.*", first):
            out.append(f"{name}: API block ({kind}) has no heading; its first element is <{first}>")
    for src in page.images:
        target = urlparse(urljoin(url, src))
        if target.hostname not in (None, "127.0.0.1"):
            out.append(f"{name}: image from another host: {src}")
            continue
        path = site / unquote(target.path).lstrip("/")
        if not path.is_file():
            out.append(f"{name}: image missing from the site: {src}")
    return out


@contextlib.contextmanager
def serve(site: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("http.server did not start")
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=10)


def chromium(binary: str, url: str, *extra: str) -> str:
    with tempfile.TemporaryDirectory(prefix="check-docs-chromium-") as profile:
        run = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                              *extra, url], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise RuntimeError(f"chromium exited {run.returncode} on {url}: {run.stderr[-500:]}")
    return run.stdout


def pages_of(site: Path, only: list[str] | None) -> list[str]:
    """Site-relative page paths (``""`` is the home page), every HTML page unless ``only`` names some."""
    if only:
        return [p.strip("/") + "/" if p.strip("/") else "" for p in only]
    found = []
    for html in sorted(site.rglob("*.html")):
        rel = html.relative_to(site).as_posix()
        if rel == "404.html" or rel.startswith(("assets/", "javascripts/")):
            continue
        found.append(rel.removesuffix("index.html"))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("site", type=Path)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--screenshots", type=Path, help="save a PNG of each checked page here")
    parser.add_argument("--pages", help="comma-separated page paths (default: every page), e.g. concepts,api")
    args = parser.parse_args()
    site = args.site.resolve()
    if not (site / "index.html").is_file():
        print(f"check_docs: {site} has no index.html (build the site first)", file=sys.stderr)
        return 1
    if not Path(args.chromium).exists() and shutil.which(args.chromium) is None:
        print(f"check_docs: no Chromium at {args.chromium}", file=sys.stderr)
        return 2
    pages = pages_of(site, args.pages.split(",") if args.pages else None)
    problems: list[str] = []
    with serve(site) as base:
        for rel in pages:
            name = "/" + rel
            url = base + rel
            source = (site / rel / "index.html") if not rel.endswith(".html") else site / rel
            math_expected = source.is_file() and "arithmatex" in source.read_text(errors="replace")
            page = Page()
            page.feed(chromium(args.chromium, url, "--dump-dom"))
            found = problems_of(name, page, site, url, math_expected)
            problems += found
            print(f"check_docs: {name}: {'ok' if not found else f'{len(found)} problem(s)'} "
                  f"({page.katex} KaTeX elements, {len(page.api_blocks)} API blocks, {len(page.images)} images)")
            if args.screenshots:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                shot = args.screenshots / ((rel.strip("/").replace("/", "_") or "index") + ".png")
                chromium(args.chromium, url, f"--screenshot={shot}", "--window-size=1280,2400")
    if problems:
        print(f"check_docs: {len(problems)} problem(s) in the rendered site:", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 1
    print(f"check_docs: {len(pages)} pages rendered in Chromium, no problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
