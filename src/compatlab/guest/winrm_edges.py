"""The WinRM channel's edges: the password its credentials point to, and what pywinrm's and
requests' exceptions mean in compatlab's error tree.

The password is resolved from ``Credentials.password_env`` (the environment) or
``Credentials.password_file``; it is never logged or put into an error message.

pywinrm and requests exceptions are mapped by :func:`map_winrm_error`:

- connection refused / reset, connect timeout, HTTP 503 -> :class:`GuestUnreachable`
- read timeout, WS-Man operation timeout, deadline passed -> :class:`GuestTimeout`
- credentials rejected, TLS failure, WS-Man fault, other HTTP errors -> :class:`GuestError`
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Final

import requests
from winrm.exceptions import (
    AuthenticationError,
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)

from compatlab.catalog import Credentials
from compatlab.errors import GuestError, GuestTimeout, GuestUnreachable

__all__ = ["map_winrm_error", "resolve_password"]

_CHANNEL: Final = "winrm"
_HTTP_SERVICE_UNAVAILABLE: Final = 503


def resolve_password(credentials: Credentials, *, domain: str | None = None) -> str:
    """The password ``credentials`` point to. Errors name the variable or file, never a value."""
    who = credentials.username
    if credentials.password_env:
        name = credentials.password_env
        value = os.environ.get(name)
        if value is None:
            raise GuestError(
                f"the password for {who!r} comes from the environment variable {name}, "
                "which is not set",
                channel=_CHANNEL,
                domain=domain,
            )
        if not value:
            raise GuestError(
                f"the password for {who!r} comes from the environment variable {name}, "
                "which is empty",
                channel=_CHANNEL,
                domain=domain,
            )
        return value
    if credentials.password_file:
        path = credentials.password_file
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise GuestError(
                f"the password for {who!r} comes from {path}, which cannot be read: "
                f"{exc.strerror or exc}",
                channel=_CHANNEL,
                domain=domain,
            ) from exc
        # An editor's trailing newline is not part of the password.
        value = text.removesuffix("\n").removesuffix("\r")
        if not value:
            raise GuestError(
                f"the password for {who!r} comes from {path}, which is empty",
                channel=_CHANNEL,
                domain=domain,
            )
        return value
    raise GuestError(
        f"the credentials for {who!r} name neither password_env nor password_file",
        channel=_CHANNEL,
        domain=domain,
    )


def map_winrm_error(
    exc: BaseException, *, doing: str, endpoint: str, domain: str | None = None
) -> GuestError | None:
    """Translate a pywinrm / requests exception into the compatlab error tree.

    Returns None for anything else, which the caller lets through: a bug stays a bug. Order
    matters: requests' ``ConnectTimeout`` is both a ``ConnectionError`` and a ``Timeout``, and
    its ``SSLError`` is a ``ConnectionError`` too.
    """
    where = f"{doing} at {endpoint}"
    unreachable = timeout = False
    if isinstance(exc, requests.exceptions.SSLError):
        text = f"TLS failed: {exc}"
    elif isinstance(exc, requests.exceptions.ConnectTimeout):
        unreachable, text = True, "no connection (connect timed out)"
    elif isinstance(exc, requests.exceptions.Timeout):
        timeout, text = True, "no answer in time (read timed out)"
    elif isinstance(exc, requests.exceptions.ConnectionError):
        unreachable, text = True, f"no connection: {_first_line(exc)}"
    elif isinstance(exc, requests.exceptions.RequestException):
        text = f"HTTP request failed: {exc}"
    elif isinstance(exc, InvalidCredentialsError):
        text = f"credentials rejected: {exc}"
    elif isinstance(exc, AuthenticationError):
        text = f"authentication failed: {exc}"
    elif isinstance(exc, WinRMOperationTimeoutError):
        timeout, text = True, "WS-Management operation timed out"
    elif isinstance(exc, WSManFaultError):
        code = f", WSMan fault {exc.wsman_fault_code}" if exc.wsman_fault_code else ""
        text = f"WS-Management fault (HTTP {exc.code}{code}): {exc.reason.strip()}"
    elif isinstance(exc, WinRMTransportError):
        # 503: HTTP.sys answers for the port while the WinRM service is not (yet) there.
        unreachable = exc.code == _HTTP_SERVICE_UNAVAILABLE
        text = f"HTTP {exc.code} from the WinRM service"
    elif isinstance(exc, WinRMError):
        text = f"WinRM error: {exc}"
    elif isinstance(exc, ET.ParseError | StopIteration | AssertionError):
        # pywinrm parses with ElementTree, finds ids with next() and checks RelatesTo with assert.
        text = f"malformed WS-Management response: {type(exc).__name__}: {exc}"
    else:
        return None
    message = f"{where}: {text}"
    if unreachable:
        return GuestUnreachable(message, channel=_CHANNEL, domain=domain)
    if timeout:
        return GuestTimeout(message, channel=_CHANNEL, domain=domain)
    return GuestError(message, channel=_CHANNEL, domain=domain)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
