"""`dockyard containers ...` against a real server over real sockets (the in-memory runtime in place of the
engine): `update` changes only what is given and says when the host ports changed; `--wait` fails for a
container that exits right after it started; names and id prefixes stand for ids."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dockyard.runtimes.base import LABEL_ID, ObjectState
from tests.cli.conftest import IMAGE, Cli

FAST = ("--wait", "--settle", "0", "--timeout", "20")


def _template(cli: Cli, name: str = "web") -> str:
    created = cli("templates", "create", "--name", name, "--image", IMAGE, "--env", "MODE=demo", "--port", "8080")
    assert created.exit_code == 0, created.output
    return created.stdout.strip()


def _container(cli: Cli, name: str = "box", *extra: str) -> str:
    created = cli("containers", "create", "--template", "web", "--product", "cpu.small", "--name", name, *FAST, *extra)
    assert created.exit_code == 0, created.output
    return created.stdout.strip()


def _get(cli: Cli, container_id: str) -> dict[str, Any]:
    got = cli("containers", "get", container_id, "--json")
    assert got.exit_code == 0, got.output
    body: dict[str, Any] = json.loads(got.stdout)
    return body


def _host_port(container: dict[str, Any]) -> int:
    (port,) = container["ports"]
    return int(port["port"])


def _env_of(cli: Cli, container_id: str) -> dict[str, str]:
    """The env the runtime was given for the container's current object."""
    runtime = cli.server.runtime
    (object_id,) = [
        obj.id
        for obj in runtime.objects.values()
        if obj.labels.get(LABEL_ID) == container_id and obj.state == ObjectState.RUNNING
    ]
    return runtime.specs[object_id].env


def test_update_changes_only_what_is_given_and_keeps_the_host_port(cli: Cli) -> None:
    _template(cli)
    container_id = _container(cli, "box", "--env", "TOKEN=s3cret", "--env", "LEVEL=1")
    port = _host_port(_get(cli, container_id))

    updated = cli("containers", "update", container_id[:8], "--env", "LEVEL=2", *FAST)
    assert updated.exit_code == 0, updated.output
    assert updated.stdout == f"{container_id}: running; ports {port}->8080/tcp\n"
    assert "host ports changed" not in updated.stderr
    body = _get(cli, container_id)
    assert (body["name"], _host_port(body)) == ("box", port)
    env = _env_of(cli, container_id)
    # The variable given changed; the others, the secret among them (sent back masked), kept their values.
    assert (env["LEVEL"], env["TOKEN"], env["MODE"]) == ("2", "s3cret", "demo")

    nothing = cli("containers", "update", container_id)
    assert nothing.exit_code == 1
    assert "nothing to change" in nothing.stderr

    # A stopped container is recreated stopped, and the wait ends there.
    assert cli("containers", "stop", container_id, "--wait").exit_code == 0
    renamed = cli("containers", "update", container_id, "--name", "box-2", *FAST)
    assert renamed.exit_code == 0, renamed.output
    assert renamed.stdout == f"{container_id}: stopped; ports 8080/tcp\n"
    assert _get(cli, container_id)["name"] == "box-2"


def test_update_says_when_the_host_port_was_taken_and_prints_the_new_one(cli: Cli) -> None:
    _template(cli)
    container_id = _container(cli)
    port = _host_port(_get(cli, container_id))
    cli.server.runtime.taken_ports.add(port)
    try:
        updated = cli("containers", "update", "box", "--env", "LEVEL=3", *FAST)
    finally:
        cli.server.runtime.taken_ports.discard(port)
    assert updated.exit_code == 0, updated.output
    body = _get(cli, container_id)
    moved = _host_port(body)
    assert moved != port
    assert f"host ports changed: 8080/tcp {port} -> {moved}" in updated.stderr
    assert updated.stdout == f"{container_id}: running; ports {moved}->8080/tcp\n"
    assert f"8080/tcp {port} -> {moved}" in body["reason"]


