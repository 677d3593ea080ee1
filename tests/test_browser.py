"""The built book as its readers see it: every page, loaded in headless Chromium (Selenium) from a
local web server, at a 1280-pixel window and at a 400-pixel phone screen.

A page fails on
- maths that did not render: TeX delimiters (``\\(``, ``\\[``, ``$$``) or a stray ``$`` left in
  the visible text outside code, or a MathJax error;
- a Markdown table shown as text (its ``|---|`` rule, or rows of ``| cells |``, in the visible text);
- a console error (a script error, a resource that failed to load);
- an image shown distorted (its aspect ratio changed), at either width;
- an image drawn wider than it is shown by more than IMAGE_SLACK (at 1280 px: its labels shrink;
  "drawn" is the width the page asks for, its natural width unless a width is set, as myst-nb
  sets half the pixels of a high-density figure);
- a results table (a chapter's, the dashboard's) whose verdict column is cut off at 400 px.

The book loads MathJax from a CDN, which these machines cannot reach: the test's server rewrites
that script to a local MathJax 2 (Debian's ``libjs-mathjax``) configured for the delimiters Sphinx
writes, ``\\(…\\)`` and ``\\[…\\]`` (so that a stray ``$$`` stays visible and fails).

Which book: ``LAYERWISE_BOOK_HTML=<folder>`` tests an existing build (``_build/html`` after
``make book``); otherwise the book ``tests/test_chapters.py`` builds (``built_book``: under
``make test`` this test runs after that build, on the same worker, and reuses it).
``LAYERWISE_SCREENSHOTS=<folder>`` saves a full-page screenshot of every page at both widths.

It runs where chromium, chromedriver, selenium and MathJax are found and says why it skips
elsewhere; ``.ci/run`` installs them and sets ``LAYERWISE_BROWSER_TEST=1``, which turns a missing
piece into a failure.
"""

from __future__ import annotations

import functools
import glob
import http.server
import mimetypes
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from test_chapters import BOOK_TIMEOUT, built_book, staged  # noqa: F401  (fixtures: the book test_chapters builds)

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("LAYERWISE_BROWSER_TEST") == "1"
IMAGE_SLACK = 1.25         # an image may be drawn at most this much wider than it is shown at 1280 px
WIDTHS = {"desktop": (1280, 900, False), "phone": (400, 860, True)}
MATHJAX_DIRS = [Path(os.environ["LAYERWISE_MATHJAX"])] if os.environ.get("LAYERWISE_MATHJAX") else [
    Path("/usr/share/javascript/mathjax"), Path("/usr/share/mathjax")]
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars"]


def book_pages(root: Path = ROOT) -> list[str]:
    """Every page of the book in the order of ``_toc.yml`` (docnames such as ``book/intro``)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        for entry in part.get("chapters", []):
            if "file" in entry:
                pages.append(entry["file"])
            elif "glob" in entry:
                found = sorted(glob.glob(str(root / entry["glob"])))
                pages += sorted({str(Path(p).relative_to(root).with_suffix("")) for p in found
                                 if Path(p).suffix in (".ipynb", ".md")}, key=lambda p: Path(p).name)
    return pages


PAGES = book_pages()


def _missing() -> list[str]:
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        missing.append("chromium (apt-get install chromium)")
    if not shutil.which("chromedriver"):
        missing.append("chromedriver (apt-get install chromium-driver)")
    if not _mathjax_dir():
        missing.append("a local MathJax 2 (apt-get install libjs-mathjax, or LAYERWISE_MATHJAX=<folder>)")
    return missing


def _mathjax_dir() -> Path | None:
    return next((d for d in MATHJAX_DIRS if (d / "MathJax.js").is_file()), None)


# --------------------------------------------------------------------------- serving the book offline

MATHJAX_SCRIPT = re.compile(r'<script[^>]*\ssrc="https?://[^"]*mathjax[^"]*"[^>]*>\s*</script>', re.I)
MATHJAX_CONFIG = re.compile(r"<script>\s*window\.MathJax\s*=.*?</script>", re.S)
PROCESS_CLASS = re.compile(r'"processHtmlClass":\s*"([^"]+)"')
LOCAL_MATHJAX = (
    '<script>window.MathJax = {tex2jax: {inlineMath: [["\\\\(", "\\\\)"]], displayMath: [["\\\\[", "\\\\]"]], '
    'processClass: "%s"}, messageStyle: "none", showMathMenu: false, showProcessingMessages: false, '
    '"fast-preview": {disabled: true}, menuSettings: {assistiveMML: false}};</script>'
    '<script src="/__mathjax__/MathJax.js?config=TeX-AMS_CHTML"></script>')


def offline_page(text: str) -> str:
    """An HTML page of the book with its CDN MathJax 3 replaced by the local MathJax 2 the server
    serves, configured alike: only the delimiters Sphinx writes, and only inside the classes the
    book's own configuration has MathJax process (MyST marks the rest ``tex2jax_ignore``)."""
    if not MATHJAX_SCRIPT.search(text):
        return text
    config = MATHJAX_CONFIG.search(text)
    process = PROCESS_CLASS.search(config.group(0)) if config else None
    local = LOCAL_MATHJAX % (process.group(1) if process else "tex2jax_process|math")
    return MATHJAX_SCRIPT.sub(lambda _: local, MATHJAX_CONFIG.sub("", text), count=1)


