"""``X-Replica``: which generation replica produced a mesh response (Ray backend only).

The routes build their responses without knowing about replicas, so the ingress tells this middleware
through a per-request slot: the middleware puts an empty :class:`ReplicaSlot` in a context variable before
the app runs, :class:`~server.ray_serve.remote_engine.RemoteEngine` fills it when the replica's answer
arrives, and the middleware adds the header when the response starts. A context variable holds the slot
(not the id) because inner code may run in a copied context: the copy still holds the same slot object.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Replica"


@dataclass
class ReplicaSlot:
    """The replica that answered the current request (``None``: none did, e.g. a cache hit or a 304)."""

    replica: str | None = None


CURRENT: contextvars.ContextVar[ReplicaSlot | None] = contextvars.ContextVar("att3d_replica", default=None)
"""The slot of the request being served (``None`` outside a request)."""


class ReplicaHeaderMiddleware:
    """Adds ``X-Replica: <replica id>`` to a response that a generation replica produced."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        slot = ReplicaSlot()
        token = CURRENT.set(slot)

        async def send_with_replica(message: Message) -> None:
            if message["type"] == "http.response.start" and slot.replica is not None:
                headers = list(message.get("headers", []))
                headers.append((HEADER.lower().encode(), slot.replica.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_replica)
        finally:
            CURRENT.reset(token)
