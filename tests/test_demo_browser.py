"""The demo in a real browser: Debian's headless Chromium driven by Playwright's Python package.

Loads the page, picks a span from the editor's own selection, fills the example's hole by clicking, applies
the result and saves a screenshot. Needs ``/usr/bin/chromium`` (apt: chromium) and ``playwright`` (pip;
no browser download: the system Chromium is used); skipped with the reason when either is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest

CHROMIUM = os.environ.get("REMASK_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")

from assistant.api import Settings  # noqa: E402
from assistant.engine import Engine  # noqa: E402
from ui.demo.app import build_app, launch_app, load_examples  # noqa: E402

EDITOR = "#rm-editor .cm-content"


@pytest.fixture(scope="module")
def page_url(test_model_dir):
    engine = Engine.load(str(test_model_dir), settings=Settings(max_new_tokens=12))
    demo = build_app(engine, model_dir=test_model_dir)
    _, url, _ = launch_app(demo, host="127.0.0.1", port=None, prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        demo.close()


@pytest.fixture
def page(page_url):
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        except Exception as e:  # a broken Chromium install is an environment problem, not a demo bug
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {str(e).splitlines()[0]}")
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1200})
            pg.set_default_timeout(60_000)
            external: list[str] = []
            pg.on("request", lambda r: external.append(r.url) if not r.url.startswith((page_url, "data:")) else None)
            pg.goto(page_url)
            pg.wait_for_selector(EDITOR)
            yield pg
            assert external == [], f"the page fetched from outside the server: {external}"
        finally:
            browser.close()


def _editor_text(pg) -> str:
    return pg.eval_on_selector(EDITOR, "el => el.cmView ? el.cmView.view.state.doc.toString() : "
                                       "(el.cmTile ? el.cmTile.root.view.state.doc.toString() : el.innerText)")


def test_fill_a_hole_by_clicking(page, tmp_path):
    original = load_examples()["intervals.py"]
    assert _editor_text(page) == original  # the example is loaded exactly, trailing newline included
    assert "remask" in page.title()
    page.wait_for_function("document.body.innerText.includes('Holes in the code (1 found')")  # engine.holes ran

    # The span from the editor's own selection: put the cursor on line 9 (the <FILL> line), select it.
    page.locator(f"{EDITOR} .cm-line").nth(8).click()
    page.keyboard.press("Home")
    page.keyboard.press("Shift+End")
    page.click("#rm-use-selection")
    page.wait_for_function("document.querySelector('#rm-lines textarea, #rm-lines input').value === '9'")
    chars = page.input_value("#rm-chars textarea, #rm-chars input")
    start, end = (int(x) for x in chars.split("-"))
    assert original[start:end].strip() == "<FILL>"

    page.click("#rm-fill")
    page.wait_for_function("document.querySelector('#rm-status').innerText.includes('fill done')")
    assert "rm-gen" in page.inner_html("#rm-live")  # the generated text, highlighted in the live view
    assert page.locator("#rm-diff .rm-del").count() >= 1  # the <FILL> line, removed in the diff

    page.click("#rm-apply")
    page.wait_for_function("document.querySelector('#rm-status').innerText.includes('Applied')")
    new = _editor_text(page)
    line_start, line_end = original.rfind("\n", 0, start) + 1, original.index("\n", end)
    assert "<FILL>" not in new  # the engine may take the hole's whole line; nothing outside it changes
    assert new.startswith(original[:line_start]) and new.endswith(original[line_end:])

    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("REMASK_SCREENSHOT")
    if keep:  # for a person to look at: REMASK_SCREENSHOT=/tmp/demo.png pytest tests/test_demo_browser.py
        shutil.copy(shot, keep)


def test_the_holes_dropdown_shows_the_hole_and_picking_it_sets_the_span(page):
    """It was blank under a label saying "1 found": the closed dropdown shows the hole; choosing it (the one
    already shown) puts its offsets into 'Characters'; showing it alone does not."""
    original = load_examples()["intervals.py"]
    page.wait_for_function("document.body.innerText.includes('Holes in the code (1 found')")
    box = page.locator("#rm-holes input")
    page.wait_for_function("document.querySelector('#rm-holes input').value !== ''")
    assert "<FILL>" in box.input_value()
    assert page.input_value("#rm-chars textarea, #rm-chars input") == ""  # shown, not picked
    box.click()
    page.locator("#rm-holes li.item").first.click()
    page.wait_for_function("document.querySelector('#rm-chars textarea, #rm-chars input').value !== ''")
    start, end = (int(x) for x in page.input_value("#rm-chars textarea, #rm-chars input").split("-"))
    assert original[start:end].strip() == "<FILL>"
