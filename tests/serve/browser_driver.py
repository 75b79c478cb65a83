"""Drives the upload page in headless Chromium with Playwright; run as a child process by test_browser.py.

Running the browser in its own process group lets the test put a hard time limit on everything
Playwright does (driver start-up, browser launch, page waits) and kill the whole group if it is
ever stuck, so a browser problem fails one test instead of hanging the suite.

Usage: ``python browser_driver.py SCENARIO JSON_ARGS`` -> prints one JSON object with what it saw.
"""

from __future__ import annotations

import json
import sys
import traceback

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Records whether the upload progress bar reached 100 % and the "analysing" spinner was shown
# (both are transient, so they are watched while they happen rather than polled afterwards).
WATCH_PROGRESS = """
window.__seen = {upload100: false, analysing: false};
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("upload-bar");
  const spin = document.getElementById("analysing");
  new MutationObserver(() => { if (Number(bar.value) === 100) window.__seen.upload100 = true; })
    .observe(bar, {attributes: true});
  new MutationObserver(() => { if (!spin.hidden) window.__seen.analysing = true; })
    .observe(spin, {attributes: true});
});
"""

WAIT_MS = 120_000


def _open(p, args: dict, path: str = "/"):
    browser = p.chromium.launch(executable_path=args["chromium"], args=CHROMIUM_ARGS, headless=True)
    context = browser.new_context(viewport={"width": 1000, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    if path == "/":
        page.add_init_script(WATCH_PROGRESS)
    seen: dict = {"requests": [], "errors": []}
    page.on("request", lambda req: seen["requests"].append(req.url))
    page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
    page.goto(args["base"] + path)
    return browser, page, seen


def verdict(p, args: dict) -> dict:
    browser, page, seen = _open(p, args)
    # (selectors, not wait_for_function: the page's CSP rightly forbids the eval that needs)
    page.wait_for_selector("#model-line:has-text('Model:')")
    seen["model_line"] = page.inner_text("#model-line")
    seen["limit_mb"] = page.inner_text("#limit-mb")
    # keyboard: the skip link, then the file input (inside the drop zone label) take focus
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    seen["focused_after_two_tabs"] = page.evaluate("document.activeElement.id")

    page.set_input_files("#file", args["video"])
    page.wait_for_selector("#verdict:visible")
    seen["verdict"] = page.inner_text("#verdict")
    seen["verdict_text"] = page.inner_text("#verdict-text")
    seen["file_line"] = page.inner_text("#file-line")
    seen["meter"] = page.get_attribute("#meter", "aria-valuenow")
    seen["explain_visible"] = page.is_visible("#explain-img")
    seen["explain_width"] = page.evaluate("document.getElementById('explain-img').naturalWidth")
    seen["frames"] = page.inner_text("#fact-frames")
    seen["progress_hidden"] = page.is_hidden("#progress")
    seen["message_hidden"] = page.is_hidden("#message")
    seen["progress_seen"] = page.evaluate("window.__seen")
    page.screenshot(path=args["screenshot"], full_page=True)
    # the heat-map strip: captioned with the uploaded file's name, opens at full size in a dialog
    seen["explain_name"] = page.inner_text("#explain-name")
    seen["explain_links"] = [page.get_attribute(sel, "href") for sel in ("#explain-full", "#explain-save")]
    page.click("#explain-open")
    page.wait_for_selector("#explain-dialog[open]")
    seen["dialog_name"] = page.inner_text("#explain-dialog-name")
    seen["dialog_img"] = page.evaluate(
        "(() => { const i = document.getElementById('explain-full-img');"
        " return [i.naturalWidth, i.getBoundingClientRect().width]; })()")
    page.click("#explain-close")
    page.wait_for_selector("#explain-dialog", state="hidden")
    seen["dialog_closed"] = not page.evaluate("document.getElementById('explain-dialog').open")

    # a non-video gets a clear message, not a verdict
    page.click("#again")
    page.set_input_files("#file", args["bad"])
    page.wait_for_selector("#message:visible")
    seen["bad_title"] = page.inner_text("#message-title")
    seen["bad_text"] = page.inner_text("#message-text")
    page.screenshot(path=args["screenshot_bad"], full_page=True)
    browser.close()
    return seen


def token(p, args: dict) -> dict:
    browser, page, seen = _open(p, args)
    page.wait_for_selector("#model-line:has-text('access token')")
    page.set_input_files("#file", args["video"])
    page.wait_for_selector("#message:visible")
    seen["first_title"] = page.inner_text("#message-title")
    page.fill("#token", args["token"])
    page.dispatch_event("#token", "change")
    page.click("#message-again")
    page.set_input_files("#file", args["video"])
    page.wait_for_selector("#verdict:visible")
    seen["verdict"] = page.inner_text("#verdict")
    browser.close()
    return seen


def docs(p, args: dict) -> dict:
    """The offline API reference renders every operation of /openapi.json."""
    browser, page, seen = _open(p, args, "/docs")
    page.on("console", lambda msg: msg.type == "error" and seen["errors"].append(msg.text))
    page.wait_for_selector("#endpoints .api-op")
    seen["api_line"] = page.inner_text("#api-line")
    seen["operations"] = page.locator("#endpoints .api-op h2").all_inner_texts()
    seen["predict_text"] = page.inner_text("[id='post-/api/v1/predict']")
    seen["predict_code"] = page.locator("[id='post-/api/v1/predict'] p code").all_inner_texts()
    seen["predict_body"] = page.inner_text("[id='post-/api/v1/predict'] ul li")
    seen["response_code"] = page.locator("[id='post-/api/v1/predict'] table td code").all_inner_texts()
    seen["healthz_text"] = page.inner_text("[id='get-/healthz']")
    seen["curl"] = page.inner_text("#curl-example")
    browser.close()
    return seen


def main() -> int:
    scenario, args = sys.argv[1], json.loads(sys.argv[2])
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as p:
            result = {"verdict": verdict, "token": token, "docs": docs}[scenario](p, args)
    except Exception:  # report, so the test shows what went wrong in the browser
        print(json.dumps({"exception": traceback.format_exc()}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
