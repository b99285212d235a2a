"""The live page in a real browser: headless Chromium (Debian's) driven by Playwright against ``oneforcing serve``'s
app on a local port, streaming the study's One-Forcing student. Run by ``make test-browser`` (CI installs Chromium);
``ONEFORCING_SCREENSHOT=path.png`` keeps the screenshot (the README's picture of the page)."""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
STUDENT = "assets/study/of_framewise_1step_ffe_seed0.safetensors"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    import uvicorn

    from oneforcing.commands.serve import load_student
    from oneforcing.serving.app import create_app

    student, _ = load_student(STUDENT)
    port = free_port()
    config = uvicorn.Config(create_app(student, max_streams=1, max_fps=24), host="127.0.0.1", port=port,
                            log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline, "the server did not start in 20 s"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip("no Chromium: install Debian's (apt-get install chromium) to run the browser test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def count(page, element: str) -> int:
    return int(page.text_content(element) or 0)


def test_the_page_streams_switches_prompt_and_stops(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 900, "height": 640})
    page.goto(server)
    page.wait_for_selector("#status:has-text('Connected')", timeout=10_000)
    page.fill("#prompt", "a large red circle moving right slowly")
    page.click("#start")
    page.wait_for_function("Number(document.getElementById('frames').textContent) >= 20", timeout=20_000)
    assert page.get_attribute("#frame", "src").startswith("data:image/png;base64,")
    assert float(page.text_content("#fps")) > 5 and page.text_content("#ttff").endswith(" ms")
    shot = Path(os.environ.get("ONEFORCING_SCREENSHOT") or tmp_path / "page.png")
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 5_000
    page.fill("#prompt", "a large blue circle moving right slowly")
    page.click("#apply")
    page.wait_for_selector("#status:has-text('Prompt switched at frame')", timeout=10_000)
    assert page.text_content("#current") == "a large blue circle moving right slowly"
    switched_at = count(page, "#frames")
    page.wait_for_function(f"Number(document.getElementById('frames').textContent) >= {switched_at + 6}",
                           timeout=20_000)
    page.fill("#prompt", "a purple elephant")
    page.click("#apply")
    page.wait_for_selector("#status.error:has-text('outside the toy vocabulary')", timeout=10_000)
    still = count(page, "#frames")
    page.wait_for_function(f"Number(document.getElementById('frames').textContent) > {still + 5}", timeout=10_000)
    page.click("#stop")
    page.wait_for_selector("#status:has-text('Stopped.')", timeout=10_000)
    stopped = count(page, "#frames")
    time.sleep(0.5)
    assert count(page, "#frames") == stopped, "no frame after Stop"
    page.close()


def test_a_second_page_beyond_the_limit_is_told_busy(server, browser):
    first, second = browser.new_page(), browser.new_page()
    first.goto(server)
    first.wait_for_selector("#status:has-text('Connected')", timeout=10_000)
    second.goto(server)
    second.wait_for_selector("#status.error:has-text('The server is busy')", timeout=10_000)
    first.close()
    second.close()
