"""The nginx configuration of docs/load-balancing.md, as written there, in front of two real `dockyard server`
processes on one PostgreSQL: a request goes through it, and once one server is killed with SIGKILL every request
is still answered, by the other (nginx's passive check takes the dead one out, and the refused connection is
retried on the next upstream)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.cluster import Cluster, Kind, cluster_env, running
from tests.conftest import ADMIN_TOKEN
from tests.nginx_front import local_config, nginx_front
from tests.pg import PostgresServer

pytestmark = pytest.mark.slow

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_the_documented_configuration_lists_the_given_upstreams() -> None:
    config = local_config([1001, 1002], [2001], "0.0.0.0:3001", "127.0.0.1:3002")
    assert "server 127.0.0.1:1001 max_fails=1 fail_timeout=5s;" in config
    assert "server 127.0.0.1:1002 max_fails=1 fail_timeout=5s;" in config
    assert "server 127.0.0.1:2001 max_fails=1 fail_timeout=5s;" in config
    assert "10.0.0." not in config
    assert "listen 0.0.0.0:3001;" in config
    assert "listen 127.0.0.1:3002;" in config


def test_nginx_in_front_of_two_servers_routes_around_a_killed_one(
    tmp_path: Path, postgres: PostgresServer | None
) -> None:
    if postgres is None:
        pytest.skip("needs PostgreSQL: several servers share one database")
    database_url = asyncio.run(postgres.create_database())
    cluster = Cluster(tmp_path, cluster_env(database_url, "unix:///nonexistent.sock", RUN_RECONCILERS="false"))
    first, second = cluster.add(Kind.SERVER), cluster.add(Kind.SERVER)
    with running(cluster), nginx_front(tmp_path / "nginx", [first.process.port, second.process.port], []) as front:
        api = httpx.Client(base_url=front.api_url, headers=ADMIN, timeout=10)
        created = api.post("/admin/v1/organizations", json={"name": "behind-nginx"})
        assert created.status_code == 200, created.text
        org_id = created.json()["id"]
        # Both servers answer through nginx: each read finds what the other wrote.
        assert {api.get("/healthz").status_code for _ in range(4)} == {200}

        first.kill()
        answers = [api.get("/admin/v1/organizations") for _ in range(20)]
        assert [answer.status_code for answer in answers] == [200] * 20, front.error_log()
        assert all(org_id in {org["id"] for org in answer.json()} for answer in answers)
        # The dead server was tried, refused, and the request retried on the live one.
        assert f"127.0.0.1:{first.process.port}" in front.error_log()
        assert "Connection refused" in front.error_log()
        api.close()
