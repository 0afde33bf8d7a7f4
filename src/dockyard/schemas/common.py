"""Pieces every wire model shares: the error body, the two naming styles, time formats, limits."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

T = TypeVar("T")

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"
IMAGE_PATTERN = r"^[^\s]+$"
MAX_ENVS = 200
MAX_ENV_VALUE = 32 * 1024
MAX_ARGS = 256
MAX_ARG = 4096


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
    }.items()
}
