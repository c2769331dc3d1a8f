"""The web UI in a real browser: Debian's chromium driven by Playwright (never a browser download)."""

import re
import time

from tests.serve.conftest import app_in_thread, browser_page, needs_chromium


@needs_chromium
def test_fill_mask_in_the_browser(tiny_models, tmp_path):
    from playwright.sync_api import expect

    from lmtune.serve.app import create_app

    with app_in_thread(create_app([tiny_models["mlm"]])) as url, browser_page() as page:
        page.goto(url + "/", wait_until="networkidle")
        box = page.locator("#fill-mask-input textarea, #fill-mask-input input").first
        box.fill("the [MASK] walks the castle")
        page.locator("#fill-mask-submit").click()
        table = page.locator(".fill-mask-table").first  # model A's (B, the optional second, is empty)
        # The table fills with one row per prediction (5 by default), each with a probability.
        expect(table).to_contain_text(re.compile(r"\b0\.\d{2,}"), timeout=30000)
        text = table.inner_text()
        page.screenshot(path=str(tmp_path / "fill-mask.png"), full_page=True)
    assert "probability" in text and len(re.findall(r"\b0\.\d{2,}|\b1\.0\b", text)) == 5
    assert (tmp_path / "fill-mask.png").stat().st_size > 10_000


@needs_chromium
def test_chat_in_the_browser(tiny_chat_run, tmp_path):
    """Two turns in the Chat tab, each reply streamed into the conversation; Clear empties it."""
    from playwright.sync_api import expect

    from lmtune.infer import load
    from lmtune.infer.chat import ChatSession
    from lmtune.infer.generate import GenerationSettings
    from lmtune.serve.app import create_app

    loaded = load(str(tiny_chat_run), dtype="fp32")
    expected = ChatSession(loaded, settings=GenerationSettings(max_new_tokens=12, temperature=0.0))
    first = "".join(expected.reply("Who guards the gate number 1?")).strip()
    second = "".join(expected.reply("And gate number 5?")).strip()
    with app_in_thread(create_app({"chat-model": loaded})) as url, browser_page() as page:
        page.goto(url + "/", wait_until="networkidle")
        page.get_by_role("tab", name="Chat").click()
        for slider, value in (("#chat-temperature", "0"), ("#chat-max-tokens", "12")):  # greedy, as expected
            number = page.locator(f"{slider} input[type=number]")
            number.fill(value)
            number.press("Enter")
        box = page.locator("#chat-input textarea, #chat-input input").first
        history = page.locator("#chat-history")
        for question, answer in (("Who guards the gate number 1?", first), ("And gate number 5?", second)):
            box.fill(question)
            page.locator("#chat-send").click()
            expect(history).to_contain_text(answer, timeout=30000)
        page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
        page.locator("#chat-clear").click()
        expect(history).not_to_contain_text(first, timeout=10000)
    assert (tmp_path / "chat.png").stat().st_size > 10_000


@needs_chromium
def test_the_workbench_in_the_browser(tmp_path):
    """Upload a text file, train a tiny preset, see the curve and the report; start a second run, stop it and
    resume it; load the first into the tabs and generate from it. All through the page."""
    from playwright.sync_api import expect

    from lmtune.serve.app import create_app
    from lmtune.serve.workbench import Workbench
    from tests.conftest import make_story

    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    small, large = tmp_path / "tale.txt", tmp_path / "saga.txt"
    small.write_text(make_story(3, 60))
    large.write_text("\n\n".join(make_story(i, 40) for i in range(40)))
    with app_in_thread(create_app([], workbench=Workbench(data, runs))) as url, browser_page() as page:
        page.goto(url + "/", wait_until="networkidle")
        queue, status = page.locator("#train-queue"), page.locator("#train-status")

        def train(path, minutes: str) -> None:
            page.locator("#train-upload input[type=file]").set_input_files(str(path))
            uploaded = page.locator(f"#train-upload td[aria-label='{path.name}']").first  # the file's row
            expect(uploaded).to_be_visible(timeout=30000)
            model = page.locator("#train-model input").first
            model.fill("gpt-tiny")
            model.press("Enter")
            page.locator("#train-minutes input").first.fill(minutes)
            page.locator("#train-start").click()

        page.locator("#train-upload input[type=file]").set_input_files(str(small))
        page.locator("#train-check").click()
        expect(page.locator("#train-detected")).to_contain_text("objective: clm", timeout=60000)
        train(small, "0.2")
        expect(status).to_contain_text("queued: tale", timeout=30000)
        expect(queue).to_contain_text("done", timeout=240000)
        expect(page.locator("#train-report")).to_contain_text("held-out metric", timeout=30000)
        expect(page.locator("#train-curve img, #train-curve svg, #train-curve canvas").first).to_be_visible()
        page.screenshot(path=str(tmp_path / "workbench.png"), full_page=True)

        train(large, "2")
        expect(status).to_contain_text("queued: saga", timeout=30000)
        expect(queue).to_contain_text("running", timeout=60000)
        deadline = time.monotonic() + 120
        while not (runs / "saga" / "metrics.jsonl").exists() and time.monotonic() < deadline:
            page.wait_for_timeout(500)  # training, not still starting: a stop now leaves a checkpoint to resume
        page.locator("#train-stop").click()
        expect(queue).to_contain_text("stopped", timeout=120000)
        page.locator("#train-resume").click()
        expect(status).to_contain_text("resuming saga", timeout=30000)
        expect(queue).to_contain_text("running", timeout=60000)

        run = page.locator("#train-run input").first
        run.fill("tale")
        run.press("Enter")
        page.locator("#train-load").click()
        expect(status).to_contain_text("loaded tale into the tabs", timeout=60000)
        page.get_by_role("tab", name="Generate").click()
        page.locator("#generate-input textarea").first.fill("The king")
        page.locator("#generate-submit").click()
        output = page.locator("#generate-output textarea").first
        expect(output).not_to_have_value("", timeout=60000)
        assert output.input_value().startswith("The king") and len(output.input_value()) > len("The king")
    assert (tmp_path / "workbench.png").stat().st_size > 10_000
