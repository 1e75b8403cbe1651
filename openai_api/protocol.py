"""OpenAI chat-completions request/response models: the part an OCR model answers, plus the vLLM extras
(`extra_body`) that the DeepSeek-OCR recipe sends. Unknown fields are accepted and ignored, as vLLM does."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class ImageURL(BaseModel):
    url: str = Field(description="data:image/...;base64,... or an http(s) URL (fetched under the URL rules)")
    detail: str | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class NgramXargs(BaseModel):
    """vllm_xargs keys the repetition guard reads (others are passed on by vLLM and ignored here)."""

    model_config = ConfigDict(extra="allow")
    ngram_size: int | None = Field(None, ge=0, description="0 turns the guard off")
    window_size: int | None = Field(None, ge=1)
    whitelist_token_ids: list[int] | None = None


class MMProcessorKwargs(BaseModel):
    """The resolution mode as DeepSeek-OCR's processor takes it; missing keys come from DEFAULT_MODE."""

    model_config = ConfigDict(extra="forbid")
    base_size: int | None = None
    image_size: int | None = None
    crop_mode: bool | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = Field(None, description="any name: this service serves one model (see GET /v1/models)")
    messages: list[ChatMessage] = Field(min_length=1, description="exactly one image_url part in a user message")
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM's extras, as the DeepSeek-OCR recipe sends them in extra_body
    skip_special_tokens: bool = Field(True, description="false keeps the grounding tokens (<|ref|>, <|det|>)")
    ignore_eos: bool = False
    vllm_xargs: NgramXargs | None = None
    mm_processor_kwargs: MMProcessorKwargs | None = None
    # ours
    mode: str | None = Field(None, description="resolution mode by name: tiny, small, base, large, gundam")
    target: str | None = Field(None, description="text to find, for the 'locate' prompt")


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class StreamChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[StreamChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
