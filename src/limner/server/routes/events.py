"""``WS /api/events``: the live feed of the user's jobs (state, progress, previews, images,
checkpoints) and of the boards shared with them. Messages are JSON objects with a ``type``
(docs/studio-api.md, "Progress events"); the server only sends, the client only listens.

Authentication is the page's session cookie, or ``?key=`` with an API key (a browser cannot set
an Authorization header on a WebSocket). The security middleware has already refused a foreign
Origin or Host at the handshake (cross-site WebSocket hijacking).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from limner.server.deps import authenticate

router = APIRouter(prefix="/api", tags=["events"])


@router.websocket("/events")
async def events(ws: WebSocket) -> None:
    studio = ws.app.state.studio
    user = await run_in_threadpool(authenticate, ws, studio)
    if user is None:
        await ws.close(code=1008, reason="log in first")
        return
    await ws.accept()
    sub = studio.hub.subscribe(user.id)
    relay = getattr(studio, "relay", None)
    if relay is not None:
        relay.watch(user)
    receiver = asyncio.create_task(_drain(ws))
    try:
        while True:
            getter = asyncio.create_task(sub.queue.get())
            done, _ = await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if receiver in done:
                getter.cancel()
                break
            await ws.send_json(getter.result())
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        receiver.cancel()
        studio.hub.unsubscribe(sub)
        if relay is not None:
            relay.unwatch(user)


async def _drain(ws: WebSocket) -> None:
    """Read (and ignore) what the client sends until it disconnects."""
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
    except (WebSocketDisconnect, RuntimeError):
        return
