"""Configuration precedence (environment over the YAML file over defaults), clear errors for bad values, and a data
dir open to its owner only."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dockyard.config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("DOCKYARD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DOCKYARD_DATA_DIR", str(tmp_path / "data"))


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dockyard.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment() -> None:
    settings = load_settings()
    assert (settings.host, settings.port, settings.log_format) == ("127.0.0.1", 8080, "console")
    assert settings.max_body_bytes == 10 * 1024 * 1024
    assert settings.resolved_database_url.endswith("/data/dockyard.db")


def test_environment_beats_file_beats_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = write_config(tmp_path, "port: 9000\nlog_level: debug\nmax_body_bytes: 2048\n")
    monkeypatch.setenv("DOCKYARD_CONFIG", str(config))
    from_file = load_settings()
    assert (from_file.port, from_file.log_level, from_file.max_body_bytes) == (9000, "debug", 2048)
    assert from_file.host == "127.0.0.1"  # in neither: the default

    monkeypatch.setenv("DOCKYARD_PORT", "9100")
    monkeypatch.setenv("DOCKYARD_HOST", "0.0.0.0")
    both = load_settings()
    assert (both.port, both.host) == (9100, "0.0.0.0")
    assert both.log_level == "debug"  # the file still wins over the default where the environment is silent


def test_explicit_arguments_beat_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKYARD_PORT", "9100")
    assert load_settings(port=7000).port == 7000


@pytest.mark.parametrize("source", ["environment", "file"])
def test_bad_log_format_names_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str) -> None:
    if source == "environment":
        monkeypatch.setenv("DOCKYARD_LOG_FORMAT", "xml")
    else:
        monkeypatch.setenv("DOCKYARD_CONFIG", str(write_config(tmp_path, "log_format: xml\n")))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert "log_format: log_format must be 'console' or 'json'" in message
    assert "DOCKYARD_CONFIG" in message


def test_bad_number_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKYARD_PORT", "eighty")
    with pytest.raises(ConfigError, match="port: "):
        load_settings()


def test_bad_webhook_allow_list_names_the_setting_and_the_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().webhook_allowed_hosts == "external"  # a fresh install: the public internet only
    monkeypatch.setenv("DOCKYARD_WEBHOOK_ALLOWED_HOSTS", "external, 10.0.0.0/33")
    with pytest.raises(ConfigError, match=r"webhook_allowed_hosts: '10\.0\.0\.0/33' is not a network"):
        load_settings()
    monkeypatch.setenv("DOCKYARD_WEBHOOK_ALLOWED_HOSTS", "loopback,fd00::/8,hooks.internal")
    assert load_settings().webhook_allowed_hosts == "loopback,fd00::/8,hooks.internal"


def test_an_engine_url_with_a_password_names_the_setting_not_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    # No engine API takes a password: the docker SDK refuses such a URL quoting it whole, which reached the local
    # IDC's runtime error in the admin API.
    monkeypatch.setenv("DOCKYARD_ENGINE_URL", "tcp://robot:pw-s3cret@10.0.0.5:2376")
    with pytest.raises(ConfigError, match="engine_url: must not hold a password") as raised:
        load_settings()
    assert "pw-s3cret" not in str(raised.value)
    monkeypatch.setenv("DOCKYARD_ENGINE_URL", "ssh://robot@10.0.0.5")
    assert load_settings().engine_url == "ssh://robot@10.0.0.5"


def test_missing_config_file_is_an_error_not_silent_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKYARD_CONFIG", str(tmp_path / "typo.yaml"))
    with pytest.raises(ConfigError, match=r"typo\.yaml, which is not a file"):
        Settings()


def test_server_command_refuses_a_bad_value(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env |= {"DOCKYARD_DATA_DIR": str(tmp_path), "DOCKYARD_LOG_FORMAT": "xml"}
    done = subprocess.run(
        [sys.executable, "-m", "dockyard", "server", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "log_format must be 'console' or 'json'" in done.stderr
    assert done.stdout == ""


def test_the_public_url_of_a_server_on_loopback_is_the_loopback_address() -> None:
    assert (
        Settings(host="127.0.0.1", port=9000, public_address="192.0.2.7").resolved_public_url == "http://127.0.0.1:9000"
    )
    assert (
        Settings(host="0.0.0.0", port=9000, public_address="192.0.2.7").resolved_public_url == "http://192.0.2.7:9000"
    )
    explicit = Settings(host="127.0.0.1", public_url="https://gpu.example/", gateway_url="https://run.example/")
    assert explicit.resolved_public_url == "https://gpu.example"
    assert explicit.resolved_gateway_url == "https://run.example"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_data_dir_is_private(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings()
    assert mode(settings.data_dir) == 0o700
    assert settings.resolved_secret_key  # generated into the data dir
    assert mode(settings.data_dir / "secret.key") == 0o600

    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)  # whatever the umask
    with caplog.at_level(logging.WARNING, logger="dockyard.config"):
        load_settings(data_dir=loose)
    assert mode(loose) == 0o700
    assert [r.getMessage() for r in caplog.records] == [
        f"data dir {loose} was open to other users (mode 755); it is now 700"
    ]


def test_repr_and_str_hold_no_secret() -> None:
    """As found: repr(Settings) held the Fernet key, the admin token and the database password."""
    planted = ("planted-fernet-key-0123456789", "planted-admin-token-0123", "planted-db-password", "planted-metrics")
    settings = Settings(
        secret_key=planted[0],
        admin_token=planted[1],
        database_url=f"postgresql+asyncpg://dockyard:{planted[2]}@db.example/dockyard",
        metrics_token=planted[3],
    )
    assert settings.resolved_database_url.endswith("@db.example/dockyard")  # cached on the instance now
    assert settings.resolved_secret_key == planted[0]
    for shown in (repr(settings), str(settings), f"{settings}", repr([settings])):
        assert not [secret for secret in planted if secret in shown], shown
    assert "port=8080" in repr(settings)  # the rest is still there
