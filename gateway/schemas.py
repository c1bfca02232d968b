"""Request bodies: validated from the raw bytes, only the fields the gateway relies on.

Every model allows extra fields, and the gateway forwards the client's own JSON, not a
re-serialisation of these models, so fields it does not know (vLLM's `top_k`,
`guided_json`, ...) reach the upstream untouched.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import InvalidRequest

ModelId = Annotated[str, Field(min_length=1, max_length=256)]
PositiveInt = Annotated[StrictInt, Field(ge=1)]
Temperature = Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]
TokenIds = list[Annotated[StrictInt, Field(ge=0)]]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class StreamOptions(_Open):
    include_usage: StrictBool = False


class ContentPart(_Open):
    type: Annotated[str, Field(min_length=1)]


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_where_required(self) -> ChatMessage:
        if self.role in ("system", "developer", "user") and self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self


class _Generation(_Open):
    """Fields shared by chat and text completions."""

    model: ModelId
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] = 1
    temperature: Temperature | None = None
    top_p: Probability | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Generation:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: PositiveInt | None = None

    @property
    def output_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Generation):
    prompt: str | list[str] | TokenIds | list[TokenIds]

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt must not be an empty list")
        return prompt


class EmbeddingRequest(_Open):
    model: ModelId
    input: str | list[str] | TokenIds | list[TokenIds]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: PositiveInt | None = None

    @field_validator("input")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be an empty list")
        return value


RequestT = TypeVar("RequestT", bound=BaseModel)

# Tags pydantic puts in an error location for union members and validators, not field names.
_LOC_TAG = re.compile(r"^(str|int|float|bool|none|list|dict|.*\[.*\])$")


def _param(loc: tuple[int | str, ...]) -> str | None:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not _LOC_TAG.match(item):
            parts.append(f".{item}" if parts else item)
    return "".join(parts) or None


def parse_request(schema: type[RequestT], raw: bytes) -> RequestT:
    """Validate `raw` against `schema`, or raise InvalidRequest naming the offending param."""
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> InvalidRequest:
    errors = exc.errors(include_url=False, include_input=False)
    # For a union (content: str | list[...]) pydantic reports one error per member; the one
    # that got deepest into the value is the one that says what is wrong.
    first = max(errors, key=lambda error: len(_param(error["loc"]) or ""))
    if first["type"] == "json_invalid":
        return InvalidRequest(
            "We could not parse the JSON body of your request. The body must be valid JSON.",
            code="invalid_json",
        )
    if first["type"] == "model_type" and not first["loc"]:
        return InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    param = _param(first["loc"])
    if first["type"] == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    message = str(first["msg"]).removeprefix("Value error, ")
    extra = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    where = f"'{param}'" if param else "the request body"
    return InvalidRequest(f"Invalid value for {where}: {message}.{extra}", param=param)
