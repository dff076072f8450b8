"""Standard Webhooks signatures (https://www.standardwebhooks.com): the service's secret
and the three headers of a delivery."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from pathlib import Path

from app.core.secret_files import secret_file

__all__ = ["SECRET_FILE", "make_secret", "signing_secret", "sign_headers"]

SECRET_FILE = "webhook_secret"
_PREFIX = "whsec_"


def make_secret() -> str:
    """A new signing secret: ``whsec_`` and 32 random bytes in base64."""
    return _PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signing_secret(configured: str | None, data_dir: Path) -> str:
    """The configured secret, else the one in DATA_DIR/webhook_secret (created, 0600)."""
    if configured:
        return configured
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    return secret_file(Path(data_dir).resolve() / SECRET_FILE, make_secret)


def sign_headers(
    secret: str, msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (``v1,`` and the
    base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` under the secret's key bytes)."""
    ts = int(time.time()) if timestamp is None else timestamp
    key = base64.b64decode(secret.removeprefix(_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }
