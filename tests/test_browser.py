"""The explorer notebook in a real browser: JupyterLab + headless Chromium (Playwright).

nbval and papermill never run the widget front-end; this test does. It starts JupyterLab on
a free localhost port (token auth) with ``PDEINF_HOME`` holding the smoke results, opens
``notebooks/15_explorer.ipynb``, runs all cells, moves the lag slider with the keyboard and
checks that the figure (an image widget) actually changes. A screenshot is saved as
``results/explorer_screenshot.png`` of the repository. The server is always shut down.

Needs ``/usr/bin/chromium`` (installed with apt-get when missing and possible; otherwise the
test is skipped with the reason).
"""
from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EXPLORER = REPO / "notebooks" / "15_explorer.ipynb"
SCREENSHOT = REPO / "results" / "explorer_screenshot.png"


def ensure_chromium() -> Path:
    """``/usr/bin/chromium``, installing the Debian package when missing; skips the test with
    the reason when that is impossible (no root, no apt, no network)."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        pytest.skip("Chromium missing and apt-get not available to install it")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        pytest.skip("Chromium missing and installing it with apt-get needs root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=900)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            pytest.skip(f"cannot install Chromium ({' '.join(cmd)} failed: {tail[0]})")
    if not CHROMIUM.exists():
        pytest.skip("apt-get install chromium did not provide /usr/bin/chromium")
    return CHROMIUM


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def jupyterlab(root_dir: Path, env: dict, scratch: Path):
    """A JupyterLab server on a free localhost port; yields ``(base_url, token)``.

    Settings, workspaces and runtime files go to ``scratch`` so nothing of the user's is
    read or written. The whole process group is terminated on exit.
    """
    port, token = free_port(), secrets.token_hex(16)
    for sub in ("config", "runtime", "settings", "workspaces"):
        (scratch / sub).mkdir(parents=True, exist_ok=True)
    # never write outputs back into a notebook: no autosave
    docmanager = scratch / "settings" / "@jupyterlab" / "docmanager-extension"
    docmanager.mkdir(parents=True, exist_ok=True)
    (docmanager / "plugin.jupyterlab-settings").write_text('{"autosave": false}')
    apputils = scratch / "settings" / "@jupyterlab" / "apputils-extension"
    apputils.mkdir(parents=True, exist_ok=True)
    (apputils / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = dict(
        env,
        JUPYTER_CONFIG_DIR=str(scratch / "config"),
        JUPYTER_RUNTIME_DIR=str(scratch / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(scratch / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(scratch / "workspaces"),
    )
    cmd = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    base = f"http://127.0.0.1:{port}"
    with open(scratch / "jupyterlab.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _wait_until_up(proc, base, token, scratch)
            yield base, token
        finally:
            _stop(proc)


def _wait_until_up(proc, base: str, token: str, scratch: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited ({proc.returncode}): "
                               f"{(scratch / 'jupyterlab.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s")
        time.sleep(0.5)


def _stop(proc) -> None:
    """Terminate the server's whole process group (kernels included)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


_KERNEL_IDLE = """() => {
  const app = window.jupyterapp;
  const w = app && app.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.status === 'idle';
}"""

_IMAGE_BYTES = """async (img) => {
  const r = await fetch(img.src);
  const b = new Uint8Array(await r.arrayBuffer());
  let s = '';
  for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
  return btoa(s);
}"""


def image_digest(page, selector: str) -> str:
    """SHA-256 of the bytes shown by the first ``<img>`` matching ``selector``."""
    img = page.locator(selector).first
    data = base64.b64decode(img.evaluate(_IMAGE_BYTES))
    assert data, f"{selector}: empty image"
    return hashlib.sha256(data).hexdigest()


def drive_explorer(base: str, token: str, notebook_rel: str, screenshot: Path, *,
                   timeout_ms: int = 240_000) -> dict:
    """Open the notebook, run all cells, move the lag slider right by keyboard; returns the
    image digests before/after and the slider values. Saves a screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                     headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/{notebook_rel}?token={token}")
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            page.wait_for_function(_KERNEL_IDLE, timeout=120_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            explorer = page.locator(".pdeinf-explorer").first
            explorer.wait_for(state="visible", timeout=timeout_ms)
            figure = ".pdeinf-explorer img.pdeinf-figure"
            page.wait_for_selector(figure, timeout=60_000)
            page.wait_for_function(_KERNEL_IDLE, timeout=timeout_ms)
            before = image_digest(page, figure)
            handle = page.locator(".pdeinf-lag-slider [role='slider']").first
            value_before = handle.get_attribute("aria-valuenow")
            handle.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "(v) => { const h = document.querySelector(\".pdeinf-lag-slider [role='slider']\");"
                " return h && h.getAttribute('aria-valuenow') !== v; }",
                arg=value_before, timeout=30_000)
            value_after = handle.get_attribute("aria-valuenow")
            after = before
            deadline = time.monotonic() + timeout_ms / 1000
            while after == before and time.monotonic() < deadline:
                page.wait_for_timeout(250)
                after = image_digest(page, figure)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            partial = screenshot.with_name(f".{screenshot.stem}.partial.png")
            page.screenshot(path=str(partial), full_page=True)
            os.replace(partial, screenshot)
            errors = page.locator(".jp-OutputArea-output[data-mime-type*='error']").count()
            return {"before": before, "after": after, "value_before": value_before,
                    "value_after": value_after, "error_outputs": errors}
        finally:
            browser.close()


def test_explorer_slider_changes_figure(smoke_home, tmp_path):
    if not EXPLORER.is_file():
        pytest.fail(f"{EXPLORER} is missing")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    ensure_chromium()
    env = dict(os.environ, PDEINF_HOME=str(smoke_home), PDEINF_PROFILE="smoke",
               MPLBACKEND="Agg")
    # Lab serves a scratch copy: running cells must never touch the committed notebook
    lab_root = tmp_path / "lab"
    lab_root.mkdir()
    shutil.copy2(EXPLORER, lab_root / EXPLORER.name)
    with jupyterlab(lab_root, env, tmp_path / "scratch") as (base, token):
        result = drive_explorer(base, token, EXPLORER.name, SCREENSHOT)
    assert result["error_outputs"] == 0, "the explorer notebook printed an error"
    assert result["value_after"] != result["value_before"], result
    assert result["after"] != result["before"], "moving the lag slider did not change the figure"
    assert SCREENSHOT.is_file() and SCREENSHOT.stat().st_size > 0
