"""The served rerun web viewer, opened in a real headless Chromium through chromedriver (selenium).

Runs by default wherever Debian's ``chromium`` and ``chromedriver`` are installed (``.ci/run`` installs them);
select or deselect it with ``-m browser`` / ``-m "not browser"``. Takes 0.5-3 minutes on 2 cores: the
viewer's 43 MB wasm compiles in the browser.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # minutes: chromium, wasm viewer

SERVER_START_S = 240  # mapping the test scene and starting the servers
VIEWER_LOAD_S = 180  # wasm download + compile + receiving the recording


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _browser_or_skip() -> tuple[str, str]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    chromium = _find("chromium", "chromium-browser")
    driver = _find("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    if chromium is None or driver is None:
        pytest.skip(
            "Debian chromium + chromedriver not found "
            "(apt-get install chromium chromium-driver; .ci/run does)"
        )
    return chromium, driver


def map_view_stats(png: Path) -> dict[str, float]:
    """How much of the 3D view (left 60 % of the window, between top bar and time panel) is drawn content.

    Background (the viewer's light or dark canvas and its grid) is uniform; the voxel cloud is textured.
    Returns the fraction of content pixels and the number of distinct (4-bit quantised) content colours.
    """
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int64)
    height, width, _ = rgb.shape
    region = rgb[int(0.1 * height) : int(0.9 * height), int(0.02 * width) : int(0.58 * width)]
    flat = region.reshape(-1, 3)
    quant = flat // 16
    codes = quant[:, 0] * 256 + quant[:, 1] * 16 + quant[:, 2]
    background = np.bincount(codes).argmax()
    bg_rgb = np.array([background // 256, (background // 16) % 16, background % 16]) * 16 + 8
    far = np.abs(flat - bg_rgb).sum(axis=1) > 60
    content_codes = np.unique(codes[far])
    return {"fraction": float(far.mean()), "colours": float(len(content_codes))}


def test_served_viewer_shows_the_voxel_map(tmp_path):
    chromium, chromedriver = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    web_port, grpc_port = _free_port(), _free_port()
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "ovmap",
        "map",
        "dataset=synthetic",
        "dataset.preset=test",
        "encoder=oracle",
        "device=cpu",
        "progress=false",
        f"out_dir={out}",
        "vis=rerun",
        "vis.mode=serve",
        f"vis.web_port={web_port}",
        f"vis.grpc_port={grpc_port}",
        f"vis.serve_seconds={SERVER_START_S + 2 * VIEWER_LOAD_S}",
    ]
    server_log = tmp_path / "server.log"
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    found: dict[str, str] = {}

    def pump() -> None:
        with open(server_log, "w") as log:
            for line in proc.stdout:  # type: ignore[union-attr]
                log.write(line)
                log.flush()
                if line.startswith("serving the rerun web viewer at "):
                    found["url"] = line.split(" at ", 1)[1].strip()

    threading.Thread(target=pump, daemon=True).start()
    driver = None
    screenshot = tmp_path / "viewer.png"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while "url" not in found and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "url" in found, f"no viewer URL (exit code {proc.poll()}):\n{server_log.read_text()[-3000:]}"
        url = found["url"]
        assert url.startswith(
            f"http://127.0.0.1:{web_port}/?url=rerun%2Bhttp%3A%2F%2F127.0.0.1%3A{grpc_port}"
        )

        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=1280,800",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(chromedriver), options=options)
        driver.set_page_load_timeout(VIEWER_LOAD_S)
        driver.get(url)
        deadline = time.monotonic() + VIEWER_LOAD_S
        stats: dict[str, float] = {}
        while time.monotonic() < deadline:
            time.sleep(5)
            driver.save_screenshot(str(screenshot))
            stats = map_view_stats(screenshot)
            # loading screen: nothing; welcome screen: ~4 %, 50 colours of text; the map: > 30 %, > 200
            if stats["fraction"] > 0.15 and stats["colours"] > 100:
                break
        assert stats.get("fraction", 0) > 0.15 and stats.get("colours", 0) > 100, (
            f"the 3D view does not show the voxel map after {VIEWER_LOAD_S} s: {stats}; see {screenshot}"
        )
    finally:
        if driver is not None:
            driver.quit()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # the command stops serving cleanly on Ctrl-C
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    assert (out / "map.npz").is_file()
    assert (out / "recording.rrd").is_file()  # serve mode also writes the recording
