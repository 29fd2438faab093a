// Typesets what pymdownx.arithmatex (generic mode) leaves in the page: `\(...\)` in span.arithmatex and
// `\[...\]` in div.arithmatex. KaTeX itself is bundled at build time by docs/hooks/katex.py (no CDN).
// `document$` is Material's page observable, so this also runs after instant navigation.
(function () {
  function typeset(root) {
    root.querySelectorAll(".arithmatex").forEach(function (el) {
      var tex = el.textContent.trim();
      var display = el.tagName === "DIV";
      var open = display ? "\\[" : "\\(";
      var close = display ? "\\]" : "\\)";
      if (tex.startsWith(open) && tex.endsWith(close)) {
        tex = tex.slice(open.length, -close.length);
      }
      katex.render(tex, el, { displayMode: display, throwOnError: false });
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(function () { typeset(document.body); });
  } else {
    document.addEventListener("DOMContentLoaded", function () { typeset(document.body); });
  }
})();