def test_create_wait_fails_for_a_container_that_exits_right_after_starting(cli: Cli) -> None:
    _template(cli)
    runtime = cli.server.runtime
    started = {obj.id for obj in runtime.objects.values()}
    done = threading.Event()

    def exit_once_running() -> None:
        end = time.monotonic() + 20
        while not done.is_set() and time.monotonic() < end:
            for obj in list(runtime.objects.values()):
                if obj.id not in started and obj.state == ObjectState.RUNNING:
                    time.sleep(0.3)  # long enough for the wait to see it running
                    runtime.exit(obj.id, 3)
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=exit_once_running)
    killer.start()
    try:
        created = cli(
            "containers", "create", "--template", "web", "--product", "cpu.small", "--name", "dies",
            "--wait", "--settle", "2", "--timeout", "20",
        )  # fmt: skip
    finally:
        done.set()
        killer.join()
    assert created.exit_code == 1
    (container,) = json.loads(cli("containers", "list", "--json").stdout)["items"]
    assert f"error: container dies ({container['id']}) failed: exited with code 3" in created.stderr
    assert f"`dockyard containers logs {container['id']}`" in created.stderr


def test_names_and_id_prefixes_stand_for_ids_and_say_when_they_are_ambiguous(cli: Cli) -> None:
    template_id = _template(cli)
    first = _container(cli, "twin")
    second = _container(cli, "twin")
    only = _container(cli, "solo")

    assert cli("templates", "get", "web", "--json").exit_code == 0
    assert json.loads(cli("templates", "get", template_id[:6], "--json").stdout)["id"] == template_id
    assert _get(cli, "solo")["id"] == only
    assert _get(cli, only[:10])["id"] == only

    ambiguous = cli("containers", "stop", "twin")
    assert ambiguous.exit_code == 1
    assert ambiguous.stderr.startswith("error: 'twin' is the name of 2 containers: ")
    assert f"{first} (twin)" in ambiguous.stderr
    assert f"{second} (twin)" in ambiguous.stderr
    assert ambiguous.stderr.endswith("; give more of the id\n")

    unknown = cli("containers", "logs", "nobody")
    assert unknown.exit_code == 1
    assert unknown.stderr == (
        "error: no container has the id, name or id prefix 'nobody'; `dockyard containers list` lists yours\n"
    )

    stopped = cli("containers", "stop", first, "solo")
    assert stopped.exit_code == 0, stopped.output
    assert stopped.stdout == f"{first}: stopped\n{only}: stopped\n"


def test_options_that_take_an_id_take_a_name(cli: Cli) -> None:
    """`--ssh-key`, `--storage` and `--registry-auth` resolve names as the arguments do; the new list commands show
    what they name."""
    headers = {"Authorization": f"Bearer {cli.api_key}"}
    with httpx.Client(base_url=cli.server.url, headers=headers) as api:
        storage = api.post("/gpus/v2/network-storages", json={"name": "data", "region_id": "local", "size_gb": 1})
        assert storage.status_code == 200, storage.text
        auth = api.post("/gpus/v2/registry-auths", json={"name": "hub", "username": "robot", "password": "pw"})
        assert auth.status_code == 200, auth.text
    key = Ed25519PrivateKey.generate().public_key()
    public_key = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    key_id = cli("ssh-keys", "add", "--name", "laptop", "--public-key", public_key).stdout.strip()
    _template(cli)

    container_id = _container(cli, "box", "--ssh-key", "laptop", "--storage", "data:/data")
    body = _get(cli, container_id)
    assert body["sshKeyIdList"] == [key_id]
    assert body["storages"] == [{"id": storage.json()["id"], "containerPath": "/data"}]
    assert "data" in cli("network-storages", "list").stdout
    assert "robot" in cli("registry-auths", "list").stdout

    endpoint = cli(
        "endpoints", "create", "--type", "sync", "--name", "private", "--product", "serverless.cpu",
        "--image", IMAGE, "--max-replicas", "1", "--registry-auth", "hub", "--json",
    )  # fmt: skip
    assert endpoint.exit_code == 0, endpoint.output
    got = json.loads(cli("endpoints", "get", "private", "--json").stdout)
    assert got["registry_auth_id"] == auth.json()["id"]
    assert cli("endpoints", "delete", "private").exit_code == 0

    deleted = cli("ssh-keys", "delete", "laptop")
    assert deleted.stdout == f"{key_id}: deleted\n"
