"""The web UI in a real browser: Debian's chromium driven by Playwright (never a browser download)."""

import re
import shutil
import threading
import time

import pytest

from tests.conftest import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it where apt works)"
)
def test_fill_mask_in_the_browser(tiny_models, tmp_path):
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    import uvicorn
    from playwright.sync_api import expect, sync_playwright

    from lmtune.serve.app import create_app

    mlm = tiny_models["mlm"]
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app([mlm]), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--disable-quic",
                ],
            )
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            box = page.locator("#fill-mask-input textarea, #fill-mask-input input").first
            box.fill("the [MASK] walks the castle")
            page.locator("#fill-mask-submit").click()
            table = page.locator(".fill-mask-table")
            # The table fills with one row per prediction (5 by default), each with a probability.
            expect(table).to_contain_text(re.compile(r"\b0\.\d{2,}"), timeout=30000)
            text = table.inner_text()
            page.screenshot(path=str(tmp_path / "fill-mask.png"), full_page=True)
            browser.close()
        assert "probability" in text and len(re.findall(r"\b0\.\d{2,}|\b1\.0\b", text)) == 5
        assert (tmp_path / "fill-mask.png").stat().st_size > 10_000
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
