"""Every error a client can see, as one tree, each rendered as an OpenAI error body.

    GatewayError                          {"error": {"message", "type", "param", "code"}}
    ├── InvalidRequest        400  invalid_request_error   malformed JSON, failed validation
    ├── AuthenticationFailed  401  invalid_request_error   invalid_api_key
    ├── PermissionDenied      403  invalid_request_error   model_not_allowed, ...
    ├── NotFound              404  invalid_request_error   model_not_found, unknown_url
    ├── MethodNotAllowed      405  invalid_request_error   method_not_allowed
    ├── RequestTimeout        408  invalid_request_error   request_timeout
    ├── PayloadTooLarge       413  invalid_request_error   request_too_large
    ├── UnsupportedEncoding   415  invalid_request_error   unsupported_content_encoding
    ├── RateLimited           429  rate_limit_exceeded (Retry-After set by the raiser)
    ├── InternalError         500  server_error            a bug in the gateway, never details
    ├── UpstreamFailed        502  upstream_error          the model service failed
    ├── ServiceUnavailable    503  service_unavailable     no replica can take the request
    └── UpstreamTimeout       504  upstream_timeout        the model service did not answer

The status picks the official SDK's exception class (BadRequestError, AuthenticationError,
PermissionDeniedError, NotFoundError, RateLimitError, InternalServerError, ...). Messages
never carry stack traces or an upstream's internals: those go to the logs.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    error_type = "invalid_request_error"
    default_code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class RequestTimeout(GatewayError):
    status = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"


class PayloadTooLarge(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedEncoding(GatewayError):
    status = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_content_encoding"


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_exceeded"
    default_code = "rate_limit_exceeded"


class BudgetExceeded(RateLimited):
    """A key's or a model's token budget for its period is spent (OpenAI's spent quota)."""

    error_type = "insufficient_quota"
    default_code = "insufficient_quota"


class InternalError(GatewayError):
    status = 500
    error_type = "server_error"
    default_code = "internal_error"


class UpstreamFailed(GatewayError):
    status = 502
    error_type = "upstream_error"
    default_code = "upstream_error"


class ServiceUnavailable(GatewayError):
    status = 503
    error_type = "service_unavailable"
    default_code = "service_unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    error_type = "upstream_timeout"
    default_code = "upstream_timeout"
