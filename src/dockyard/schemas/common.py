"""Pieces every wire model shares: the error body, the two naming styles, time formats, limits."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from dockyard.core import inputs

T = TypeVar("T")

ENV_NAME_PATTERN = inputs.ENV_NAME_PATTERN
MAX_ENVS = 200
MAX_ENV_VALUE = 32 * 1024
MAX_ARGS = 256
MAX_ARG = 4096


def _rule(problem: Callable[[str], str | None]) -> AfterValidator:
    """A validator from a `dockyard.core.inputs` rule: its sentence becomes the 422's message for the field."""

    def check(value: str) -> str:
        if (why := problem(value)) is not None:
            raise ValueError(why)
        return value

    return AfterValidator(check)


RESERVED_ENV_HELP = (
    ", ".join([*inputs.RESERVED_ENV_NAMES, *(f"{prefix}*" for prefix in inputs.RESERVED_ENV_PREFIXES)])
    + " are reserved for Dockyard, except "
    + ", ".join(sorted(inputs.USER_SDK_SWITCHES))
)
MOUNT_PATH_HELP = (
    "absolute path of letters, digits and _ . - /; not /, not at or under "
    + ", ".join(inputs.SYSTEM_MOUNT_ROOTS)
    + f", not a system directory itself (/etc, /usr, /bin, ...) nor {inputs.AUTHORIZED_KEYS_TARGET}; each path once"
)

# Request-only types: the answers' models stay plain, so a row stored before a rule existed is still readable.
MountPath = Annotated[
    str,
    Field(max_length=inputs.MAX_MOUNT_PATH, json_schema_extra={"pattern": inputs.MOUNT_PATH_PATTERN}),
    _rule(inputs.mount_path_problem),
]
"""An absolute mount path of letters, digits and `_ . - /`, not at or under a system path."""
ImageReference = Annotated[str, Field(min_length=1, max_length=inputs.MAX_IMAGE_REFERENCE), _rule(inputs.image_problem)]
"""A Docker image reference: `[host[:port]/]path[:tag][@digest]`."""
UserEnvName = Annotated[
    str,
    Field(min_length=1, max_length=inputs.MAX_ENV_NAME, json_schema_extra={"pattern": inputs.ENV_NAME_PATTERN}),
    _rule(inputs.user_env_name_problem),
]
"""A variable name a user may set: the POSIX-like charset, and none of the names Dockyard reserves."""
EnvValue = Annotated[str, Field(max_length=MAX_ENV_VALUE), _rule(inputs.nul_problem)]
Argument = Annotated[str, Field(max_length=MAX_ARG), _rule(inputs.nul_problem)]
"""A command, entrypoint or argument: split like a shell would where it is a command line, then handed to the
runtime as JSON array elements: the server never runs a shell on it, nor joins it into an engine option."""
Text = Annotated[str, _rule(inputs.text_problem)]
"""A name or free text that is shown and logged: no control characters."""
UrlPath = Annotated[
    str,
    Field(max_length=inputs.MAX_URL_PATH, json_schema_extra={"pattern": inputs.URL_PATH_PATTERN}),
    _rule(inputs.url_path_problem),
]
"""A URL path Dockyard requests on a worker: RFC 3986 path characters without `@`, `#`, `\\` or spaces."""
EngineUrl = Annotated[str, _rule(inputs.engine_url_problem)]
"""A container engine's API URL, which holds no password."""


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unix(value: datetime) -> int:
    return int(value.timestamp())


Rfc3339 = Annotated[datetime, PlainSerializer(_rfc3339, return_type=str)]
UnixSeconds = Annotated[datetime, PlainSerializer(_unix, return_type=int)]


class CamelModel(BaseModel):
    """GMI style: camelCase on the wire, snake_case in Python; both accepted on input, unknown fields ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class SnakeModel(BaseModel):
    """PPIO style: snake_case on the wire; unknown fields ignored."""

    model_config = ConfigDict(extra="ignore")


class ErrorDetail(BaseModel):
    field: str = ""
    message: str


class ErrorBody(BaseModel):
    """The body of every 4xx/5xx answer."""

    code: int = Field(description="the HTTP status")
    reason: str = Field(description="UPPER_SNAKE machine-readable reason", examples=["INVALID_ARGUMENT"])
    message: str = Field(description="a sentence for a person: what went wrong and what to do")
    details: list[ErrorDetail] = Field(default_factory=list)


class IdResponse(CamelModel):
    id: str


class Page(CamelModel, Generic[T]):
    """GMI's page: `{"items": [...], "total": n, "page": p, "pageSize": s}`."""

    items: list[T]
    total: int
    page: int
    page_size: int


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        401: "missing or invalid API key",
        404: "no such object in your organization",
        409: "a concurrent change won; read again and retry",
        413: "request body too large",
        422: "a field is invalid; `details` names it",
        429: "past one of your organization's quotas (`details` names it, GET /gpus/v2/quotas shows them all)",
    }.items()
}
