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
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.http.errors import InvalidRequest

ModelId = Annotated[str, Field(min_length=1, max_length=256)]
PositiveInt = Annotated[StrictInt, Field(ge=1)]
# Numbers must be JSON numbers: a string such as "0.5" is refused here rather than passed on
# to a server that may answer it with a 500 (llama-cpp-python does).
Temperature = Annotated[StrictFloat, Field(ge=0, le=2, allow_inf_nan=False)]
Probability = Annotated[StrictFloat, Field(ge=0, le=1, allow_inf_nan=False)]
Penalty = Annotated[StrictFloat, Field(ge=-2, le=2, allow_inf_nan=False)]
TokenIds = list[Annotated[StrictInt, Field(ge=0)]]
Seed = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
StopSequence = Annotated[StrictStr, Field(max_length=1024)]
Stop = StopSequence | Annotated[list[StopSequence], Field(max_length=64)]
FunctionName = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Bias = Annotated[StrictFloat, Field(ge=-100, le=100, allow_inf_nan=False)]
_TOKEN_ID = re.compile(r"^\d{1,10}$")


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


class FunctionDefinition(_Open):
    name: FunctionName
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class Tool(_Open):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Open):
    name: FunctionName


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Open):
    name: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: StrictStr | None = None
    strict: StrictBool | None = None


class ResponseFormat(_Open):
    # structural_tag is vLLM's; servers that do not know a type refuse it themselves.
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_for_json_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required when type is json_schema")
        return self


class _Generation(_Open):
    """Fields shared by chat and text completions: every standard OpenAI field, and the
    common server extras (top_k, min_p, repetition_penalty), typed and ranged. Fields the
    gateway does not know pass through untouched."""

    model: ModelId
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] = 1
    temperature: Temperature | None = None
    top_p: Probability | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stop: Stop | None = None
    seed: Seed | None = None
    logit_bias: Annotated[dict[StrictStr, Bias], Field(max_length=1024)] | None = None
    logit_bias_type: Literal["input_ids", "tokens"] | None = None  # llama-cpp-python's
    user: Annotated[StrictStr, Field(max_length=256)] | None = None
    metadata: (
        Annotated[
            dict[
                Annotated[StrictStr, Field(max_length=64)],
                Annotated[StrictStr, Field(max_length=512)],
            ],
            Field(max_length=16),
        ]
        | None
    ) = None
    top_k: Annotated[StrictInt, Field(ge=-1)] | None = None  # vLLM, llama.cpp, TGI, SGLang
    min_p: Probability | None = None
    repetition_penalty: Annotated[StrictFloat, Field(gt=0, le=10)] | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Generation:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, bias: dict[str, float] | None, info: ValidationInfo) -> Any:
        if bias and info.data.get("logit_bias_type") != "tokens":
            for key in bias:
                if not _TOKEN_ID.match(key):
                    raise ValueError(f"keys must be token ids (integers as strings), not {key!r}")
        return bias

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: PositiveInt | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    functions: Annotated[list[FunctionDefinition], Field(max_length=128)] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    response_format: ResponseFormat | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("requires logprobs to be true")
        return value

    @property
    def output_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Generation):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    echo: StrictBool | None = None
    best_of: Annotated[StrictInt, Field(ge=1, le=20)] | None = None
    suffix: StrictStr | None = None

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
_LOC_TAG = re.compile(
    r"^(str|int|float|bool|none|list|dict|constrained-\w+|function-\w+|[A-Z][A-Za-z0-9]*"
    r"|.*\[.*\])$"
)


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
