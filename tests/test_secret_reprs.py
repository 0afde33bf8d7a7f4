"""repr() and str() of every object that holds a secret and may reach a log line (an f-string, an exception's
message, a debugger's or a logging call's `%r`) show none of it: the settings, the runtime's request and its
registry credentials, a worker's webhook access, the workload spec's stored secrets, the requests that carry env
values, registry passwords and webhook URLs, and a webhook delivery."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dockyard.client import Client
from dockyard.config import Settings
from dockyard.core.workload import Credential, EnvVar, WorkloadSpec
from dockyard.reconcilers.job_webhooks import _Delivery
from dockyard.runtimes.base import RegistryAuth, RunSpec
from dockyard.schemas.endpoints import EndpointEnvIn
from dockyard.schemas.gmi import EnvIn
from dockyard.schemas.jobs import RunRequest
from dockyard.schemas.registry_auths import CreateRegistryAuthRequest
from dockyard.schemas.templates import CreateTemplateRequest, TemplateCredential
from dockyard.secrets import SecretBox
from dockyard.services.worker_runspec import WebhookAccess

SECRET = "planted-s3cret-value-0123456789"
FERNET_KEY = "dGhpcy1pcy1hLXBsYW50ZWQtZmVybmV0LWtleS0wMTI="
WEBHOOK = f"https://hook:{SECRET}@hooks.example/done?token={SECRET}"

HOLDERS: dict[str, Callable[[], Any]] = {
    "Settings": lambda: Settings(
        secret_key=FERNET_KEY,
        admin_token=SECRET,
        metrics_token=SECRET,
        database_url=f"postgresql+asyncpg://dockyard:{SECRET}@db.example/dockyard",
    ),
    "RegistryAuth": lambda: RegistryAuth("robot", SECRET),
    "RunSpec": lambda: RunSpec(
        name="dy-c-1",
        image="registry.example/app:1",
        labels={"dockyard.managed": "true"},
        env={"API_TOKEN": SECRET},
        registry_auth=RegistryAuth("robot", SECRET),
    ),
    "WebhookAccess": lambda: WebhookAccess("http://host.containers.internal:8080", f"dyw_{SECRET}", 10000),
    "Credential": lambda: Credential(username="robot", secret=SECRET),
    "EnvVar": lambda: EnvVar(name="API_TOKEN", value=SECRET),
    "WorkloadSpec": lambda: WorkloadSpec(
        image="app:1",
        credential=Credential(username="robot", secret=SECRET),
        envs=[EnvVar(name="API_TOKEN", value=SECRET)],
    ),
    "EnvIn": lambda: EnvIn(name="API_TOKEN", value=SECRET),
    "EndpointEnvIn": lambda: EndpointEnvIn(key="HF_TOKEN", value=SECRET),
    "CreateTemplateRequest": lambda: CreateTemplateRequest(
        name="private",
        path="registry.example/app:1",
        credential=TemplateCredential(username="robot", secret=SECRET),
        envs=[EnvIn(name="API_TOKEN", value=SECRET)],
    ),
    "CreateRegistryAuthRequest": lambda: CreateRegistryAuthRequest(name="hub", username="robot", password=SECRET),
    "RunRequest": lambda: RunRequest(input={"prompt": "hi"}, webhook=WEBHOOK),
    "_Delivery": lambda: _Delivery("job-1", "org-1", 2, WEBHOOK, 1, {"id": "job-1", "status": "COMPLETED"}),
    "SecretBox": lambda: SecretBox(FERNET_KEY),
    "Client": lambda: Client("http://127.0.0.1:8080", SECRET),
}


@pytest.mark.parametrize("name", HOLDERS)
def test_repr_and_str_hide_the_secrets_held(name: str) -> None:
    holder = HOLDERS[name]()
    try:
        for shown in (repr(holder), str(holder), f"{holder!r}", repr([holder]), repr({"held": holder})):
            assert SECRET not in shown, shown
            assert FERNET_KEY not in shown, shown
    finally:
        if isinstance(holder, Client):
            holder.close()
