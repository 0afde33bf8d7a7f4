"""GMI templates: an image and its defaults (command, args, envs, ports), reused by containers."""

from __future__ import annotations

from pydantic import Field

from dockyard.schemas.common import MAX_ARGS, MAX_ENVS, Argument, CamelModel, ImageReference, Rfc3339, Text
from dockyard.schemas.gmi import Env, EnvIn, Port


class TemplateCredential(CamelModel):
    username: str = Field(min_length=1, max_length=255)
    secret: str = Field(
        min_length=1, max_length=4096, description="the registry password; masked in answers", repr=False
    )


class CreateTemplateRequest(CamelModel):
    name: Text = Field(min_length=1, max_length=255, examples=["pytorch"])
    path: ImageReference = Field(description="the image", examples=["localhost/app:1"])
    credential: TemplateCredential | None = None
    command: Argument = ""
    args: list[Argument] = Field(default_factory=list, max_length=MAX_ARGS)
    envs: list[EnvIn] = Field(default_factory=list, max_length=MAX_ENVS)
    ports: list[Port] = Field(default_factory=list, max_length=5)


class UpdateTemplateRequest(CreateTemplateRequest):
    pass


class Template(CamelModel):
    id: str
    name: str
    path: str
    credential: TemplateCredential | None = None
    command: str
    args: list[str]
    envs: list[Env]
    ports: list[Port]
    org_id: str
    created_at: Rfc3339
    modified_at: Rfc3339
