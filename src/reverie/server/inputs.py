"""What the APIs take from a client before any work: bounded bodies, strict JSON, prompt
lengths, field names.

- `StrictJSONRoute` refuses a body past `max_body_bytes` (413) while reading it, and a JSON body
  with NaN or Infinity anywhere in it (Python's json reads them, JSON has no such numbers), a
  number too long to read, or a body that is not JSON, with a 4xx naming the field, before the
  route runs: nothing is queued or charged.
- `MAX_PROMPT_CHARS` is the one prompt limit of every API (prompts and negative prompts).
- `client_names` makes errors name the field the client sent (A1111's `batch_size`, OpenAI's
  `n`) rather than reverie's request field it became (`n_samples`).
"""

from __future__ import annotations

import email.message
import json
import math
import re
from contextlib import contextmanager
from typing import Iterator

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute
from starlette.datastructures import Headers

from ..errors import BadRequest

MAX_PROMPT_CHARS = 4000  # a prompt or a negative prompt, in every API


def _is_json(content_type: str | None) -> bool:
    message = email.message.Message()
    message["content-type"] = content_type or ""
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def first_non_finite(value, path: tuple = ()) -> tuple | None:
    """The path of the first NaN or infinite number in parsed JSON, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = first_non_finite(item, path + (key,))
        if found is not None:
            return found
    return None


def check_json_body(body: bytes) -> None:
    """Refuse a JSON body holding NaN, Infinity (or a number that overflows to it, 1e999) or a
    number too long to read; malformed JSON is left to FastAPI's own message."""
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError:
        return
    except UnicodeDecodeError:
        raise BadRequest("body", "is not valid UTF-8 text") from None
    except (ValueError, RecursionError):  # an integer past Python's 4300 digits, or nesting too deep
        raise BadRequest("body", "holds a number too long or nesting too deep to read") from None
    path = first_non_finite(parsed)
    if path is not None:
        field = ".".join(str(part) for part in path) or "body"
        raise BadRequest(field, "must be a finite number (NaN and Infinity are not JSON numbers)")


def max_body_bytes(config) -> int:
    """The largest request body: two pictures as base64 (an init image and its mask, A1111's
    img2img) and the other fields. A larger one is refused (413) as it is read, never held."""
    return 3 * config.max_upload_bytes + 2**20


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, detail={"field": "body", "message": f"the request is larger than {limit // 2**20} MiB"})


class StrictJSONRoute(APIRoute):
    """A route whose body is bounded (`max_body_bytes`) and whose JSON is checked
    (`check_json_body`) before FastAPI reads it; a body sent to a JSON route as another content
    type is refused with 415."""

    async def handle(self, scope, receive, send):
        # A Content-Length past the limit is refused at once, a longer chunked body as it gets there.
        limit = max_body_bytes(scope["app"].state.studio.config)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise _too_large(limit)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
            return message

        await super().handle(scope, counted, send)

    def get_route_handler(self):
        handler = super().get_route_handler()
        takes_json = self.body_field is not None and not _is_form(self)

        async def strict(request: Request):
            if takes_json:
                body = await request.body()  # kept on the request: FastAPI reads it from there
                if body and not _is_json(request.headers.get("content-type")):
                    raise HTTPException(415, detail={"field": "body",
                                                     "message": "send the fields as JSON, with Content-Type: application/json"})
                if body:
                    check_json_body(body)
            return await handler(request)

        return strict


def _is_form(route: APIRoute) -> bool:
    from fastapi.params import Form

    return isinstance(getattr(route.body_field, "field_info", None), Form)


def check_prompts(fields: dict) -> None:
    """The one prompt limit, for the prompt and the negative prompt."""
    for name in ("prompt", "negative_prompt"):
        text = fields.get(name)
        if isinstance(text, str) and len(text) > MAX_PROMPT_CHARS:
            raise BadRequest(name, f"is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}")


def renamed(error: BadRequest, names: dict[str, str]) -> BadRequest:
    """`error` in the client's terms: its field, and reverie's field names in its message (those
    with an underscore, which cannot be ordinary words), by `names` (reverie's -> the client's)."""
    message = str(error).removeprefix(f"{error.field}: ")
    words = [name for name in names if "_" in name]
    if words:
        message = re.sub(r"\b(" + "|".join(map(re.escape, words)) + r")\b", lambda m: names[m.group(1)], message)
    return BadRequest(names.get(error.field, error.field), message)


@contextmanager
def client_names(names: dict[str, str]) -> Iterator[None]:
    """Errors raised inside name the client's fields (`renamed`)."""
    try:
        yield
    except BadRequest as error:
        raise renamed(error, names) from None
