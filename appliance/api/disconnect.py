"""Stop the work of a client that has gone: non-streaming requests notice a disconnect too.

A streamed answer learns that its client left when a write fails, and its generator is closed,
which cancels the generation. A plain JSON answer writes nothing until the end, so a client that
gives up would leave its generation running to the last token. `unless_disconnected` runs the
work beside a watch on the ASGI `receive` channel: once the body is read, the server's next
message is `http.disconnect`, sent when the client closes the connection (uvicorn, and
Litestar's test client once the response is complete). The work is then cancelled, which stops
the generation in the worker and frees its slot, and the request ends as RequestCancelled (499).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from litestar import Request

from appliance.errors import RequestCancelled

T = TypeVar("T")


async def _disconnected(request: Request[Any, Any, Any]) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """The result of `work`, or RequestCancelled once the client has disconnected."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise RequestCancelled(
            "the client disconnected before the answer was ready; its generation was stopped"
        )
    finally:
        watch.cancel()
        if not task.done():  # the handler itself was cancelled (server shutdown)
            task.cancel()
