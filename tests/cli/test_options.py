"""The repeatable options' parsing into the API's wire shapes, and the refusals a user sees."""

from __future__ import annotations

import pytest
import typer

from dockyard.cli.options import parse_envs, parse_ports, parse_storages


def test_ports_take_a_fixed_host_port_and_a_protocol() -> None:
    assert parse_ports(["8080", "8081:30081", "53/udp", "5000:31000/TCP"]) == [
        {"containerPort": 8080, "protocol": "TCP"},
        {"containerPort": 8081, "port": 30081, "protocol": "TCP"},
        {"containerPort": 53, "protocol": "UDP"},
        {"containerPort": 5000, "port": 31000, "protocol": "TCP"},
    ]


@pytest.mark.parametrize("value", ["0", "65536", "http", "8080:", "8080/sctp", ":80"])
def test_malformed_ports_are_refused_with_an_example(value: str) -> None:
    with pytest.raises(typer.BadParameter, match="8080"):
        parse_ports([value])


def test_env_values_may_hold_equals_signs_and_be_empty() -> None:
    assert parse_envs(["A=b=c", "EMPTY="]) == [{"name": "A", "value": "b=c"}, {"name": "EMPTY", "value": ""}]


@pytest.mark.parametrize("value", ["NOVALUE", "=x"])
def test_env_without_a_name_or_sign_is_refused(value: str) -> None:
    with pytest.raises(typer.BadParameter, match="NAME=VALUE"):
        parse_envs([value])


def test_storages_need_an_absolute_path() -> None:
    assert parse_storages(["s1:/workspace"]) == [{"id": "s1", "containerPath": "/workspace"}]
    with pytest.raises(typer.BadParameter, match="absolute"):
        parse_storages(["s1:workspace"])
