"""The response bodies as OpenAPI schemas: what ``/openapi.json`` promises, and the fuzz tests check.

Documentation only: the handlers answer with ``JSONResponse`` (no validation on the way out), so these
models say what a client can rely on. ``tests/serve/test_fuzz.py`` validates every answer the server
gives to generated requests against them, so the description cannot drift from the behaviour.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every error answer (4xx and 5xx): one line, for people and logs alike."""

    detail: str = Field(description="what went wrong, in one line")


class Verdict(BaseModel):
    """``POST /api/v1/predict``'s answer (and a finished job's ``result``)."""

    filename: str = Field(description="the client's file name")
    size: int = Field(description="bytes received")
    label: str = Field(description="REAL or FAKE; empty when the video could not be scored")
    p_fake: Optional[float] = Field(description="P(FAKE) score (a probability when `calibrated`)")
    threshold: Optional[float] = Field(description="FAKE when p_fake >= threshold")
    calibrated: bool
    status: str = Field(description="ok, no_face, or why there is no verdict (unreadable, too_short, ...)")
    error: str
    frames: Optional[int] = None
    face_ratio: Optional[float] = None
    faces: list[dict[str, Any]] = Field(default_factory=list, description="each tracked face's track, "
                                        "p_fake and box (with ?explain=true also its own heat-map strip, "
                                        "explanation_png); the verdict is the highest face's")
    segments: list[dict[str, Any]] = Field(default_factory=list, description="with ?segments=true: each "
                                           "time window's start and end (seconds), p_fake, frames and "
                                           "status; the verdict is the highest window's")
    segment_seconds: Optional[float] = Field(None, description="with ?segments=true: the windows' width "
                                             "(wider than asked when the video needs more windows than "
                                             "max_segments)")
    video: Optional[dict[str, Any]] = Field(None, description="container, codec, size and duration")
    model: dict[str, Any] = Field(description="name, sha256 and version of the loaded model")
    timing: dict[str, float] = Field(description="seconds per step")
    cached: bool = Field(description="the same bytes were analysed before; this is that verdict")
    explanation_png: Optional[str] = Field(None, description="with ?explain=true: the heat-map strip (PNG, "
                                                               "base64) of the main face (track 0)")


class JobError(BaseModel):
    status: int = Field(description="the HTTP status /api/v1/predict would have answered")
    detail: str


class Job(BaseModel):
    """``POST /api/v1/jobs`` and ``GET /api/v1/jobs/{id}``."""

    id: str = Field(description="128 random bits, hex")
    state: str = Field(description="queued, processing, done or error")
    filename: str
    size: int
    explain: bool
    created: float
    updated: float
    result: Optional[Verdict] = Field(None, description="when done")
    error: Optional[JobError] = Field(None, description="when the state is error")


def error(description: str) -> dict[str, Any]:
    """An error response entry for a route's ``responses``."""
    return {"description": description, "model": ErrorBody}
