"""OpenAI-compatible API (the subset vLLM's server offers for DeepSeek-OCR). Mounted under /v1.

The logic is in openai_api/serving.py, the request and response models in openai_api/protocol.py.
Errors on these routes are in OpenAI's shape, {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

import pipeline
from errors import InputError
from openai_api import serving
from openai_api.protocol import ChatCompletionRequest, ChatCompletionResponse, ErrorResponse, ModelList

PREFIX = "/v1"


class OpenAIRoute(APIRoute):
    """Renders InputError and request validation errors in OpenAI's error shape (only on this router)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except InputError as e:
                return serving.input_error_response(e)
            except RequestValidationError as e:
                return serving.validation_error_response(e)

        return route


router = APIRouter(
    prefix=PREFIX,
    tags=["OpenAI-compatible"],
    route_class=OpenAIRoute,
    responses={400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)


@router.get("/models")
async def models(request: Request) -> ModelList:
    """The model this service serves (503 until the engine is ready)."""
    return serving.list_models(pipeline.engine_of(request), pipeline.settings_of(request))


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE chunks with stream=true"}},
)
async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response | ChatCompletionResponse:
    """OCR one image_url part with the text parts as the prompt; `stream: true` sends OpenAI's SSE chunks."""
    if body.stream:
        return await serving.stream(request, body)
    return await pipeline.cancel_on_disconnect(request, serving.complete(request, body))
