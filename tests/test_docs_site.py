"""The documentation site: built offline from the notebooks, every notebook a page, and pages that load cleanly in a
real browser (headless Chromium) with no console errors and every image present."""
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, str(ROOT / "tools" / "docs.py"), "site", "--out", str(out)], check=True, cwd=ROOT)
    return out


def notebooks():
    return sorted(p.relative_to(ROOT / "nbs") for p in (ROOT / "nbs").rglob("*.ipynb")
                  if ".ipynb_checkpoints" not in p.parts)


def test_every_notebook_has_a_page(site):
    for nb in notebooks():
        page = site / nb.with_suffix(".html")
        assert page.exists(), f"no page for {nb}"
        assert "<nav" in page.read_text(), f"{page} has no navigation"
    assert (site / "index.html").exists()
    assert (site / "search" / "search_index.json").exists()


def test_readme_is_rendered_from_index_notebook():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "docs.py"), "readme", "--check"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="session")
def chromium():
    """The Chromium to drive; where there is none, the test skips and says why (`make test` installs it only on a root
    machine with apt-get, as CI is), or fails where DEEPLENSE_REQUIRE_BROWSER is set (CI: the browser test must run)."""
    exe = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if exe: return exe
    root_apt = os.geteuid() == 0 and shutil.which("apt-get")
    why = ("root with apt-get here: `make browser` installs it" if root_apt else "`make test` installs it only as root "
           "with apt-get, and this is " + ("not root" if os.geteuid() else "without apt-get"))
    msg = f"Chromium is not installed (Debian package `chromium`; {why})"
    if browser_required(): pytest.fail(msg + " and DEEPLENSE_REQUIRE_BROWSER is set")
    pytest.skip(msg)


def browser_required() -> bool:
    "CI's setting (.ci/run): a browser test that cannot run fails instead of skipping. Empty or 0 is off."
    return os.environ.get("DEEPLENSE_REQUIRE_BROWSER", "").strip() not in ("", "0")


@pytest.fixture(scope="session")
def server(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def browser_pages():
    pages = ["index.html"] + [str(nb.with_suffix(".html")) for nb in notebooks() if nb.parts[0] == "tutorials"]
    return pages + ["02_simulate.html"]


# Wide tables and code blocks that run past the content column's right edge with no scrolling box around them are cut
# off for the reader: the elements that do, as [tag, first characters].
CUT_OFF = """() => {
  const col = document.querySelector('.md-content').getBoundingClientRect();
  const scrolls = a => ['auto', 'scroll'].includes(getComputedStyle(a).overflowX) && a.getBoundingClientRect().right <= col.right + 1;
  return [...document.querySelectorAll('.md-content table, .md-content pre')].filter(e => {
    if (e.getBoundingClientRect().right <= col.right + 1) return false;
    for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) if (scrolls(a)) return false;
    return true;
  }).map(e => [e.tagName, e.textContent.slice(0, 40)]);
}"""


@pytest.mark.parametrize("page", browser_pages())
def test_page_loads_in_headless_chromium(chromium, server, page):
    "`chromium` first: where there is none, the test skips before building the site."
    try: from playwright import sync_api
    except ImportError:
        if browser_required(): pytest.fail("playwright (dev dependency) is not installed and DEEPLENSE_REQUIRE_BROWSER is set")
        pytest.skip("playwright (dev dependency) drives Chromium, and it is not installed")
    errors, failed = [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("requestfailed", lambda r: failed.append(r.url))
        pg.goto(f"{server}/{page}", wait_until="networkidle")
        pg.wait_for_timeout(300)
        images = pg.eval_on_selector_all("img", "els => els.map(e => [e.src.slice(0, 60), e.complete && e.naturalWidth > 0])")
        title = pg.title()
        has_nav = pg.locator("nav.md-nav").count() > 0
        cut = pg.evaluate(CUT_OFF)
        browser.close()
    assert not failed, f"failed requests on {page}: {failed}"
    assert not errors, f"console errors on {page}: {errors}"
    broken = [src for src, ok in images if not ok]
    assert not broken, f"images that did not load on {page}: {broken}"
    assert has_nav and "deeplense_fastai" in title
    assert not cut, f"code blocks or tables cut off by the content column on {page} (they should scroll): {cut}"
    if page == "02_simulate.html":
        assert sum(ok for _, ok in images) >= 2, "the simulator page should show its figures"


def test_pages_carry_no_path_of_the_building_machine(site):
    "Stored outputs show temp folders, the checkout and the venv of whoever ran them; a built page shows none of them."
    import re
    pat = re.compile(r"/(?:tmp|work|home|root|Users|scratch)/[^\s'\"<>`]+/")
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(errors="replace")
        hits = set(pat.findall(text)) | {p for p in (str(ROOT), sys.prefix) if p in text}
        assert not hits, (str(page.relative_to(site)), sorted(hits)[:5])
