"""The decision service's HTTP interface (Starlette, served by uvicorn): routes, limits, error answers.

=======================================  ====================================================
``POST /v1/decisions``                   one application (a JSON object in the institution's
                                         own field names) → 201 with the decision
``POST /v1/decisions/batch``             ``{"applications": [...]}`` → 201 with one decision per
                                         item, or 422 for the whole batch (items numbered from 1)
``GET  /v1/decisions/{id}``              the decision as recorded, with its overrides
``POST /v1/decisions/{id}/override``     ``{"decision": "approve"|"decline", "reason", "by"}``
``GET  /v1/decisions/{id}/notice``       the adverse-action notice (text/plain) of a declined one
``GET  /v1/model``                       model identity, card summary, schema fields, cut-off
``GET  /healthz``                        200 while decisions can be made and recorded, else 503
=======================================  ====================================================

Every error is JSON ``{"error": CODE, "message": TEXT}`` (plus ``problems`` and ``warnings`` for
an invalid application): 400 not JSON, 404 no such decision or route, 405, 409 nothing to do,
413 body too large, 415 not ``application/json``, 422 invalid input — never 500 for bad input
(a 500 is a bug and is logged) — and 503 while the trail cannot be written or too many
applications wait (with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from clients.adverse_action import NoNoticeNeeded, adverse_action_notice
from clients.decision_desk import (OUTCOMES, DecisionDesk, Job, Overloaded, TrailUnavailable,
                                   UnknownDecision)
from clients.decision_engine import Rejected
from fedcredit.json_values import loads_strict
from fedcredit.signing_keys import ChainError

log = logging.getLogger("fedcredit.serve")

#: largest body of one application / of a batch / of an override, in bytes
DEFAULT_MAX_BODY = 64 * 1024
DEFAULT_MAX_BATCH_BODY = 8 * 1024 * 1024
DEFAULT_MAX_BATCH_ITEMS = 1000
MAX_OVERRIDE_TEXT = 2000


@dataclass(frozen=True)
class Limits:
    """Request size limits: bytes of one application's body, of a batch's body, items in a batch."""

    body_bytes: int = DEFAULT_MAX_BODY
    batch_bytes: int = DEFAULT_MAX_BATCH_BODY
    batch_items: int = DEFAULT_MAX_BATCH_ITEMS


class Problem(Exception):
    """An error answer: HTTP ``status``, a short ``code`` and a sentence that says what to fix."""

    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status == 503 else None
        return JSONResponse({"error": self.code, "message": self.message, **self.extra}, self.status,
                            headers=headers)


# ------------------------------------------------------------------------- reading bodies
async def read_json(request: Request, limit: int):
    """The request body parsed as strict JSON, within ``limit`` bytes."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise Problem(415, "unsupported-media-type",
                      f"send the body as JSON with 'Content-Type: application/json' (got {ctype or 'none'!r})")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Problem(413, "too-large", f"the body has {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Problem(413, "too-large", f"the body exceeds the limit of {limit} bytes")
    try:
        return loads_strict(bytes(body))
    except UnicodeDecodeError:
        raise Problem(400, "bad-json", "the body is not UTF-8 text") from None
    except ValueError as exc:
        raise Problem(400, "bad-json", f"the body is not valid JSON: {exc}") from None


def application_of(value, where: str = "the body") -> dict:
    """``value`` as one application: a non-empty JSON object."""
    if not isinstance(value, dict):
        raise Problem(422, "not-an-application",
                      f"{where} must be one application: a JSON object of field names and values, got a "
                      f"{type(value).__name__ if value is not None else 'null'}")
    if not value:
        raise Problem(422, "not-an-application", f"{where} is an empty object: it has no fields")
    return value


def override_request(value, decision_id: str) -> dict:
    """The override's fields, checked: ``decision`` (approve/decline), ``reason`` and ``by`` (non-empty text)."""
    if not isinstance(value, dict):
        raise Problem(422, "invalid-override", "the body must be a JSON object with decision, reason and by")
    unknown = sorted(set(value) - {"decision", "reason", "by"})
    problems = [{"field": k, "message": "unknown field"} for k in unknown]
    if value.get("decision") not in OUTCOMES:
        problems.append({"field": "decision", "message": f"must be 'approve' or 'decline', got {value.get('decision')!r}"})
    for name, what in (("reason", "why the decision is changed or confirmed"), ("by", "who decides (name or staff id)")):
        text = value.get(name)
        if not isinstance(text, str) or not text.strip():
            problems.append({"field": name, "message": f"required: {what}"})
        elif len(text) > MAX_OVERRIDE_TEXT:
            problems.append({"field": name, "message": f"longer than {MAX_OVERRIDE_TEXT} characters"})
    if problems:
        raise Problem(422, "invalid-override", "the override was not recorded: " +
                      "; ".join(f"{p['field']}: {p['message']}" for p in problems), problems=problems)
    return {"decision_id": decision_id, "to": value["decision"], "reason": value["reason"].strip(),
            "by": value["by"].strip()}


# --------------------------------------------------------------------------- the app
def build_app(desk: DecisionDesk, limits: Limits = Limits(), institution: str = "", contact: str = "") -> Starlette:
    """The ASGI application around a :class:`~clients.decision_desk.DecisionDesk` (started and closed
    with the app's lifespan)."""

    async def submit(job: Job):
        try:
            future = desk.submit(job)
        except Overloaded as exc:
            raise Problem(503, "overloaded", f"{exc}; retry shortly") from None
        except TrailUnavailable as exc:
            raise Problem(503, "trail-unavailable", str(exc)) from None
        try:
            return await asyncio.wrap_future(future)
        except TrailUnavailable as exc:
            raise Problem(503, "trail-unavailable", str(exc)) from None
        except UnknownDecision as exc:
            raise Problem(404, "unknown-decision", str(exc)) from None

    def invalid(rejected: Rejected, what: str) -> Problem:
        n = len(rejected.problems)
        return Problem(422, "invalid-application",
                       f"{what} failed validation ({n} problem{'s' if n != 1 else ''}); nothing was decided",
                       problems=rejected.problems, warnings=rejected.warnings)

    async def decide(request: Request) -> Response:
        application = application_of(await read_json(request, limits.body_bytes))
        answer = await submit(Job("single", [application]))
        if isinstance(answer, Rejected):
            raise invalid(answer, "the application")
        record = answer.records[0]
        return JSONResponse(record, 201, headers={"Location": f"/v1/decisions/{record['decision_id']}"})

    async def decide_batch(request: Request) -> Response:
        body = await read_json(request, limits.batch_bytes)
        items = body.get("applications") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise Problem(422, "not-a-batch", 'the body must be {"applications": [ {…}, … ]} with at least one '
                                              "application")
        if len(items) > limits.batch_items:
            raise Problem(413, "too-many-items", f"{len(items)} applications; a batch holds at most "
                                                 f"{limits.batch_items}")
        applications = [application_of(a, f"item {i}") for i, a in enumerate(items, 1)]
        answer = await submit(Job("batch", applications))
        if isinstance(answer, Rejected):
            raise invalid(answer, f"the batch of {len(applications)} applications")
        return JSONResponse({"batch_id": answer.batch_id, "count": len(answer.records),
                             "decisions": answer.records}, 201)

    def require_trail() -> None:
        if desk.log is None:
            raise Problem(409, "no-trail", "the service runs without a decision trail; nothing is stored")

    def stored(decision_id: str) -> tuple[dict, list[dict]]:
        require_trail()
        ref = desk.log.index.decisions.get(decision_id)
        if ref is None:
            raise Problem(404, "unknown-decision", f"no decision {decision_id!r} on this service's trail")
        try:
            return (desk.log.read_entry(ref.offset, ref.hash),
                    [desk.log.read_entry(o["offset"], o["hash"]) for o in list(ref.overrides)])
        except ChainError as exc:  # the file was changed under the running service
            log.error("%s", exc)
            raise Problem(500, "trail-changed", str(exc)) from None

    async def show(request: Request) -> Response:
        decision, overrides = await run_in_threadpool(stored, request.path_params["decision_id"])
        return JSONResponse({"decision": decision, "overrides": overrides})

    async def override(request: Request) -> Response:
        require_trail()
        decision_id = request.path_params["decision_id"]
        fields = override_request(await read_json(request, limits.body_bytes), decision_id)
        return JSONResponse(await submit(Job("override", override=fields)), 201)

    async def notice(request: Request) -> Response:
        decision, overrides = await run_in_threadpool(stored, request.path_params["decision_id"])
        try:
            text = adverse_action_notice(decision, overrides, desk.model.scale, institution, contact)
        except NoNoticeNeeded as exc:
            raise Problem(409, "no-adverse-action", str(exc)) from None
        return PlainTextResponse(text)

    async def model(request: Request) -> Response:
        return JSONResponse(desk.model.describe())

    async def health(request: Request) -> Response:
        trail = None if desk.log is None else {"dir": str(desk.log.path.parent), "entries": desk.log.next_index,
                                               "head": desk.log.head, "key_id": desk.log.key_id}
        ok = desk.failure is None
        if trail is not None:
            trail.update(syncs=desk.syncs, sync_ms_mean=round(1000 * desk.sync_seconds / max(desk.syncs, 1), 3))
        return JSONResponse({"status": "ok" if ok else "failing", "problem": desk.failure,
                             "model": desk.model.identity, "trail": trail, "waiting": desk.waiting,
                             "decided": desk.decided, "groups": desk.groups}, 200 if ok else 503)

    async def on_problem(request: Request, exc: Problem) -> Response:
        return exc.response()

    async def on_http(request: Request, exc: HTTPException) -> Response:
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return JSONResponse({"error": code, "message": str(exc.detail)}, exc.status_code, headers=exc.headers)

    async def on_bug(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal", "message": "internal error (logged); nothing was decided"}, 500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        desk.start()
        try:
            yield
        finally:
            await run_in_threadpool(desk.close)

    routes = [Route("/v1/decisions", decide, methods=["POST"]),
              Route("/v1/decisions/batch", decide_batch, methods=["POST"]),
              Route("/v1/decisions/{decision_id}", show, methods=["GET"]),
              Route("/v1/decisions/{decision_id}/override", override, methods=["POST"]),
              Route("/v1/decisions/{decision_id}/notice", notice, methods=["GET"]),
              Route("/v1/model", model, methods=["GET"]),
              Route("/healthz", health, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={Problem: on_problem, HTTPException: on_http, Exception: on_bug})
