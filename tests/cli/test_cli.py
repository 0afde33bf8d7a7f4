"""The `dockyard` command against a real server over real sockets: login and its precedence, templates,
containers with --wait, and what the user sees when something goes wrong."""

from __future__ import annotations

import json
import socket
import stat
import uuid
from importlib.metadata import version
from pathlib import Path

import httpx
import yaml

from dockyard.runtimes.base import LABEL_ID
from dockyard.services.bootstrap import local_node_id
from tests.cli.conftest import IMAGE, Cli
from tests.conftest import ADMIN_TOKEN


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_login_saves_url_and_key_privately_and_later_commands_use_them(cli: Cli) -> None:
    result = cli("login", "--url", cli.server.url, "--api-key", cli.api_key, env={"DOCKYARD_API_KEY": None})
    assert result.exit_code == 0, result.output
    path = cli.config_home / "dockyard" / "config.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert yaml.safe_load(path.read_text()) == {"url": cli.server.url, "api_key": cli.api_key}

    listed = cli("templates", "list", "--json", env={"DOCKYARD_URL": None, "DOCKYARD_API_KEY": None})
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)["items"] == []


def test_login_refuses_a_wrong_key_and_saves_nothing(cli: Cli) -> None:
    result = cli("login", "--api-key", "not-a-key")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert not (cli.config_home / "dockyard" / "config.yaml").exists()


def test_flag_wins_over_environment_which_wins_over_file(cli: Cli) -> None:
    assert cli("login", "--api-key", cli.api_key).exit_code == 0
    dead = _closed_port_url()

    from_file = cli("templates", "list", env={"DOCKYARD_URL": None, "DOCKYARD_API_KEY": None})
    assert from_file.exit_code == 0, from_file.output
    env_over_file = cli("templates", "list", env={"DOCKYARD_URL": dead})
    assert env_over_file.exit_code == 1
    assert dead in env_over_file.stderr
    flag_over_env = cli("--url", cli.server.url, "templates", "list", env={"DOCKYARD_URL": dead})
    assert flag_over_env.exit_code == 0, flag_over_env.output


