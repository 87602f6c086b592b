"""The documentation site in a real browser: every page loads from the site alone and renders.

The site is built by ``mkdocs build --strict`` (mkdocs.yml; the chapters are executed in the
build) and served from a local web server on 127.0.0.1; Debian's ``chromium``, driven by
Playwright (``executable_path``, so no browser is downloaded), loads every page of the
navigation. Each page must load with no console error, no failed request and no request to
any other host; its equations must be typeset by the bundled MathJax; every image must have
loaded (natural width > 0). A search for "cluster strength" must find the chapter on the
genetic encoding.

CI (``.ci/run``) builds the site first and names it in ``MINIEVO_SITE_DIR``; without it the
test builds the site itself (a few minutes: the chapters run). Where mkdocs, Playwright or
chromium is missing the tests skip, unless ``MINIEVO_REQUIRE_SITE=1`` (set by ``.ci/run``),
which makes that a failure. With ``MINIEVO_SCREENSHOTS=DIR`` the screenshot test writes its
PNGs there (``docs/screenshots/`` holds the committed ones); otherwise into a temporary folder.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUIRE = os.environ.get("MINIEVO_REQUIRE_SITE") == "1"


def nav_pages() -> list[str]:
    """The Markdown pages named in mkdocs.yml's ``nav``, in order (``chapters/index.md``...)."""
    text = (REPO / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:"):]
    return re.findall(r"^\s+- (?:[^:\n]+: )?([\w/.-]+\.md)\s*$", nav, re.M)


def page_url(page: str) -> str:
    """The site path of a page under ``use_directory_urls``: ``a/b.md`` -> ``a/b/``."""
    if page == "index.md":
        return ""
    if page.endswith("/index.md"):
        return page[: -len("index.md")]
    return page[: -len(".md")] + "/"


PAGES = nav_pages()
#: Pages that must hold typeset equations (the check would otherwise pass on a site whose maths
#: markup had silently stopped being recognised).
MATHS = {"method.md", "chapters/05_genetic_encoding.md", "chapters/02_autodiff_from_scratch.md"}


def _missing(what: str):
    message = f"the site test needs {what}"
    if REQUIRE:
        pytest.fail(f"{message} (MINIEVO_REQUIRE_SITE=1: CI must run this test)")
    pytest.skip(message)


def chromium_path() -> str | None:
    """Debian's chromium, where installed."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The built site: ``MINIEVO_SITE_DIR``, or a strict build made here."""
    given = os.environ.get("MINIEVO_SITE_DIR")
    if given:
        path = Path(given)
        assert (path / "index.html").is_file(), f"MINIEVO_SITE_DIR={given} holds no built site"
        return path
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:
        _missing("the docs extra: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def server(site):
    """A local web server for the site: yields its base URL, ``http://127.0.0.1:PORT/``."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):  # noqa: D102 - no access log in the test output
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    """Headless chromium (Debian's) under Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright: pip install -e '.[docs]'")
    executable = chromium_path()
    if executable is None:
        _missing("chromium: apt-get install -y chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class PageWatch:
    """What a page did while loading: console errors, uncaught exceptions, failed requests,
    requests to other hosts."""

    def __init__(self, page, base: str):
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.base = base
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("request", self._request)
        page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))
        page.on("response", self._response)

    def _console(self, message):
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def _request(self, request):
        url = request.url
        if not url.startswith(self.base) and not url.startswith(("data:", "blob:")):
            self.outside.append(url)

    def _response(self, response):
        if response.status >= 400:
            self.errors.append(f"HTTP {response.status}: {response.url}")


def open_page(browser, base: str, path: str, width: int = 1280, height: int = 900):
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    watch = PageWatch(page, base)
    page.goto(base + path, wait_until="networkidle")
    return context, page, watch


def test_the_navigation_covers_every_built_page(site):
    built = {p.parent.relative_to(site).as_posix() for p in site.rglob("index.html")}
    built = {"" if b == "." else b + "/" for b in built}
    named = {page_url(p) for p in PAGES}
    assert len(PAGES) == len(named) >= 30
    assert built - named == set(), f"pages built but not checked: {sorted(built - named)}"
    assert named - built == set(), f"pages named but not built: {sorted(named - built)}"


@pytest.mark.parametrize("page_name", PAGES)
def test_page_loads_from_the_site_alone_and_renders(page_name, browser, server):
    context, page, watch = open_page(browser, server, page_url(page_name))
    try:
        assert page.title(), "the page has no title"
        equations = page.locator(".arithmatex").count()
        if page_name in MATHS:
            assert equations > 0, f"{page_name} shows no equation markup"
        if equations:
            page.wait_for_function("() => window.MathJax && MathJax.startup "
                                   "&& MathJax.startup.promise", timeout=30_000)
            page.evaluate("() => MathJax.startup.promise")
            typeset = page.locator(".arithmatex mjx-container").count()
            assert typeset >= equations, (f"{page_name}: {typeset} of {equations} equations "
                                          "typeset by MathJax")
            assert page.locator("mjx-merror").count() == 0, f"{page_name}: a TeX error"
        images = page.evaluate("() => Array.from(document.images).map("
                               "i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        if page_name.startswith(("chapters/0", "results/paper-mnist")):
            assert images, f"{page_name} shows no figure"
        broken = [src for src, complete, width in images if not (complete and width > 0)]
        assert not broken, f"{page_name}: images that did not load: {broken}"
        page.wait_for_load_state("networkidle")
        assert not watch.outside, f"{page_name} requested other hosts: {watch.outside}"
        assert not watch.errors, f"{page_name}: {watch.errors}"
    finally:
        context.close()


def test_search_finds_the_genetic_encoding_chapter(browser, server):
    context, page, watch = open_page(browser, server, "")
    try:
        box = page.locator("input.md-search__input")
        box.click()  # the search field of the header (a desktop-width page shows it)
        box.press_sequentially("cluster strength", delay=20)
        link = page.locator(".md-search-result__item a.md-search-result__link").first
        link.wait_for(timeout=30_000)
        hrefs = page.eval_on_selector_all(".md-search-result__item a.md-search-result__link",
                                          "links => links.map(a => a.getAttribute('href'))")
        assert any("chapters/05_genetic_encoding/" in h for h in hrefs), hrefs
        assert not watch.outside and not watch.errors, (watch.outside, watch.errors)
    finally:
        context.close()


def test_screenshots_at_phone_and_desktop_widths(browser, server, tmp_path):
    out = Path(os.environ.get("MINIEVO_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    shots = []
    # the home page from its top; chapter 5 at its section on synapse probabilities (equations)
    for name, path, heading in (("home", "", None),
                                ("genetic-encoding", "chapters/05_genetic_encoding/",
                                 "Synapses: strength and probability")):
        for label, width, height in (("phone", 390, 844), ("desktop", 1280, 800)):
            context, page, _ = open_page(browser, server, path, width, height)
            try:
                if page.locator(".arithmatex").count():
                    page.evaluate("() => MathJax.startup.promise")
                if heading:
                    page.locator("h2", has_text=heading).first.evaluate(
                        "h => { h.scrollIntoView({block: 'start'}); window.scrollBy(0, -64); }")
                page.wait_for_timeout(600)  # the header's title fades after a scroll
                target = out / f"{name}-{label}.png"
                page.screenshot(path=str(target))
                assert page.evaluate("() => document.documentElement.scrollWidth") <= width, (
                    f"{path or 'home'} scrolls sideways at {width} px")
                shots.append(target)
            finally:
                context.close()
    for target in shots:
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 10_000
