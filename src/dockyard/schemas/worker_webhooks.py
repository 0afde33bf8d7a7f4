"""What the worker webhooks answer, in the shape the `ppio-gpus` and `runpod` worker SDKs parse (RunPod's
dialect: the job's `id` and its handler's `input`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class TakenJob(BaseModel):
    """A job handed to a worker by job-take: one as the answer, or a list of them for a batch take."""

    id: str
    input: Any = Field(description="the submitted `input`, passed to the handler as `job['input']`")
