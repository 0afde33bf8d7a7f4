"""`dockyard admin create-key`, run as the operator runs it: a process of its own against the server's
database (named by DOCKYARD_DATA_DIR or DOCKYARD_DATABASE_URL)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.test_quotas import QUOTA_NAMES


def create_key(env: dict[str, str], org: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dockyard", "admin", "create-key", "--org", org],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"dy_[A-Za-z0-9_\-]{20,}\n", done.stdout), f"stdout is not the key alone: {done.stdout!r}"
    return done.stdout.strip()


@pytest.mark.parametrize("variable", ["DOCKYARD_DATA_DIR", "DOCKYARD_DATABASE_URL"])
def test_create_key_prints_only_the_key_and_creates_the_org_once(tmp_path: Path, variable: str) -> None:
    database = tmp_path / "dockyard.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env["DOCKYARD_ENGINE_URL"] = "unix:///nonexistent.sock"
    if variable == "DOCKYARD_DATA_DIR":
        env["DOCKYARD_DATA_DIR"] = str(tmp_path)
    else:
        env["DOCKYARD_DATA_DIR"] = str(tmp_path / "elsewhere")
        env["DOCKYARD_DATABASE_URL"] = f"sqlite+aiosqlite:///{database}"

    first = create_key(env, "acme")
    second = create_key(env, "acme")
    assert first != second

    with sqlite3.connect(database) as conn:
        orgs = conn.execute("SELECT id FROM organizations WHERE name = 'acme'").fetchall()
        assert len(orgs) == 1
        hashes = {row[0] for row in conn.execute("SELECT key_hash FROM api_keys WHERE org_id = ?", orgs[0])}
    assert hashes == {hashlib.sha256(key.encode()).hexdigest() for key in (first, second)}


def test_a_bad_setting_is_one_line_naming_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env.update(DOCKYARD_DATA_DIR=str(tmp_path), DOCKYARD_LOG_FORMAT="xml")
    done = subprocess.run(
        [sys.executable, "-m", "dockyard", "admin", "create-key", "--org", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("error: invalid configuration (log_format:")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "dockyard.db").exists()


def admin_quotas(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dockyard", "admin", "quotas", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_quotas_shows_sets_and_resets_an_organizations_limits(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env.update(DOCKYARD_DATA_DIR=str(tmp_path), DOCKYARD_ENGINE_URL="unix:///nonexistent.sock")
    create_key(env, "acme")

    shown = admin_quotas(env, "--org", "acme")
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line.split()[1:] for line in shown.stdout.splitlines()[1:]}
    assert lines["vcpus"] == ["128", "0", "default"]
    assert list(lines) == QUOTA_NAMES

    changed = admin_quotas(env, "--org", "acme", "--set", "vcpus=4", "--set", "containers=0", "--json")
    assert changed.returncode == 0, changed.stderr
    limits = {quota["name"]: (quota["limit"], quota["default"]) for quota in json.loads(changed.stdout)["quotas"]}
    assert (limits["vcpus"], limits["containers"], limits["gpus"]) == ((4, False), (0, False), (8, True))
    with sqlite3.connect(tmp_path / "dockyard.db") as conn:
        assert conn.execute("SELECT vcpus, containers, gpus FROM organization_quotas").fetchall() == [(4, 0, None)]

    reset = admin_quotas(env, "--org", "acme", "--set", "vcpus=default", "--json")
    limits = {quota["name"]: (quota["limit"], quota["default"]) for quota in json.loads(reset.stdout)["quotas"]}
    assert (limits["vcpus"], limits["containers"]) == ((128, True), (0, False))

    for args, message in [
        (("--org", "nobody"), "no organization named nobody"),
        (("--org", "acme", "--set", "vcpus=-1"), "--set vcpus: Input should be greater than or equal to 0"),
        (("--org", "acme", "--set", "cores=4"), "no quota cores"),
        (("--org", "acme", "--set", "vcpus"), "expected NAME=LIMIT"),
    ]:
        refused = admin_quotas(env, *args)
        assert refused.returncode == 1
        assert message in refused.stderr, refused.stderr
