"""The built book in a real browser: Debian's Chromium, headless, driven by Playwright, on a loopback server.

Run after `bash scripts/build_book.sh`:  python -m pytest tests/site -q
Screenshots of the front page and a chapter are kept in the test's temporary directory (printed with -s).
"""

import functools
import json
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "_build" / "html"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


def chapter_pages():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [f for f in files if f.startswith("chapters/")]


def has_widgets(page_file):
    nb = json.loads((ROOT / f"{page_file}.ipynb").read_text())
    return bool(nb["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state"))


@pytest.fixture(scope="module")
def server():
    if not (SITE / "index.html").is_file():
        pytest.fail(f"No built site at {SITE}: run `bash scripts/build_book.sh` first.")
    handler = functools.partial(type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                                directory=str(SITE))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def open_page(browser, url, wait_until="networkidle"):
    """Load a page; return it with the list of JavaScript errors it raised (console errors and exceptions)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"exception: {e}"))
    page.goto(url, wait_until=wait_until)
    return page, errors


@pytest.mark.parametrize("page_file", chapter_pages())
def test_chapter_page_loads_cleanly_with_images_math_and_widgets(browser, server, page_file, tmp_path_factory):
    page, errors = open_page(browser, f"{server}/{page_file}.html")
    page.wait_for_timeout(500)
    assert errors == [], f"{page_file}: JavaScript errors: {errors}"
    images = page.eval_on_selector_all("main img", "els => els.map(i => [i.src, i.complete && i.naturalWidth > 0])")
    assert images, f"{page_file}: no images"
    assert all(ok for _, ok in images), f"{page_file}: images not decoded: {[s for s, ok in images if not ok]}"
    if "$" in (ROOT / f"{page_file}.ipynb").read_text():
        page.wait_for_selector("mjx-container", state="attached", timeout=10_000)  # some sit in hidden views
        assert page.locator("mjx-container:visible").count() > 0, f"{page_file}: no typeset math is visible"
    if has_widgets(page_file):
        # attached, not visible: some views are hidden by design (the unselected children of a Stack)
        page.wait_for_selector(".jupyter-widgets", state="attached", timeout=10_000)
        assert page.locator(".jupyter-widgets:visible").count() > 0, f"{page_file}: no widget is visible"
        assert "interactive(children=" not in page.inner_text("main"), "a widget was shown as raw text"
    source = (ROOT / f"{page_file}.ipynb").read_text()
    if "prediction_browser(" in source or "chapter.show(" in source:  # a slider linked to rendered views
        page.wait_for_selector(".jupyter-widgets .widget-slider", timeout=10_000)
        views = page.eval_on_selector_all(".jupyter-widgets img", "els => els.filter(i => i.naturalWidth > 0).length")
        assert views > 0, f"{page_file}: the prediction browser shows no image"
        # every slider (the prediction browser, the explorers) shows exactly one of its views at a time
        shown = ("() => Array.from(document.querySelectorAll('.widget-slider')).map(s => s.closest('.widget-vbox'))"
                 ".map(box => Array.from(box.querySelectorAll('.widget-image'))"
                 ".filter(i => i.offsetParent !== null && i.naturalWidth > 0).map(i => i.src))")
        before = page.evaluate(shown)
        assert before and all(len(v) == 1 for v in before), \
            f"{page_file}: each slider should show one view, they show {[len(v) for v in before]}"
        page.locator(".jupyter-widgets .widget-slider .noUi-handle, .jupyter-widgets .widget-slider [role=slider]"
                     ).first.focus()
        page.keyboard.press("ArrowRight")  # the first slider is linked to its views in the page itself (jslink)
        changed = f"before => {{ const src = ({shown})()[0]; return src.length === 1 && src[0] !== before; }}"
        page.wait_for_function(changed, arg=before[0][0], timeout=5_000)  # times out if the view does not change
    colab = page.eval_on_selector_all("a[href*='colab.research.google.com']", "els => els.map(a => a.href)")
    assert colab and all(h.endswith(f"/blob/main/{page_file}.ipynb") for h in colab), colab
    if page_file == chapter_pages()[1]:
        shot = tmp_path_factory.mktemp("screenshots") / "chapter.png"
        page.screenshot(path=str(shot), full_page=False)
        print("chapter screenshot:", shot)
    page.close()


def test_front_page_and_sidebar_reach_every_chapter(browser, server, tmp_path_factory):
    # index.html is a bare redirect that links no icon, so browsers ask for /favicon.ico: it must exist, or the
    # 404 lands in the console whenever the request beats the redirect
    icon = browser.new_page()
    assert icon.request.get(f"{server}/favicon.ico").status == 200
    icon.close()
    page, errors = open_page(browser, f"{server}/index.html")
    assert errors == []
    links = page.eval_on_selector_all("nav.bd-docs-nav a", "els => els.map(a => a.getAttribute('href'))")
    reached = {re.sub(r"^(\.\./|\./)*", "", h).split("#")[0] for h in links}
    missing = [f for f in chapter_pages() if f"{f}.html" not in reached]
    assert not missing, f"the sidebar does not link {missing}"
    shot = tmp_path_factory.mktemp("screenshots") / "front.png"
    page.screenshot(path=str(shot))
    print("front page screenshot:", shot)
    page.close()


def search_terms():
    """A head's name, taken from the results records, and the chapter that builds it."""
    terms = []
    for path in sorted((ROOT / "book" / "results").glob("*.json")):
        record = json.loads(path.read_text())
        chapter = next((f for f in chapter_pages() if Path(f).name.startswith(f"{record['chapter']:02d}_")), None)
        if chapter and record["chapter"] > 1:
            terms.append((re.split(r"[^A-Za-z0-9+-]", record["head"])[0], chapter))
    return terms


@pytest.mark.parametrize("term,chapter", search_terms())
def test_search_finds_the_chapter_of_a_head(browser, server, term, chapter):
    # wait for the search to say it has finished (results are listed one by one), not for the network to idle
    page, errors = open_page(browser, f"{server}/search.html?q={term}", wait_until="domcontentloaded")
    page.wait_for_function("() => (document.querySelector('#search-results .search-summary') || {}).textContent"
                           "?.startsWith('Search finished')", timeout=15_000)
    page.wait_for_load_state("load")
    hits = page.eval_on_selector_all("#search-results li a", "els => els.map(a => a.getAttribute('href'))")
    assert any(chapter in h for h in hits), f"searching {term!r} did not find {chapter}: {hits}"
    assert errors == []
    page.close()