class _BookHandler(http.server.BaseHTTPRequestHandler):
    html: Path
    mathjax: Path

    def do_GET(self):  # noqa: N802 (http.server's name)
        path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
        if path == "/favicon.ico":          # the book has none; a 404 would be a console error here only
            self.send_response(204)
            self.end_headers()
            return
        base, rel = (self.mathjax, path[len("/__mathjax__/"):]) if path.startswith("/__mathjax__/") else (
            self.html, path.lstrip("/"))
        file = (base / rel).resolve()
        if file.is_dir():
            file = file / "index.html"
        if not file.is_file() or not (file.is_relative_to(base.resolve()) or base == self.mathjax):
            self.send_error(404)
            return
        data = file.read_bytes()
        if file.suffix == ".html":
            data = offline_page(data.decode("utf-8")).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", mimetypes.guess_type(file.name)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


# --------------------------------------------------------------------------- what is checked on a page

WAIT_FOR_MATHJAX = """
const done = arguments[arguments.length - 1];
if (!window.MathJax || !window.MathJax.Hub) { done("none"); return; }
const ended = () => (window.MathJax.Hub.Startup.signal.posted || []).some(m => String(m) === "End");
const poll = setInterval(() => {            // MathJax 2 posts "End" once its first typeset is done
  if (ended()) { clearInterval(poll); window.MathJax.Hub.Queue(() => done("typeset")); }
}, 50);
"""

READ_PAGE = r"""
const article = document.querySelector("article") || document.body;
const skip = "pre, code, script, style, textarea, .MathJax, .MathJax_Display, .MathJax_CHTML, .MathJax_Preview, mjx-container, .MJX_Assistive_MathML";
const problems = [];
const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
while (walker.nextNode()) {
  const node = walker.currentNode, parent = node.parentElement, text = node.nodeValue;
  if (!parent || parent.closest(skip) || !text.trim()) continue;
  const where = (parent.closest("p, li, td, th, dd, h1, h2, h3, h4, div") || parent).textContent.trim().slice(0, 160);
  if (/\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{/.test(text)) problems.push(`maths not rendered (TeX left in the text): "${where}"`);
  else if (text.includes("$")) problems.push(`maths not rendered (a stray $ in the text): "${where}"`);
  // a pipe table left as text: its |---| rule (Sphinx's smartquotes make it |—|) or rows of | cells |
  if (/\|\s*:?(-{3,}|[—–]+)\s*:?\|/.test(text) || (text.match(/^\s*\|.*\|\s*$/gm) || []).length >= 2)
    problems.push(`a Markdown table shown as text: "${where}"`);
}
for (const e of document.querySelectorAll(".merror, mjx-merror, .MathJax_Error"))
  problems.push(`MathJax could not typeset: "${e.textContent.slice(0, 120)}"`);
const images = [...article.querySelectorAll("img")].filter(i => i.getClientRects().length && !i.closest("details:not([open])"));
const shown = images.map(i => ({src: i.getAttribute("src"), natural: i.naturalWidth, complete: i.complete,
                                drawn: parseFloat(i.style.width) || parseFloat(i.getAttribute("width")) || i.naturalWidth,
                                shown: i.getBoundingClientRect().width}));
return {problems: problems, images: shown, width: window.innerWidth};
"""

DISTORTED = r"""
return [...document.querySelectorAll("article img")].filter(i => i.getClientRects().length && i.naturalWidth)
  .filter(i => { const r = i.getBoundingClientRect();
                 return r.height > 0 && Math.abs((r.width / r.height) / (i.naturalWidth / i.naturalHeight) - 1) > 0.03; })
  .map(i => { const r = i.getBoundingClientRect();
              return `shown ${Math.round(r.width)}×${Math.round(r.height)} px, drawn ${i.naturalWidth}×${i.naturalHeight}: ${i.getAttribute("src")}`; });
"""

VERDICT_COLUMNS = r"""
const problems = [];
const vw = document.documentElement.clientWidth;
for (const table of document.querySelectorAll("table.layerwise-results, table.layerwise-dashboard")) {
  const heads = [...table.querySelectorAll("tr")[0].children];
  const col = heads.findIndex(h => h.textContent.trim().startsWith("reproduced"));
  if (col < 0) { problems.push("a results table without a 'reproduced?' column"); continue; }
  let left = 0, right = vw;
  for (let a = table.parentElement; a; a = a.parentElement) {
    const style = getComputedStyle(a);
    if (style.overflowX !== "visible") {
      const r = a.getBoundingClientRect(); left = Math.max(left, r.left); right = Math.min(right, r.right);
    }
  }
  for (const row of table.querySelectorAll("tr")) {
    const cell = row.children[col];
    if (!cell) continue;
    const r = cell.getBoundingClientRect();
    if (r.right > right + 1 || r.left < left - 1) {
      problems.push(`the verdict column of a results table is cut off at ${vw} px (cell ${Math.round(r.left)}–${Math.round(r.right)} px, visible ${Math.round(left)}–${Math.round(right)} px): "${row.textContent.trim().slice(0, 80)}"`);
      break;
    }
  }
}
return problems;
"""


