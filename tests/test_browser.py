"""Open every page of the built book in a real browser (Playwright driving Debian's Chromium).

For each page: math is typeset (no raw TeX left), there are 0 console errors, 0 requests to any other
host, every image has loaded, widgets render, and exercise solutions stay hidden until clicked.
Skips with a reason when there is no Chromium or no build (run `python3 dev.py book` first).
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "_build" / "html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html")) if SITE.exists() else []
PAGES = [p for p in PAGES if not p.startswith("_") and p not in {"genindex.html", "search.html", "index.html"}]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)"),
    pytest.mark.skipif(not PAGES, reason="no built book in _build/html (run `python3 dev.py book`)"),
]


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SITE))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def _open(browser, server, page_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors, foreign = [], []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)

    def route(r):
        if urlparse(r.request.url).hostname in {"127.0.0.1", "localhost"} or r.request.url.startswith("data:"):
            r.continue_()
        else:
            foreign.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(f"{server}/{page_path}", wait_until="load")
    page.wait_for_function("() => !window.MathJax || (window.MathJax.startup && window.MathJax.startup.promise)")
    page.evaluate("() => window.MathJax && window.MathJax.startup ? window.MathJax.startup.promise : null")
    page.wait_for_timeout(300)
    return context, page, errors, foreign


@pytest.mark.parametrize("page_path", PAGES)
def test_page(browser, server, page_path):
    context, page, errors, foreign = _open(browser, server, page_path)
    try:
        assert not foreign, f"requests to other hosts: {foreign[:5]}"
        assert not errors, f"console errors: {errors[:5]}"
        raw = page.evaluate("""() => [...document.querySelectorAll('.math, span.math, div.math')]
            .filter(el => !el.querySelector('mjx-container')).map(el => el.textContent.slice(0, 60))""")
        assert not raw, f"math left as raw TeX: {raw[:3]}"
        broken = page.evaluate("""() => [...document.images].filter(img => !img.complete || img.naturalWidth === 0)
            .map(img => img.src)""")
        assert not broken, f"images not loaded: {broken[:3]}"
        if page.locator("script[type='application/vnd.jupyter.widget-view+json']").count():
            # progress bars closed with leave=False keep a view but render nothing: wait, then look for errors
            try:
                page.wait_for_selector(".jupyter-widgets", timeout=5_000)
            except Exception:
                pass
            assert page.get_by_text("Error displaying widget").count() == 0, "a widget failed to render"
        solutions = page.locator(".solution.dropdown, .admonition.solution.dropdown")
        if solutions.count():
            body = solutions.first.locator(".solution-content, section, .admonition-body").first
            first = solutions.first
            assert "toggle-hidden" in (first.get_attribute("class") or "") or not body.is_visible(), \
                "a solution is visible before it was clicked"
            first.locator(".toggle-button, button").first.click()
            page.wait_for_timeout(400)
            assert body.is_visible(), "a solution did not open when clicked"
    finally:
        context.close()


def test_static_widgets_work(browser, server):
    """The gradient-descent page's sliders switch pictures in the browser, without a kernel."""
    context, page, errors, foreign = _open(browser, server, "notebooks/05_optimization_gradient_descent.html")
    try:
        page.wait_for_selector(".widget-slider", timeout=10_000)
        assert page.locator(".widget-slider").count() >= 2, "the learning-rate and condition-number sliders"
        visible = "() => [...document.querySelectorAll('.widget-image')].filter(i => i.offsetParent !== null).length"
        assert page.evaluate(visible) >= 1, "no trajectory picture is shown"
    finally:
        context.close()


def test_screenshot_of_setup_page(browser, server):
    """Keep a screenshot of the setup page (math + widget) for people to look at."""
    context, page, errors, foreign = _open(browser, server, "notebooks/00_setup.html")
    try:
        widget = page.locator(".widget-hslider").first
        widget.scroll_into_view_if_needed()
        assert page.locator(".widget-htmlmath mjx-container").count() >= 1, "math in a widget label is not typeset"
        page.wait_for_timeout(300)
        out = ROOT / "_build" / "screenshots"
        out.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out / "00_setup_widget.png"))
        assert widget.is_visible()
    finally:
        context.close()


def test_buttons_follow_the_repository_setting(browser, server):
    """No repository set: no launch or repository buttons (they would lead nowhere); the download stays."""
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from repository import current_url

    context, page, errors, foreign = _open(browser, server, "notebooks/00_setup.html")
    try:
        links = page.evaluate("() => [...document.querySelectorAll('.article-header-buttons a')].map(a => a.href)")
        launch = [href for href in links if "colab" in href or "mybinder" in href]
        url = current_url(ROOT)
        assert bool(launch) == bool(url), f"launch links {launch} with repository.url={url!r}"
        assert any(href.endswith(".ipynb") for href in links), f"no .ipynb download link among {links}"
    finally:
        context.close()
