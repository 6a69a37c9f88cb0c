"""app.py in a real browser: the server runs as a subprocess on a free loopback port, pointed at a tiny
checkpoint folder, and headless Debian Chromium (pip playwright, no browser download) drives it.

A real photo and 2 s of real speech go in; the mp4 that comes back (downloaded through the page) must
have a video and an audio stream, and the page's progress bar must have shown the denoising. Also: the
error message when no image is given, the language toggle, size adjust/swap, the Audio Extraction tab
(on the downloaded video) feeding the driving audio, and a screenshot (``UPDATE_APP_SCREENSHOT=1``
copies it to docs/images/app.png).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import pytest

from tests.conftest import EXAMPLES, REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
SERVER_START_S = 90
GENERATE_S = 180

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip playwright is a test dependency")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian chromium at /usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def speech_2s(tmp_path_factory) -> Path:
    import soundfile as sf

    from wan.audio import load_audio

    path = tmp_path_factory.mktemp("audio") / "speech_2s.wav"
    sf.write(path, load_audio(EXAMPLES / "case-2" / "audio.wav")[:32000], 16000)  # 2 s at 16 kHz
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """app.py on a free 127.0.0.1 port; always terminated (then killed) at the end."""
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    root = tmp_path_factory.mktemp("app")
    write_tiny_checkpoints(root / "ckpt")
    port = free_port()
    env = {**os.environ, "STABLEAVATAR_CHECKPOINTS": str(root / "ckpt"), "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(root / "gradio"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}  # fmt: skip
    log = open(root / "server.log", "w")
    cmd = [sys.executable, str(REPO / "app.py"), "--server_port", str(port), "--device", "cpu", "--output_dir", str(root / "outputs")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{(root / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer within {SERVER_START_S} s:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"url": url, "root": root, "log": root / "server.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


@pytest.fixture(scope="module")
def browser():
    # playwright gives launch() a fresh temporary --user-data-dir of its own (it refuses the flag)
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server["url"])
    page.locator("#generate").wait_for()
    yield page
    context.close()


def set_number(page, elem_id: str, value: int) -> None:
    """Type into a slider's number box and commit it (gradio reads it on blur)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def status_text(page) -> str:
    return page.locator("#status textarea").input_value()


# Collects every text the page's progress bars show (gradio renders gr.Progress as .progress-level-inner).
RECORD_PROGRESS = """() => {
    window.__progress = new Set();
    new MutationObserver(() => {
        for (const el of document.querySelectorAll('.progress-level-inner')) window.__progress.add(el.innerText.trim());
    }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def test_generate_without_image_shows_message(page, server):
    page.click("#generate")
    page.wait_for_function("() => document.querySelector('#status textarea').value.length > 0", timeout=30_000)
    assert "reference image" in status_text(page)
    assert "Traceback" not in status_text(page)
    assert page.locator("#video_output video").count() == 0


def test_language_toggle_relabels(page):
    page.get_by_label("中文").check()
    page.wait_for_function("() => document.querySelector('#generate').innerText.includes('开始生成')")
    page.get_by_label("English").check()
    page.wait_for_function("() => document.querySelector('#generate').innerText.includes('Generate')")


def number(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input[type=number]").input_value()


def test_adjust_and_swap_size(page):
    page.click("#adjust")  # no image yet: a message, sizes unchanged
    page.wait_for_function("() => document.querySelector('#status textarea').value.includes('reference image')")
    assert (number(page, "width"), number(page, "height")) == ("512", "512")
    page.locator("#image input[type=file]").set_input_files(str(EXAMPLES / "case-2" / "reference.png"))  # 1020x1006
    page.locator("#image img").wait_for()
    page.click("#adjust")
    page.wait_for_function("() => document.querySelector('#height input[type=number]').value === '496'")
    assert number(page, "width") == "512"
    page.click("#swap")
    page.wait_for_function("() => document.querySelector('#width input[type=number]').value === '496'")
    assert number(page, "height") == "512"


def test_generate_video_with_sound(page, server, speech_2s, tmp_path):
    page.locator("#image input[type=file]").set_input_files(str(EXAMPLES / "case-2" / "reference.png"))
    page.locator("#audio input[type=file]").set_input_files(str(speech_2s))
    page.locator("#image img").wait_for()
    page.locator("#audio audio, #audio .waveform-container, #audio [data-testid=waveform-controls]").first.wait_for(state="attached")
    page.locator("#prompt textarea").fill("a man is speaking to the camera")
    for elem_id, value in (("width", 64), ("height", 64), ("steps", 2), ("seed", 7)):
        if elem_id == "seed":
            page.locator("#seed input").fill(str(value))
        else:
            set_number(page, elem_id, value)
    page.evaluate(RECORD_PROGRESS)
    page.click("#generate")
    page.locator("#video_output video").wait_for(timeout=GENERATE_S * 1000)
    assert status_text(page).startswith("✅"), status_text(page)
    progress = page.evaluate("() => Array.from(window.__progress)")
    assert any(t.startswith("denoising") for t in progress), f"no denoising progress shown in the page: {progress}"
    assert page.locator("#seed_output textarea, #seed_output input").first.input_value() == "7"

    with page.expect_download(timeout=30_000) as download:
        page.locator("#download a").first.click()
    video = tmp_path / "downloaded.mp4"
    download.value.save_as(video)
    with av.open(str(video)) as container:
        assert container.streams.video and container.streams.audio
        vstream = container.streams.video[0]
        assert (vstream.width, vstream.height) == (64, 64)
        assert sum(1 for _ in container.decode(vstream)) == 49  # 2 s -> 50 frames -> 13 latents -> 49 frames

    outputs = list((server["root"] / "outputs").glob("session_*/*/video_with_audio.mp4"))
    assert len(outputs) == 1, "one folder per request under --output_dir"
    assert not list((server["root"] / "gradio" / "requests").glob("*/*")), "staged uploads are removed after the request"

    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("UPDATE_APP_SCREENSHOT"):  # docs/images/app.png, as a 256-colour PNG to stay small
        from PIL import Image

        with Image.open(shot) as img:
            img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(REPO / "docs" / "images" / "app.png", optimize=True)

    # Audio Extraction tab on the video just downloaded, then "Use as Driving Audio" fills the first tab.
    page.get_by_role("tab", name="Audio Extraction").click()
    page.locator("#video_input input[type=file]").set_input_files(str(video))
    page.locator("#video_input video").wait_for()
    page.click("#extract")
    page.wait_for_function("() => document.querySelector('#extract_status textarea').value.length > 0")
    extract_status = page.locator("#extract_status textarea").input_value()
    assert extract_status.startswith("✅") and "audio.wav" in extract_status, extract_status
    extracted = page.locator("#extracted_audio a[download]").first.get_attribute("href")
    assert extracted.endswith("/audio.wav")
    page.click("#use_extracted")
    page.get_by_role("tab", name="StableAvatar").click()
    page.wait_for_function(
        "(href) => [...document.querySelectorAll('#audio a[download]')].some(a => a.href === href)", arg=extracted
    )