def _driver(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in CHROME_FLAGS + [f"--user-data-dir={profile}", "--window-size=1280,900"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    return driver


def _screen(driver, width: int, height: int, mobile: bool) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})


def _screenshot(driver, path: Path, width: int, mobile: bool) -> None:
    import base64

    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    _screen(driver, width, min(height, 30000), mobile)
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(shot["data"]))


def check_book(html: Path, pages: list[str], screenshots: Path | None = None) -> dict[str, list[str]]:
    """Load every page of the built book ``html`` in Chromium; ``{page: [problems]}`` (``_seconds``: time)."""
    t0 = time.perf_counter()
    handler = type("Handler", (_BookHandler,), {"html": Path(html), "mathjax": _mathjax_dir()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    found: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="layerwise-chromium-") as profile:
        driver = _driver(profile)
        try:
            for page in pages:
                problems = found.setdefault(page, [])
                if not (Path(html) / f"{page}.html").exists():
                    problems.append(f"{page}.html is not in the built book")
                    continue
                t_page = time.perf_counter()
                _screen(driver, *WIDTHS["desktop"])
                driver.get(f"{base}/{page}.html")
                if driver.execute_async_script(WAIT_FOR_MATHJAX) == "typeset":
                    time.sleep(0.1)
                seen = driver.execute_script(READ_PAGE)
                problems += seen["problems"]
                problems += [f"an image is distorted at 1280 px: {p}" for p in driver.execute_script(DISTORTED)]
                for img in seen["images"]:
                    if img["complete"] and img["natural"] == 0:
                        problems.append(f"an image did not load: {img['src']}")
                    elif img["shown"] > 0 and img["drawn"] > IMAGE_SLACK * img["shown"]:
                        problems.append(f"an image is drawn {img['drawn']:.0f} px wide but shown at {img['shown']:.0f} px "
                                        f"({img['drawn'] / img['shown']:.2f}×: its labels shrink as much): {img['src']}")
                if screenshots:
                    _screenshot(driver, screenshots / f"{page.replace('/', '__')}-1280.png", 1280, False)
                _screen(driver, *WIDTHS["phone"])
                time.sleep(0.2)
                problems += driver.execute_script(VERDICT_COLUMNS)
                problems += [f"an image is distorted at 400 px: {p}" for p in driver.execute_script(DISTORTED)]
                if screenshots:
                    _screenshot(driver, screenshots / f"{page.replace('/', '__')}-400.png", 400, True)
                for entry in driver.get_log("browser"):
                    if entry["level"] == "SEVERE":
                        problems.append(f"console error: {entry['message'][:300]}")
                found.setdefault("_page_seconds", []).append(f"{page}: {time.perf_counter() - t_page:.1f}")
        finally:
            driver.quit()
            server.shutdown()
    found["_seconds"] = [f"{time.perf_counter() - t0:.1f}"]
    return found


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def book_html(request) -> Path:
    missing = _missing()
    if missing:
        message = "the browser test needs " + "; ".join(missing)
        if REQUIRED:
            pytest.fail(message + " (LAYERWISE_BROWSER_TEST=1: .ci/run installs them)")
        pytest.skip(message)
    if os.environ.get("LAYERWISE_BOOK_HTML"):
        html = Path(os.environ["LAYERWISE_BOOK_HTML"]).resolve()
        assert (html / "index.html").exists(), f"LAYERWISE_BOOK_HTML={html} holds no built book"
        return html
    built = request.getfixturevalue("built_book")
    assert built["returncode"] == 0, "the book did not build (see test_book_builds_without_warnings)"
    return Path(built["html"])


@pytest.fixture(scope="module")
def seen(book_html: Path) -> dict[str, list[str]]:
    shots = os.environ.get("LAYERWISE_SCREENSHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
    found = check_book(book_html, PAGES, Path(shots) if shots else None)
    print(f"browser test: {len(PAGES)} pages at 1280 and 400 px in {found['_seconds'][0]} s "
          f"({', '.join(found['_page_seconds'])})")
    return found


def test_the_book_has_its_pages():
    assert "book/results" in PAGES and "book/intro" in PAGES and len(PAGES) > 3


@pytest.mark.timeout(BOOK_TIMEOUT)
@pytest.mark.parametrize("page", PAGES)
def test_page_reads_well_in_a_browser(page: str, seen: dict[str, list[str]]):
    problems = seen[page]
    assert not problems, f"{page}.html, as Chromium shows it:\n  " + "\n  ".join(problems)


def test_offline_page_swaps_the_cdn_mathjax():
    page = ('<script>window.MathJax = {"options": {}}</script>'
            '<script defer="defer" src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>')
    out = offline_page(page)
    assert "cdn.jsdelivr" not in out and "/__mathjax__/MathJax.js" in out and '"options"' not in out
    assert offline_page("<p>no maths</p>") == "<p>no maths</p>"
