"""The README and the tutorial, walked as a reader would. The README's first command, `scripts/quickstart`, runs as
written on the tests' engine (its own port, data dir and CLI config); its second, `scripts/test`, is what CI runs.
Every fenced `bash` block of docs/tutorial.md runs in order, in one shell, against a real server on Podman with the
CLI configured through its environment (`DOCKYARD_URL`, `DOCKYARD_API_KEY`). Each must exit 0, and the answers
they promise must be the ones printed. And every page's relative links lead to a file that exists."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine import ROOT
from tests.live import free_port
from tests.servers import EngineServer, engine_server, remove_installation

TUTORIAL = ROOT / "docs" / "tutorial.md"
WALK_SECONDS = 300
"""The most the whole tutorial may take; it takes well under a minute (the SDK's `pip install` is most of it)."""
QUICKSTART_SECONDS = 300
"""The most the quickstart may take with its dependencies in place (it takes about half a minute)."""
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
BLOCK = re.compile(r"^```bash\n(.*?)^```$", re.MULTILINE | re.DOTALL)
MARK = "### tutorial block "


def bash_blocks(markdown: str) -> list[str]:
    """The fenced `bash` blocks of a Markdown text, in order."""
    return BLOCK.findall(markdown)


def walk_script(blocks: list[str]) -> str:
    """One bash script running `blocks` in order, each announced on stdout, stopping at the first failure."""
    parts = ["set -euo pipefail"]
    for index, block in enumerate(blocks, 1):
        parts += [f"echo '{MARK}{index}'", block]
    parts.append(f"echo '{MARK}done'")
    return "\n".join(parts) + "\n"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_to_a_file(page: Path) -> None:
    targets = [target for target in LINK.findall(page.read_text()) if "://" not in target]
    assert [target for target in targets if not (page.parent / target).exists()] == []


def test_the_docs_index_lists_every_page() -> None:
    listed = set(LINK.findall((ROOT / "docs" / "README.md").read_text()))
    assert {page.name for page in PAGES if page.parent.name == "docs" and page.name != "README.md"} <= listed


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, engine_url: str, python_image: str) -> Iterator[EngineServer]:
    # On every address, as the tutorial asks: async workers reach its webhooks from their containers.
    # The images the tutorial builds are kept: the next walk builds the same bytes and reuses their layers.
    with engine_server(tmp_path_factory.mktemp("tutorial"), engine_url, host="0.0.0.0") as running:
        yield running


def test_the_blocks_are_found_in_order() -> None:
    blocks = bash_blocks(TUTORIAL.read_text())
    assert len(blocks) >= 8
    assert blocks[0].startswith("mkdir -p hello")
    assert all(block.strip() for block in blocks)
    assert walk_script(["true", "false"]).splitlines() == [
        "set -euo pipefail",
        f"echo '{MARK}1'",
        "true",
        f"echo '{MARK}2'",
        "false",
        f"echo '{MARK}done'",
    ]


@pytest.mark.engine
def test_the_tutorial_runs_as_written(server: EngineServer, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DOCKYARD_URL": server.url,
        "DOCKYARD_API_KEY": server.key,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),  # no saved login of this machine's user takes part
        # `dockyard` and `python3` of the Python running the tests (the image's version: the SDK's wheels fit).
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    walked = subprocess.run(
        ["bash", "-c", walk_script(bash_blocks(TUTORIAL.read_text()))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=WALK_SECONDS,
    )
    outputs = block_outputs(walked.stdout)
    last = list(outputs)[-1] if outputs else "none"
    assert walked.returncode == 0, f"block {last} failed:\n{walked.stdout[-3000:]}\n{walked.stderr[-3000:]}"
    assert last == "done"
    # What the tutorial says each call answers: the sync call, then `run --wait` and `status` of the async jobs.
    assert any('{"greeting": "hello, tutorial"}' in text for text in outputs.values())
    jobs = next(text for text in outputs.values() if "hello, second job" in text)
    assert "COMPLETED" in jobs, jobs
    assert "hello, queue" in jobs, jobs


def block_outputs(stdout: str) -> dict[str, str]:
    """What each block printed, by its number (`done` last, once every block passed)."""
    outputs: dict[str, str] = {}
    current = ""
    for line in stdout.splitlines():
        if line.startswith(MARK):
            current = line.removeprefix(MARK)
            outputs[current] = ""
        elif current:
            outputs[current] += line + "\n"
    return outputs


@pytest.mark.engine
def test_the_readmes_quickstart_runs_as_written(engine_url: str, busybox_image: str, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    assert bash_blocks(readme)[0].splitlines()[0].startswith("scripts/quickstart")
    data = tmp_path / "data"
    env = {
        **os.environ,
        "DOCKYARD_PORT": str(free_port()),
        "DOCKYARD_DATA_DIR": str(data),
        "DOCKER_HOST": engine_url,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    try:
        walked = subprocess.run(
            [str(ROOT / "scripts" / "quickstart")], env=env, capture_output=True, text=True, timeout=QUICKSTART_SECONDS
        )
        assert walked.returncode == 0, f"{walked.stdout[-3000:]}\n{walked.stderr[-3000:]}"
        assert "hello from dockyard" in walked.stdout  # the container's page
        assert '"body": "hello from the demo endpoint"' in walked.stdout  # the endpoint's echo, from zero workers
        assert "Dockyard is running." in walked.stdout
        # Run again, it reuses what is there.
        again = subprocess.run(
            [str(ROOT / "scripts" / "quickstart")], env=env, capture_output=True, text=True, timeout=QUICKSTART_SECONDS
        )
        assert again.returncode == 0, f"{again.stdout[-3000:]}\n{again.stderr[-3000:]}"
        assert "a Dockyard server already answers" in again.stdout
        assert "reusing endpoint" in again.stdout
    finally:
        _stop_quickstart(data, engine_url)


def _stop_quickstart(data: Path, engine_url: str) -> None:
    """Stop the server the quickstart left running, then remove what it made on the engine."""
    pid_file = data / "server.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(200):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    database = data / "dockyard.db"
    if database.exists():
        with sqlite3.connect(database) as connection:
            found = connection.execute("SELECT value FROM settings WHERE key = 'installation_id'").fetchone()
        if found is not None:
            remove_installation(engine_url, str(found[0]))
