"""Every error a client gets is one JSON body, `{"error": {"message", "type"}}`: 4xx for anything the client
sent (validation, unknown route, wrong key), 499 for a client that left, 500 (still JSON) for a bug."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from lmtune.errors import LmtuneError
from lmtune.infer.generate import describe


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        self.status, self.message, self.kind = status, message, kind


def error_payload(exc: Exception) -> dict:
    """What a client is told about an exception: ours (bad input) in full, anything else by its type."""
    if isinstance(exc, LmtuneError):
        return {"error": {"message": str(exc), "type": "invalid_request_error"}}
    return {"error": {"message": f"internal error: {type(exc).__name__}", "type": "server_error"}}


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def install_error_handlers(app: FastAPI, client_gone: type[Exception]) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.kind)

    @app.exception_handler(LmtuneError)
    async def lmtune_error(request: Request, exc: LmtuneError):
        return error_response(400, str(exc))

    @app.exception_handler(client_gone)
    async def gone(request: Request, exc: Exception):  # nobody reads it; logged as 499
        return error_response(499, "the client closed the request before it was served", "client_closed_request")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = exc.errors() or [{"loc": (), "msg": "invalid request"}]
        if problems[0].get("type") == "json_invalid":
            return error_response(422, "request body is not valid JSON")
        # For `str | list[str]` pydantic reports each branch; the type mismatch of the branch not taken is noise.
        return error_response(
            422, describe(next((p for p in problems if not p.get("type", "").endswith("_type")), problems[0]))
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # unknown path, wrong method: the same JSON shape
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # a bug of ours: still JSON, never a bare 500 page
        return JSONResponse(error_payload(exc), status_code=500)
