"""Turning exceptions into statuses, for unary and streaming handlers alike."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from services.front.errors import FrontError
from services.front.logging import log_event

R = TypeVar("R")


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, FrontError):
        await context.abort_with_status(exc.to_status())
    log_event(
        "unexpected error",
        level=logging.ERROR,
        exc_info=True,
        method=method,
        error_type=type(exc).__name__,
    )
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); the server logged it"
    )


def unary(
    fn: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]:
    @functools.wraps(fn)
    async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, fn.__name__)
            raise  # abort raises; this keeps type checkers content

    return call


def streaming(
    fn: Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[R]]:
    @functools.wraps(fn)
    async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[R]:
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, fn.__name__)

    return call
