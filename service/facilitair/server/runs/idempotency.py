"""Idempotency keys: a retry with the same client_request_id attaches to the run the key started, unless the
retry asks for other work, which is refused (ALREADY_EXISTS naming that run) instead of silently answered with
the old run.

"Other work" is a different task or context: what the run is about, stored exactly as the caller sent it
(the task as validated, the context as JSON). The rest of the stored request is not the caller's words but
their resolution at creation: the models, budgets and refinement bound come from the server's settings and
pipeline file when the request leaves them out, so a faithful retry after the server's settings changed would
differ from them and be refused wrongly. on_disconnect and coalesce_tokens describe one stream, not the run:
a retry may well ask for a different one.
"""

from __future__ import annotations

from facilitair.server.errors import AlreadyExists
from facilitair.server.pipeline.spec import RunSpec, UnreadableRecord
from facilitair.server.store.base import RunRow


def check_same_request(run: RunRow, spec: RunSpec) -> None:
    """Refuse `spec` when it reuses the idempotency key of `run` for a different task or context."""
    try:
        stored = RunSpec.from_json(run.spec)
    except UnreadableRecord:
        return  # nothing to compare with; the run itself ends as not resumable, which attaching shows
    changed = [
        name
        for name, before, now in (("task", stored.task, spec.task), ("context", stored.context, spec.context))
        if before != now
    ]
    if changed:
        raise AlreadyExists(
            f"client_request_id {spec.client_request_id!r} already started run {run.run_id} with a different "
            f"{' and '.join(changed)}; send the same request again to attach to that run, or use a new "
            "client_request_id for a new run"
        )
