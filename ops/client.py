"""A small client of the coordinator's REST API for the ``rcd`` ops commands.

Everything goes through :class:`RcdClient`, which turns any HTTP or network
failure into :class:`ApiError` carrying the status (0 when the coordinator could
not be reached) and the API's own message, so the command line can print one
clear line and exit non-zero.
"""

from __future__ import annotations

import os
from typing import Any, Final

import httpx

DEFAULT_URL: Final = "http://127.0.0.1:8000"
API_PREFIX: Final = "/api/v1"


class ApiError(Exception):
    """The API refused a request, or could not be reached (``status == 0``)."""

    def __init__(self, status: int, message: str, method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.method = method
        self.path = path

    def one_line(self) -> str:
        where = f"{self.method} {self.path}".strip()
        if self.status == 0:
            return f"error: cannot reach the coordinator ({where}): {self.message}"
        return f"error: HTTP {self.status} from {where}: {self.message}"


def _message_of(response: httpx.Response) -> str:
    """The API's own message: FastAPI's ``detail`` (string or validation list) or the text."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:300] if text else response.reason_phrase
    if isinstance(body, dict):
        for key in ("detail", "message", "error"):
            if key in body:
                return _flatten(body[key])
        return _flatten(body)
    return _flatten(body)


def _flatten(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for item in value:
            if isinstance(item, dict) and "msg" in item:
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
            else:
                parts.append(_flatten(item))
        return "; ".join(parts)
    if isinstance(value, dict):
        if "message" in value:
            code = value.get("code")
            return f"{code}: {value['message']}" if code else str(value["message"])
        return ", ".join(f"{k}={_flatten(v)}" for k, v in value.items())
    return str(value)


class RcdClient:
    """Synchronous client; use as a context manager."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("RCD_URL") or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get("RCD_TOKEN") or ""
        headers = {"Accept": "application/json", "User-Agent": "rcd-ops"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> RcdClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------ transport
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        full = path if path.startswith("/") else f"{API_PREFIX}/{path}"
        try:
            response = self._http.request(method, full, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, str(exc) or type(exc).__name__, method, self.url + full) from exc
        if response.status_code >= 400:
            raise ApiError(response.status_code, _message_of(response), method, full)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(
                response.status_code,
                "the API answered with something that is not JSON",
                method,
                path,
            ) from exc
