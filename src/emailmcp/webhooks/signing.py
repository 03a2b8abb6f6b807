"""Signatures as the Standard Webhooks specification defines them, so receivers verify with its libraries.

The secret is `whsec_` + base64 of random bytes; the key is those bytes. Each request carries `webhook-id` (the
event id, the same on every retry), `webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`:
space-separated `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one per secret in use.
"""

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()


def headers(secrets_in_use: list[str], webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(secret, webhook_id, timestamp, body) for secret in secrets_in_use),
    }
