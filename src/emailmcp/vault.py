"""Authenticated encryption of secret columns.

A ciphertext is `v1.<key id>.<base64url(nonce || AES-256-GCM output)>`. The table, column,
tenant and row are bound in as associated data, so a ciphertext copied to another row,
column or tenant fails to decrypt. Columns declared with `info={"secret": True}` are the
vault's; `rotate` re-encrypts all of them under the first key of the keyring.
"""

import base64
import binascii
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import MetaData, Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from emailmcp.errors import ConfigurationError

_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_FORMAT = "v1"
DERIVED_KEY_ID = "derived"


class DecryptionError(Exception):
    """The ciphertext is damaged, was moved to another row, or its key is not in the keyring."""


@dataclass(frozen=True)
class SecretContext:
    """Where a ciphertext lives; bound into the encryption as associated data."""

    table: str
    column: str
    tenant_id: int
    row_id: str | int

    def associated_data(self) -> bytes:
        return f"emailmcp:{self.table}:{self.column}:{self.tenant_id}:{self.row_id}".encode()


def derive_key(secret_key: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"emailmcp {purpose}".encode()).derive(secret_key)


def _decode_key(key_id: str, encoded: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigurationError(f"EMAILMCP_ENCRYPTION_KEYS: key {key_id!r} must be 32 bytes in base64")
    return raw


def parse_keyring(spec: str) -> list[tuple[str, bytes]]:
    """Parses `id:base64key,id2:base64key2`; the first entry is the one that encrypts."""
    keys: list[tuple[str, bytes]] = []
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        key_id, sep, encoded = entry.partition(":")
        if not sep or not _KEY_ID.match(key_id):
            raise ConfigurationError("EMAILMCP_ENCRYPTION_KEYS must look like 'id:base64key,id2:base64key2'")
        keys.append((key_id, _decode_key(key_id, encoded)))
    if not keys:
        raise ConfigurationError("EMAILMCP_ENCRYPTION_KEYS is set but holds no key")
    if len({key_id for key_id, _ in keys}) != len(keys):
        raise ConfigurationError("EMAILMCP_ENCRYPTION_KEYS repeats a key id")
    return keys


def new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


class Vault:
    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        self._primary_id = keys[0][0]
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys}

    @classmethod
    def from_settings(cls, secret_key: bytes, keyring_spec: str | None) -> "Vault":
        """The configured keyring, or one derived from the secret key.

        The derived key always stays in the keyring for decryption, so data written before
        EMAILMCP_ENCRYPTION_KEYS was set stays readable until `emailmcp secrets rotate`.
        """
        derived = (DERIVED_KEY_ID, derive_key(secret_key, "vault"))
        keys = parse_keyring(keyring_spec) if keyring_spec else []
        if any(key_id == DERIVED_KEY_ID for key_id, _ in keys):
            raise ConfigurationError(f"EMAILMCP_ENCRYPTION_KEYS: the key id {DERIVED_KEY_ID!r} is reserved")
        return cls([*keys, derived])

    @property
    def primary_key_id(self) -> str:
        return self._primary_id

    def encrypt(self, plaintext: str, context: SecretContext) -> str:
        nonce = os.urandom(12)
        sealed = self._ciphers[self._primary_id].encrypt(nonce, plaintext.encode(), context.associated_data())
        return f"{_FORMAT}.{self._primary_id}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, context: SecretContext) -> str:
        version, key_id, payload = self._split(token)
        cipher = self._ciphers.get(key_id)
        if version != _FORMAT or cipher is None:
            raise DecryptionError(f"no key {key_id!r} in the keyring for {context.table}.{context.column}")
        try:
            raw = base64.urlsafe_b64decode(payload)
            return cipher.decrypt(raw[:12], raw[12:], context.associated_data()).decode()
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise DecryptionError(
                f"{context.table}.{context.column} of row {context.row_id} does not decrypt here"
            ) from exc

    @staticmethod
    def key_id_of(token: str) -> str:
        return Vault._split(token)[1]

    @staticmethod
    def _split(token: str) -> tuple[str, str, str]:
        parts = token.split(".", 2)
        if len(parts) != 3:
            raise DecryptionError("not a vault ciphertext")
        return parts[0], parts[1], parts[2]


def secret_columns(metadata: MetaData) -> list[tuple[Table, str]]:
    return [
        (table, column.name)
        for table in metadata.sorted_tables
        for column in table.columns
        if column.info.get("secret")
    ]


async def rotate(session: AsyncSession, vault: Vault, metadata: MetaData) -> int:
    """Re-encrypts every secret column value not yet under the primary key. Returns how many."""
    rotated = 0
    for table, column_name in secret_columns(metadata):
        (pk,) = table.primary_key.columns
        column = table.c[column_name]
        rows = await session.execute(select(pk, table.c.tenant_id, column).where(column.is_not(None)))
        for row_id, tenant_id, token in rows.all():
            if Vault.key_id_of(token) == vault.primary_key_id:
                continue
            context = SecretContext(table.name, column_name, tenant_id, row_id)
            fresh = vault.encrypt(vault.decrypt(token, context), context)
            await session.execute(update(table).where(pk == row_id).values({column_name: fresh}))
            rotated += 1
    return rotated
