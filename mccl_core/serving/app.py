"""``mccl serve``: MLflow's own scoring server, with error bodies that echo no request data and no server paths.

    mccl serve --model models:/mccl-intent@champion --port 5001

Why not only ``mlflow models serve``: the errors our model raises never contain request data
(:class:`~mccl_core.serving.pyfunc.RequestRejected`), but some 4xx answers are written by MLflow
before or around our code, and those echo the request or the server's files (MLflow 3.17):

* any ``MlflowException`` raised inside ``PyFuncModel.predict`` other than ours - the params
  schema check (``"params": {"explain": "yes"}``) and the input schema check (no ``image``
  column) - is prefixed with ``"Failed to predict data '<str(input frame)>'"``: pandas shows up to
  50 characters of each of up to 60 rows, i.e. the clients' base64 images; the schema check adds
  the frame a second time;
* a JSON body that does not parse comes back in full (``"Input: <body>"``), and one that is not
  UTF-8 as the ``repr`` of its bytes;
* a ``text/csv`` or ``application/x-parquet`` body that does not parse gets a ``stack_trace``
  with the server's file paths (and pandas' error text).

This module serves the same FastAPI app (:func:`mlflow.pyfunc.scoring_server.init`, same
routes, limits, timeout and ``MLFLOW_PYFUNC_INFERENCE_CONFIG``) behind :class:`ScrubbedErrors`,
an ASGI layer that rewrites only error answers: ``stack_trace`` goes to the server log instead
of the client, MLflow's echo wrappers are cut to the error they wrap, and any longer run of
characters that also occurs in the request body is replaced by ``<request data>``. Status codes
and successful answers are untouched.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Environment variable the ``--workers`` processes read the model URI from (uvicorn's factory).
MODEL_URI_ENV = "MCCL_SERVE_MODEL_URI"
#: Replaces request data found in an error message.
REDACTED = "<request data>"
#: A run of this many base64 / word characters that also occurs in the request is an echo.
MIN_ECHO = 16

_TOKEN = re.compile(rf"[A-Za-z0-9+/=_-]{{{MIN_ECHO},}}")
_SERVER_FILE = re.compile(r"(?:/[\w.@+-]+){2,}\.pyc?\b")
_PREDICT_ECHO = "Failed to predict data '"
_SCHEMA_ECHO = "Failed to enforce schema of data '"
_BAD_JSON = "Ensure that input is a valid JSON formatted string."
_BAD_UTF8 = "Ensure that input is a valid UTF-8 encoded string."
_JSON_POSITION = re.compile(r"line \d+ column \d+ \(char \d+\)")


def _after_last(text: str, marker: str) -> str:
    at = text.rfind(marker)
    return text[at + len(marker) :] if at >= 0 else text


def scrub_message(message: str, request_body: bytes) -> str:
    """An MLflow error message without its echoes of ``request_body`` (module docstring)."""
    if message.startswith(_PREDICT_ECHO):  # "... '<frame>'. \nError: <the error>"
        message = _after_last(message, "\nError: ")
    if message.startswith(_SCHEMA_ECHO):  # "... '<frame>' with schema '<schema>'. Error: <the error>"
        message = "the request does not match the model's input schema: " + _after_last(message, "Error: ")
    elif (
        _BAD_JSON in message.split("\n", 1)[0]
    ):  # MLflow: "Invalid input. " + this  # "... Error: '<repr(exception)>'\nInput: \n<the whole body>"
        if "UnicodeDecodeError" in message.split("\nInput:", 1)[0]:
            message = "the request body is not valid UTF-8"
        else:
            where = _JSON_POSITION.search(message)
            message = "the request body is not valid JSON" + (f" ({where.group(0)})" if where else "")
    elif _BAD_UTF8 in message.split("\n", 1)[0]:  # the repr of a UnicodeDecodeError carries the body's bytes
        message = "the request body is not valid UTF-8"
    message = _SERVER_FILE.sub("<server file>", message)
    return _TOKEN.sub(lambda m: REDACTED if m.group(0).encode() in request_body else m.group(0), message)


def scrub_error_body(body: bytes, request_body: bytes, content_type: str = "application/json") -> bytes:
    """An error answer's body, scrubbed: JSON keeps ``error_code`` and a scrubbed ``message`` and
    loses ``stack_trace`` (logged here instead); any other text is scrubbed as a message."""
    text = body.decode("utf-8", errors="replace")
    if "json" not in content_type:
        return scrub_message(text, request_body).encode()
    try:
        payload = json.loads(text)
    except ValueError:
        return scrub_message(text, request_body).encode()
    if not isinstance(payload, dict):
        return scrub_message(text, request_body).encode()
    message = scrub_message(str(payload.get("message", "")), request_body)
    trace = payload.pop("stack_trace", None)
    if trace:
        log.warning("scoring error %s: %s\n%s", payload.get("error_code"), message, trace)
    payload["message"] = message
    return json.dumps(payload).encode()


class ScrubbedErrors:
    """ASGI layer: answers with status >= 400 are rewritten by :func:`scrub_error_body`.

    It keeps a copy of the request body (the FastAPI app reads the whole body anyway) to
    recognise echoes of it; answers below 400 pass through unchanged and unbuffered.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = bytearray()
        start: Message | None = None
        chunks: list[bytes] = []

        async def keep() -> Message:  # a copy of the request body, as the app reads it
            message = await receive()
            if message["type"] == "http.request":
                request.extend(message.get("body", b""))
            return message

        async def scrub(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message  # held until the whole body is known (its length changes)
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            content_type = next((v.decode("latin-1") for k, v in headers if k.lower() == b"content-type"), "")
            body = scrub_error_body(b"".join(chunks), bytes(request), content_type)
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, keep, scrub)


def create_app(model_uri: str) -> ScrubbedErrors:
    """MLflow's scoring app for ``model_uri`` (loaded as ``mlflow models serve`` loads it, with
    ``MLFLOW_PYFUNC_INFERENCE_CONFIG``) behind :class:`ScrubbedErrors`."""
    from mlflow.pyfunc import scoring_server

    model = scoring_server.load_model_with_mlflow_config(model_uri)
    return ScrubbedErrors(scoring_server.init(model))


def app_from_env() -> ScrubbedErrors:
    """uvicorn factory: each worker process loads the model named by ``$MCCL_SERVE_MODEL_URI``."""
    return create_app(os.environ[MODEL_URI_ENV])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mccl serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="models:/<name>@<alias>, models:/<name>/<v>, runs:/... or a folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--workers", type=int, default=1, help="server processes (each loads the model)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.workers < 1:
        _parser().error("--workers must be at least 1")
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ[MODEL_URI_ENV] = args.model
    uvicorn.run(
        "mccl_core.serving.app:app_from_env", factory=True, host=args.host, port=args.port, workers=args.workers
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