def test_templates_create_list_get_delete(cli: Cli) -> None:
    created = cli(
        "templates", "create", "--name", "web", "--image", IMAGE, "--command", "httpd -f",
        "--arg", "-p", "--arg", "8080", "--env", "MODE=demo", "--port", "8080", "--port", "53:5353/udp",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    template_id = created.stdout.strip()
    uuid.UUID(template_id)

    listed = json.loads(cli("templates", "list", "--json").stdout)
    assert [t["id"] for t in listed["items"]] == [template_id]
    got = json.loads(cli("templates", "get", template_id, "--json").stdout)
    assert got["path"] == IMAGE
    assert got["args"] == ["-p", "8080"]
    assert got["ports"] == [
        {"containerPort": 8080, "port": None, "protocol": "TCP"},
        {"containerPort": 53, "port": 5353, "protocol": "UDP"},
    ]
    table = cli("templates", "list")
    assert "web" in table.stdout
    assert "8080/tcp" in table.stdout

    assert cli("templates", "delete", template_id).exit_code == 0
    gone = cli("templates", "get", template_id)
    assert gone.exit_code == 1
    assert gone.stderr.startswith(f"error: template {template_id} not found")


def test_private_registry_password_is_read_from_stdin_and_never_shown(cli: Cli) -> None:
    created = cli(
        "templates", "create", "--name", "private", "--image", IMAGE, "--username", "robot", "--password-stdin",
        stdin="registry-password-123\n",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    shown = cli("templates", "get", created.stdout.strip())
    assert "robot" in shown.stdout
    assert "registry-password-123" not in shown.stdout


def test_wrong_key_prints_the_servers_message_and_exits_1(cli: Cli) -> None:
    result = cli("templates", "list", env={"DOCKYARD_API_KEY": "wrong"})
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid API key")
    assert result.stdout == ""


def test_unreachable_server_says_how_to_start_it(cli: Cli) -> None:
    dead = _closed_port_url()
    result = cli("containers", "list", env={"DOCKYARD_URL": dead})
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: cannot reach the Dockyard server at {dead}; is `dockyard server` running?"


def test_missing_key_says_how_to_get_one(cli: Cli) -> None:
    result = cli("containers", "list", env={"DOCKYARD_API_KEY": None})
    assert result.exit_code == 1
    assert "dockyard login" in result.stderr


def test_unknown_container_is_a_404_error(cli: Cli) -> None:
    missing = str(uuid.uuid4())
    result = cli("containers", "get", missing)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: container {missing} not found")


def test_malformed_options_are_usage_errors_before_any_request(cli: Cli) -> None:
    dead = {"DOCKYARD_URL": _closed_port_url()}
    bad_port = cli("templates", "create", "--name", "x", "--image", IMAGE, "--port", "70000", env=dead)
    assert bad_port.exit_code == 2
    assert "65535" in bad_port.output
    bad_env = cli("templates", "create", "--name", "x", "--image", IMAGE, "--env", "NOVALUE", env=dead)
    assert bad_env.exit_code == 2
    assert "NAME=VALUE" in bad_env.output


def test_catalog_lists_the_local_idc_and_its_products(cli: Cli) -> None:
    idcs = cli("idcs", "--json")
    assert idcs.exit_code == 0, idcs.output
    assert "local" in [i["idcId"] for i in json.loads(idcs.stdout)]
    products = cli("products", "--idc", "local", "--json")
    assert products.exit_code == 0, products.output
    assert "cpu.small" in [p["name"] for p in json.loads(products.stdout)]
    assert "cpu.small" in cli("products").stdout


def test_ssh_keys_add_list_delete(cli: Cli, tmp_path: Path) -> None:
    key_file = tmp_path / "id.pub"
    key_file.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOcy1j5lW3q8wQ2p0vR1cG4mVQ5y3kT4yZxv8eFh0J2b me@laptop\n")
    added = cli("ssh-keys", "add", "--name", "laptop", "--public-key-file", str(key_file))
    assert added.exit_code == 0, added.output
    key_id = added.stdout.strip()
    assert key_id in cli("ssh-keys", "list").stdout
    assert cli("ssh-keys", "delete", key_id).exit_code == 0
    assert key_id not in cli("ssh-keys", "list", "--json").stdout
    neither = cli("ssh-keys", "add", "--name", "x")
    assert neither.exit_code == 1
    assert "--public-key-file" in neither.stderr


def _template(cli: Cli, image: str = IMAGE) -> str:
    created = cli("templates", "create", "--name", "web", "--image", image, "--command", "httpd -f", "--port", "8080")
    assert created.exit_code == 0, created.output
    return created.stdout.strip()


def _runtime_object_id(cli: Cli, container_id: str) -> str:
    return next(o.id for o in cli.server.runtime.objects.values() if o.labels.get(LABEL_ID) == container_id)


def test_container_lifecycle_with_wait(cli: Cli) -> None:
    template_id = _template(cli)
    created = cli(
        "containers", "create", "--template", template_id, "--product", "cpu.small", "--name", "web",
        "--env", "MODE=demo", "--wait", "--settle", "0",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    container_id = created.stdout.strip().splitlines()[-1]
    assert "running" in created.stderr  # the progress table's last state

    listed = json.loads(cli("containers", "list", "--json").stdout)
    assert [(c["id"], c["status"]) for c in listed["items"]] == [(container_id, "running")]
    got = json.loads(cli("containers", "get", container_id, "--json").stdout)
    assert got["ports"][0]["containerPort"] == 8080
    assert got["ports"][0]["port"] is not None
    assert {"name": "MODE", "value": "******"} in got["envs"]
    assert "running" in cli("containers", "get", container_id).stdout

    cli.server.runtime.output[_runtime_object_id(cli, container_id)] += [b"one\n", b"two\n", b"three\n"]
    logs = cli("containers", "logs", container_id, "--tail", "2")
    assert logs.exit_code == 0, logs.output
    assert logs.stdout == "two\nthree\n"
    followed = cli("containers", "logs", container_id, "--follow")
    assert followed.exit_code == 0, followed.output
    assert followed.stdout == "one\ntwo\nthree\n"

    stopped = cli("containers", "stop", container_id, "--wait", "--json")
    assert stopped.exit_code == 0, stopped.output
    assert [c["status"] for c in json.loads(stopped.stdout)] == ["stopped"]

    started = cli("containers", "start", container_id, "--wait", "--settle", "0")
    assert started.exit_code == 0, started.output
    assert started.stdout == f"{container_id}: running\n"

    deleted = cli("containers", "delete", container_id, "--wait")
    assert deleted.exit_code == 0, deleted.output
    assert deleted.stdout == f"{container_id}: gone\n"
    assert "web" in deleted.stderr  # the progress table keeps the name of a container that is gone
    assert cli("containers", "get", container_id).exit_code == 1
    assert json.loads(cli("containers", "list", "--json").stdout)["items"] == []


def test_wait_exits_1_with_the_reason_when_the_container_fails(cli: Cli) -> None:
    template_id = _template(cli, image="localhost/missing:latest")
    created = cli(
        "containers", "create", "--template", template_id, "--product", "cpu.small", "--name", "broken", "--wait"
    )  # fmt: skip
    assert created.exit_code == 1
    container_id = json.loads(cli("containers", "list", "--json").stdout)["items"][0]["id"]
    assert (
        f"error: container broken ({container_id}) failed: image localhost/missing:latest not found" in created.stderr
    )


def test_wait_follows_a_container_waiting_for_a_gpu_until_it_runs(cli: Cli) -> None:
    """A container that does not fit waits (`creating`, saying for what) and is no failure: a --wait that runs out
    names the reason, and one that lasts sees it start once the GPU it waits for is freed."""
    admin = httpx.Client(base_url=cli.server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    gpus = f"/admin/v1/nodes/{local_node_id()}/simulated-gpus"
    declared = admin.put(gpus, json={"model": "NVIDIA H100 80GB HBM3", "count": 1, "memory_mb": 81559})
    assert declared.status_code == 200, declared.text
    template_id = _template(cli)
    try:
        first = cli("containers", "create", "--template", template_id, "--product", "gpu.h100.1x", "--name", "first",
                    "--wait", "--settle", "0")  # fmt: skip
        assert first.exit_code == 0, first.output
        first_id = first.stdout.strip().splitlines()[-1]
        second = cli("containers", "create", "--template", template_id, "--product", "gpu.h100.1x", "--name", "second",
                     "--wait", "--timeout", "2")  # fmt: skip
        assert second.exit_code == 1
        assert (
            "waiting for running: second is creating (waiting for capacity: no free GPU: needs 1 "
            "\N{MULTIPLICATION SIGN} H100, all 1 on IDC local are in use; it starts by itself once another container "
            "or endpoint worker on IDC local is deleted and frees enough)"
        ) in " ".join(second.stderr.split())
        listed = json.loads(cli("containers", "list", "--json").stdout)["items"]
        (second_id,) = [c["id"] for c in listed if c["name"] == "second"]

        assert cli("containers", "delete", first_id).exit_code == 0
        started = cli("containers", "start", second_id, "--wait", "--timeout", "30", "--settle", "0")
        assert started.exit_code == 0, started.output
        assert started.stdout == f"{second_id}: running\n"
    finally:
        for container in json.loads(cli("containers", "list", "--json").stdout)["items"]:
            cli("containers", "delete", container["id"], "--wait")
        assert admin.put(gpus, json={"count": 0}).status_code == 200
        admin.close()


def test_create_with_an_unknown_product_shows_the_servers_advice(cli: Cli) -> None:
    template_id = _template(cli)
    created = cli("containers", "create", "--template", template_id, "--product", "nope", "--name", "x")
    assert created.exit_code == 1
    assert created.stderr.startswith("error: ")
    assert "product" in created.stderr


def test_version_is_the_packages(cli: Cli) -> None:
    result = cli("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"dockyard {version('dockyard')}\n"


def test_help_documents_the_exit_codes(cli: Cli) -> None:
    shown = " ".join(cli("--help").stdout.split())
    assert "Exit status: 0 done" in shown
    assert "1 an error, or --wait ended without the awaited state" in shown


def test_the_servers_hints_name_commands_not_routes(cli: Cli) -> None:
    unknown = "0b7e7c1e-0000-4000-8000-000000000000"
    got = cli("containers", "get", unknown)
    assert got.exit_code == 1
    assert got.stderr == f"error: container {unknown} not found; `dockyard containers list` lists yours\n"
    created = cli("containers", "create", "--template", unknown, "--product", "cpu.small", "--name", "x")
    assert created.exit_code == 1
    assert "`dockyard templates create` creates one" in created.stderr
    assert "/api/v1" not in created.stderr
