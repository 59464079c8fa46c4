"""The HTTP/JSON endpoints: convert, call the run service the gRPC servicer calls, convert back.

Errors are raised, not answered here: the middleware (gateway/app.py) answers every one from the shared table.
"""

from __future__ import annotations

import io
import zipfile

from aiohttp import web

from facilitair.server.domain import FINISHED_STATES
from facilitair.server.errors import FailedPrecondition
from facilitair.server.gateway import sse
from facilitair.server.gateway.auth import CSRF_HEADER, SESSION_COOKIE, SESSION_SECONDS, Caller, Sessions
from facilitair.server.gateway.bodies import json_response, read_json, respond, to_message
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.runs.service import RunService
from facilitair.server.settings import Settings
from facilitair.server.telemetry import Telemetry
from facilitair.server.transport import requests
from facilitair.v1 import orchestrator_pb2 as pb

# Where the middleware puts the request's Caller.
CALLER = web.RequestKey("facilitair.caller", Caller)


class Api:
    """The handlers of /v1/*."""

    def __init__(
        self,
        runs: RunService,
        settings: Settings,
        config: PipelineConfig,
        info: pb.GetServerInfoResponse,
        sessions: Sessions,
        *,
        telemetry: Telemetry,
    ) -> None:
        self._runs = runs
        self._telemetry = telemetry  # a run created here joins the trace its caller's traceparent header names
        self._settings = settings
        self._config = config
        self._info = info
        self._sessions = sessions

    def routes(self) -> list[web.RouteDef]:
        """The routes, for app.add_routes."""
        return [
            web.post("/v1/runs", self.create_run),
            web.get("/v1/runs", self.list_runs),
            web.get("/v1/runs/{run_id:[^/:]+}", self.get_run),
            web.post("/v1/runs/{run_id:[^/:]+}:cancel", self.cancel_run),
            # No HEAD: a stream has no head to give without following the run to its end.
            web.get("/v1/runs/{run_id:[^/:]+}/events", self.events, allow_head=False),
            web.get("/v1/runs/{run_id:[^/:]+}/files", self.files),
            web.get("/v1/info", self.info),
            web.post("/v1/login", self.login),
            web.post("/v1/logout", self.logout),
            web.get("/v1/session", self.session),
        ]

    @staticmethod
    def _principal(request: web.Request) -> str:
        return request[CALLER].principal

    async def create_run(self, request: web.Request) -> web.Response:
        """POST /v1/runs: a CollaborateRequest; 201 with the run (GetRunResponse), or the one its request id made."""
        message = to_message(await read_json(request), pb.CollaborateRequest)
        spec = requests.run_spec(message, self._settings, self._config)
        principal = self._principal(request)
        parent, state = request.headers.get("traceparent"), request.headers.get("tracestate")
        with self._telemetry.server_span("POST /v1/runs", parent, state) as trace:
            run_id = await self._runs.create_run(spec, principal, traceparent=trace)
            run = await self._runs.get_run(run_id, principal)
        return respond(pb.GetRunResponse(run=run), status=201, headers={"Location": f"/v1/runs/{run_id}"})

    async def list_runs(self, request: web.Request) -> web.Response:
        """GET /v1/runs?state=&pageSize=&pageToken=: ListRuns, same paging."""
        query = dict(request.query)
        message = to_message(query, pb.ListRunsRequest)
        state = requests.run_state_of(message.state)
        runs, token = await self._runs.list_runs(self._principal(request), state, message.page_size, message.page_token)
        return respond(pb.ListRunsResponse(runs=runs, next_page_token=token))

    async def get_run(self, request: web.Request) -> web.Response:
        """GET /v1/runs/{id}: GetRun (any accepted id form: the id, a prefix, `last`)."""
        run = await self._runs.get_run(requests.run_id_of(request.match_info["run_id"]), self._principal(request))
        return respond(pb.GetRunResponse(run=run))

    async def cancel_run(self, request: web.Request) -> web.Response:
        """POST /v1/runs/{id}:cancel: CancelRun."""
        run_id = requests.run_id_of(request.match_info["run_id"])
        run = await self._runs.cancel_run(run_id, self._principal(request))
        return respond(pb.CancelRunResponse(run=run))

    async def events(self, request: web.Request) -> web.StreamResponse:
        """GET /v1/runs/{id}/events: the SSE stream (gateway/sse.py)."""
        return await sse.stream_events(request, self._runs, self._principal(request))

    async def files(self, request: web.Request) -> web.Response:
        """GET /v1/runs/{id}/files: a finished run's files as one zip (as `facilitair files` writes them)."""
        principal = self._principal(request)
        run = await self._runs.get_run(requests.run_id_of(request.match_info["run_id"]), principal)
        if run.state == pb.RUN_STATE_COMPLETED:
            artifacts = list(run.result.artifacts)
        elif run.state in FINISHED_STATES:
            # Ended early: no result, but its artifact_produced events hold every file it stored (the latest
            # version of each path, in the order the paths were first written).
            latest: dict[str, pb.Artifact] = {}
            async for batch in await self._runs.watch(run.run_id, 0, principal):
                for event in batch:
                    if event.WhichOneof("payload") == "artifact_produced":
                        latest[event.artifact_produced.artifact.path] = event.artifact_produced.artifact
            artifacts = list(latest.values())
        else:
            raise FailedPrecondition(f"run {run.run_id} has not finished: its files come when it ends")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for artifact in artifacts:
                archive.writestr(artifact.path, artifact.content)
        name = f"facilitair-{run.run_id[:8]}.zip"
        return web.Response(
            body=buffer.getvalue(),
            content_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    async def info(self, request: web.Request) -> web.Response:
        """GET /v1/info: GetServerInfo."""
        return respond(self._info)

    async def login(self, request: web.Request) -> web.Response:
        """POST /v1/login {"key": ...}: a session cookie for the key's principal, and its CSRF token."""
        body = await read_json(request)
        key = body.get("key")
        cookie, csrf = self._sessions.login(key if isinstance(key, str) else "")
        principal = self._sessions.verify(cookie)
        response = json_response({"principal": principal, "csrfToken": csrf, "csrfHeader": CSRF_HEADER})
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self._sessions.secure,
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """POST /v1/logout: forget the session cookie."""
        response = web.Response(status=204)
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def session(self, request: web.Request) -> web.Response:
        """GET /v1/session: who the page is (401 when it must log in) and the CSRF token it sends."""
        caller = self._sessions.caller(request)
        csrf = self._sessions.csrf_token(request.cookies[SESSION_COOKIE]) if caller.by_cookie else ""
        return json_response(
            {
                "principal": caller.principal,
                "loginRequired": self._sessions.required,
                "csrfToken": csrf,
                "csrfHeader": CSRF_HEADER,
            }
        )
