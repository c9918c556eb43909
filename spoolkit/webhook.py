"""``spoolkit.webhook``: POST a finished job's JSON to its ``callback_url``, signed.

A job of its own (retried with backoff, visible in the API). The request:

* body: the finished job as ``GET /jobs/<id>`` shows it;
* ``Spoolkit-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``,
  keyed with ``SPOOLKIT_WEBHOOK_SECRET``; ``Spoolkit-Job-Id: <id>``;
* 10 s timeout, redirects not followed, at most 1 KB of the answer kept.

Not a server-side request forgery tool: ``http``/``https`` only; the host is
resolved here and the connection goes to the address that was checked;
loopback, private, link-local, multicast, reserved and unspecified addresses
(IPv4, IPv6, IPv4-mapped) are refused, and the delivery fails at once,
unless ``SPOOLKIT_WEBHOOK_ALLOW_PRIVATE`` is on.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from flask import current_app

from .retry import GiveUp

WEBHOOK_TASK = "spoolkit.webhook"
SIGNATURE_HEADER = "Spoolkit-Signature"
JOB_HEADER = "Spoolkit-Job-Id"
TIMEOUT = 10.0
KEPT_BYTES = 1024
#: Backoff base: 8 attempts wait 30 s, 1, 2, 4, 8, 16, 32 min (capped): about an hour.
BACKOFF = 30.0


class WebhookFailed(Exception):
    """The receiver did not answer 2xx (retried with backoff)."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Spoolkit-Signature`` header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def refused(address: str) -> str | None:
    """Why a webhook may not go to ``address``, or ``None`` if it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return f"{address} is a {kind.replace('_', '-')} address"
    return None


def _resolve(host: str, port: int, allow_private: bool) -> str:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise WebhookFailed(f"cannot resolve {host!r}: {exc}") from None
    addresses = [str(info[4][0]) for info in found]
    reasons = [reason for address in addresses if (reason := refused(address))]
    if reasons and not allow_private:
        raise GiveUp(
            f"webhook to {host!r} refused: {reasons[0]} (SPOOLKIT_WEBHOOK_ALLOW_PRIVATE allows it)"
        )
    return addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the address that was checked, whatever the name resolves to now."""

    def __init__(self, host: str, port: int, address: str) -> None:
        super().__init__(host, port, timeout=TIMEOUT)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(_PinnedHTTP):
    def connect(self) -> None:
        super().connect()
        self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=self.host)


def deliver(url: str, job: dict[str, Any]) -> dict[str, Any]:
    """POST ``job`` to ``url``; the answer's status and first KB are the result."""
    config = current_app.config
    secret = config.get("SPOOLKIT_WEBHOOK_SECRET")
    if not secret:
        raise GiveUp("SPOOLKIT_WEBHOOK_SECRET is not set: webhooks are not signed, not sent")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GiveUp(f"webhook URL {url!r} is not an http(s) URL with a host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = _resolve(parts.hostname, port, bool(config.get("SPOOLKIT_WEBHOOK_ALLOW_PRIVATE")))
    body = json.dumps(job, separators=(",", ":")).encode()
    kind = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    connection = kind(parts.hostname, port, address)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", target, body=body, headers={
            "Content-Type": "application/json",
            "User-Agent": "spoolkit-webhook",
            SIGNATURE_HEADER: signature(secret, int(time.time()), body),
            JOB_HEADER: str(job.get("id", "")),
        })  # fmt: skip
        answer = connection.getresponse()
        kept = answer.read(KEPT_BYTES).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        raise WebhookFailed(f"POST {parts.scheme}://{parts.hostname}: {exc}") from None
    finally:
        connection.close()
    if not 200 <= answer.status < 300:
        raise WebhookFailed(f"the receiver answered HTTP {answer.status}: {kept[:200]}")
    return {"status": answer.status, "body": kept}
