"""GMI templates: an image and its defaults (command, args, envs, ports), reused by containers."""

from __future__ import annotations

from pydantic import Field

from dockyard.schemas.common import IMAGE_PATTERN, MAX_ARG, MAX_ARGS, CamelModel, Rfc3339
from dockyard.schemas.gmi import Env, Port


class TemplateCredential(CamelModel):
    username: str = Field(min_length=1, max_length=255)
    secret: str = Field(min_length=1, max_length=4096, description="the registry password; masked in answers")


class CreateTemplateRequest(CamelModel):
    name: str = Field(min_length=1, max_length=255, examples=["pytorch"])
    path: str = Field(
        min_length=1,
        max_length=500,
        pattern=IMAGE_PATTERN,
        description="the image",
        examples=["localhost/app:1"],
    )
    credential: TemplateCredential | None = None
    command: str = Field(default="", max_length=MAX_ARG)
    args: list[str] = Field(default_factory=list, max_length=MAX_ARGS)
    envs: list[Env] = Field(default_factory=list, max_length=200)
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
