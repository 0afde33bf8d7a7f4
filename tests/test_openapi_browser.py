"""`/docs` and `/redoc` rendered by a real browser with the network off: Debian's Chromium, headless, reaches the
test server on loopback and nothing else, and every operation of the document shows on each page.

Skipped where Chromium is missing; scripts/install-deps installs it, so CI runs it."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.app import create_app
from dockyard.config import Settings
from tests.fakes import FakeRuntime
from tests.live import serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; scripts/install-deps does it)"
)

RENDER_SECONDS = 60
"""The most one page may take to render, in real time; it takes a few seconds."""
VIRTUAL_TIME_MS = 20_000
"""The page's own time (its timers and network waits) Chromium lets pass before it dumps the DOM."""

# What each page draws per operation: Swagger UI an `opblock` per operation, ReDoc a menu entry per operation.
OPERATION_MARKERS = {
    "/docs": re.compile(r'class="opblock opblock-(?:get|put|post|delete|patch|head|options)\b'),
    "/redoc": re.compile(r'data-item-id="[^"]*operation/[^"]*"'),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A server on loopback and the number of operations its document holds."""
    data: Path = tmp_path_factory.mktemp("docs-browser")
    app = create_app(
        Settings(
            data_dir=data,
            database_url=f"sqlite+aiosqlite:///{data / 'dockyard.db'}",
            public_address="127.0.0.1",
            run_reconcilers=False,
            engine_url="unix:///nonexistent.sock",
        ),
        runtime_factory=lambda idc, context: FakeRuntime(),
    )
    operations = sum(
        method in {"get", "put", "post", "delete", "patch", "head", "options"}
        for item in app.openapi()["paths"].values()
        for method in item
    )
    with serving(app) as url:
        yield url, operations


def _render(url: str, profile: Path) -> subprocess.Popen[str]:
    """Chromium dumping the DOM of `url` once the page has run `VIRTUAL_TIME_MS`. Every host but loopback resolves
    to nothing and every request but loopback's goes to a proxy that is not there (Chromium never proxies
    loopback), so an asset fetched from outside fails as it would on an offline machine."""
    assert CHROMIUM is not None
    return subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",  # the tests run as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9",
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            "--dump-dom",
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_docs_and_redoc_render_every_operation_offline(served: tuple[str, int], tmp_path: Path) -> None:
    url, operations = served
    # Both pages at once: each is a few seconds of Chromium mostly waiting on its virtual clock.
    browsers = {page: _render(f"{url}{page}", tmp_path / page.strip("/")) for page in OPERATION_MARKERS}
    for page, browser in browsers.items():
        try:
            dom, errors = browser.communicate(timeout=RENDER_SECONDS)
        except subprocess.TimeoutExpired:
            browser.kill()
            pytest.fail(f"chromium did not render {page} within {RENDER_SECONDS} s")
        assert browser.returncode == 0, errors[-2000:]
        rendered = len(OPERATION_MARKERS[page].findall(dom))
        assert rendered == operations, f"{page} shows {rendered} of {operations} operations: {dom[:500]}"
