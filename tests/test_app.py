"""`r2 app` in a real browser: headless Chromium (Debian's) driven by Playwright.

The app runs as a user starts it (`r2 app`, a subprocess) on a free loopback port with a tiny
random model. The page is driven like a person would: upload a video, type two queries,
click a moment and see the player jump there. Every request the page makes is recorded:
nothing may leave the machine. In CI (CI=true) a missing browser or Playwright is a
failure, never a skip: `.ci/run` installs them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from e2e_fixtures import N_CLIPS, QUERIES, make_setup

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
START_TIMEOUT_S = 120
STEP_TIMEOUT_MS = 60_000
MAX_UPLOAD_MB = 2
LOCAL = ("http://127.0.0.1:", "data:", "blob:", "about:")
# Loaded into the app's process (PYTHONPATH): every name lookup or connection to anything but
# this machine is written to $R2_NET_LOG and refused, so telemetry or update checks show up.
NET_GUARD = """
import os, socket
_LOG = os.environ["R2_NET_LOG"]
_LOCAL = ("127.", "::1", "localhost", "0.0.0.0")
open(_LOG + ".loaded", "w").close()

def _refuse(what):
    with open(_LOG, "a") as fh:
        fh.write(repr(what) + "\\n")
    raise OSError("network access refused by the test")

def _local(host):
    return not isinstance(host, str) or host.startswith(_LOCAL)

_getaddrinfo = socket.getaddrinfo
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex

def getaddrinfo(host, *args, **kwargs):
    if host is not None and not _local(host.decode() if isinstance(host, bytes) else host):
        _refuse(("getaddrinfo", host))
    return _getaddrinfo(host, *args, **kwargs)

def connect(self, address):
    if isinstance(address, tuple) and not _local(address[0]):
        _refuse(("connect", address))
    return _connect(self, address)

def connect_ex(self, address):
    if isinstance(address, tuple) and not _local(address[0]):
        _refuse(("connect_ex", address))
    return _connect_ex(self, address)

socket.getaddrinfo = getaddrinfo
socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
"""


def _need(what: str, ok: bool) -> None:
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: .ci/run must install it")
    pytest.skip(f"{what} not installed (make install; apt-get install chromium)")


def _need_module(name: str) -> None:
    try:
        __import__(name)
    except ImportError:
        _need(f"the {name} package (the app extra: make install)", False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp shows them) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _need_module("gradio")
    root = tmp_path_factory.mktemp("app")
    setup = make_setup(root)
    library = root / "library"
    library.mkdir()
    shutil.copy(setup["video"], library / "vid1.mp4")
    port = _free_port()
    guard = root / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NET_GUARD)
    net_log = root / "network.log"
    path = os.pathsep.join(filter(None, [str(guard), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "XDG_CACHE_HOME": str(root / "xdg"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": path, "R2_NET_LOG": str(net_log)}  # fmt: skip
    cmd = [sys.executable, "-c", "from r2.cli import app; app()", "app", "-c", str(setup["run"]),
           "--videos", str(library), "--anno", str(setup["anno"]), "--port", str(port),
           "--device", "cpu", "--max-upload-mb", str(MAX_UPLOAD_MB)]  # fmt: skip
    log = open(root / "app.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, (root / "app.log").read_text()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.5)
        yield {**setup, "url": url, "port": port, "root": root, "library": library,
               "net_log": net_log}  # fmt: skip
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    _need("Debian's chromium", os.path.exists(CHROMIUM))
    _need_module("playwright")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    page.requests = []
    page.on("request", lambda r: page.requests.append(r.url))
    yield page
    context.close()


def _upload(page, url: str, video: Path) -> str:
    page.goto(url)
    page.set_input_files("#r2-player input[type=file]", str(video))
    page.wait_for_selector("#r2-message")
    return page.inner_text("#r2-status")


def test_upload_ask_two_queries_and_jump_to_a_moment(server, page, tmp_path):
    status = _upload(page, server["url"], server["video"])
    assert status.startswith("Ready: vid1.mp4") and f"{N_CLIPS} clips" in status
    page.fill("#r2-queries textarea", "\n".join(QUERIES))
    page.click("#r2-ask")
    page.wait_for_function("document.querySelectorAll('.r2-result').length == 2")
    results = page.query_selector_all(".r2-result")
    assert [r.get_attribute("data-query") for r in results] == QUERIES
    for result in results:  # the curve, shaded moments, ground truth and frames are drawn
        points = result.eval_on_selector("polyline.r2-saliency", "e => e.points.numberOfItems")
        assert points == N_CLIPS
        assert len(result.query_selector_all("rect.r2-moment-area")) == 5
        assert len(result.query_selector_all("rect.r2-truth")) == 1  # from --anno
        widths = result.eval_on_selector_all(".r2-frame img", "els => els.map(e => e.naturalWidth)")
        assert len(widths) == 5 and min(widths) > 0
    page.wait_for_function("document.querySelector('#r2-player video').readyState >= 1")
    button = results[1].query_selector_all(".r2-seek")[1]
    start = float(button.get_attribute("data-seek"))
    button.click()
    page.wait_for_function(
        f"Math.abs(document.querySelector('#r2-player video').currentTime - {start}) < 1.5"
    )
    now = page.evaluate("document.querySelector('#r2-player video').currentTime")
    assert start <= now < start + 1.5
    href = page.get_attribute("#r2-json a", "href")
    rows = json.loads(page.evaluate(f"fetch({json.dumps(href)}).then(r => r.text())"))
    assert [r["query"] for r in rows] == QUERIES and len(rows[0]["saliency"]) == N_CLIPS
    shot = tmp_path / "r2-app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot: {shot}")
    outside = [u for u in page.requests if not u.startswith(LOCAL)]
    assert outside == [], f"the page reached out: {outside[:5]}"


def test_a_damaged_upload_gets_the_reason_r2_extract_gives(server, page, tmp_path):
    from r2.extract.workers import DecodeOptions, decode_job

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(5000))
    _, reason = decode_job(str(broken), DecodeOptions(0.5, 32, "middle", False))
    status = _upload(page, server["url"], broken)
    assert status.startswith("error: ") and status.count("\n") == 0
    assert status.endswith(reason.split("broken.mp4", 1)[1])  # same words, after the path


def test_serves_files_only_from_the_upload_area_and_the_library(server):
    def get(path: Path) -> int:
        try:
            with urllib.request.urlopen(f"{server['url']}gradio_api/file={path}") as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code

    assert get(server["library"] / "vid1.mp4") == 200
    assert get(server["video"]) == 403  # the same bytes, outside --videos
    assert get(server["root"] / "app.log") == 403  # the app's own working directory
    assert get(Path("/etc/passwd")) == 403


def test_the_server_never_reaches_out(server, page):
    _upload(page, server["url"], server["video"])  # a full round of work first
    page.fill("#r2-queries textarea", QUERIES[0])
    page.click("#r2-ask")
    page.wait_for_selector(".r2-result")
    assert Path(f"{server['net_log']}.loaded").exists()  # the guard ran in the app
    attempts = server["net_log"].read_text() if server["net_log"].exists() else ""
    assert attempts == "", f"the app process tried to reach out: {attempts[:300]}"


def test_loopback_only_and_upload_size_limit(server):
    assert _listening_addresses(server["port"]) == {"0100007F"}  # 127.0.0.1, nothing else
    import httpx

    big = os.urandom((MAX_UPLOAD_MB + 1) * 2**20)
    response = httpx.post(f"{server['url']}gradio_api/upload", files={"files": ("big.mp4", big)})
    assert response.status_code == 413
