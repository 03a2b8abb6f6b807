"""The vault in-process: authenticated encryption bound to its row, keyrings, parsing, rotation."""

import base64
import os
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, update

from emailmcp import db, models
from emailmcp.errors import ConfigurationError
from emailmcp.settings import Settings
from emailmcp.tenancy.models import Tenant
from emailmcp.tenancy.schemas import Scope, TenantContext
from emailmcp.users.models import EndUser, Mailbox
from emailmcp.vault import DecryptionError, SecretContext, Vault, new_key, parse_keyring, rotate, secret_columns
from emailmcp.webhooks import service as webhooks
from emailmcp.webhooks.models import WebhookEndpoint
from emailmcp.webhooks.schemas import WebhookIn

SECRET_KEY = b"0123456789abcdef0123456789abcdef0123456789abcdef"
CONTEXT = SecretContext("mailboxes", "smtp_password", 1, 7)


def keyring(*ids: str) -> tuple[str, dict[str, str]]:
    """A keyring spec with fresh keys for these ids (first encrypts), and the keys by id."""
    keys = {key_id: new_key() for key_id in ids}
    return ",".join(f"{key_id}:{key}" for key_id, key in keys.items()), keys


@pytest.mark.parametrize("plaintext", ["correct horse battery staple", "pässwörd ✉ 密码 🔑", "", "x" * 10_000])
def test_round_trip(plaintext):
    vault = Vault.from_settings(SECRET_KEY, None)
    token = vault.encrypt(plaintext, CONTEXT)
    assert plaintext == "" or plaintext not in token
    assert token.startswith("v1.derived.")
    assert vault.decrypt(token, CONTEXT) == plaintext


def test_same_plaintext_encrypts_differently_each_time():
    vault = Vault.from_settings(SECRET_KEY, None)
    assert vault.encrypt("same", CONTEXT) != vault.encrypt("same", CONTEXT)


def test_a_fresh_vault_with_the_same_secret_key_reads_old_values():
    token = Vault.from_settings(SECRET_KEY, None).encrypt("persisted", CONTEXT)
    assert Vault.from_settings(SECRET_KEY, None).decrypt(token, CONTEXT) == "persisted"


def test_another_secret_key_cannot_read_it():
    token = Vault.from_settings(SECRET_KEY, None).encrypt("persisted", CONTEXT)
    with pytest.raises(DecryptionError):
        Vault.from_settings(b"another secret key of at least 32 characters", None).decrypt(token, CONTEXT)


@pytest.mark.parametrize(
    "elsewhere",
    [
        SecretContext("mailboxes", "smtp_password", 1, 8),  # another row
        SecretContext("mailboxes", "smtp_password", 1, "7 "),  # another row id, textually close
        SecretContext("mailboxes", "smtp_password", 2, 7),  # another tenant
        SecretContext("mailboxes", "smtp_username", 1, 7),  # another column
        SecretContext("oauth_tokens", "smtp_password", 1, 7),  # another table
    ],
    ids=["row", "row-text", "tenant", "column", "table"],
)
def test_a_ciphertext_moved_elsewhere_does_not_decrypt(elsewhere):
    vault = Vault.from_settings(SECRET_KEY, None)
    token = vault.encrypt("hunter2", CONTEXT)
    with pytest.raises(DecryptionError):
        vault.decrypt(token, elsewhere)
    assert vault.decrypt(token, CONTEXT) == "hunter2"


def _tamper(token: str, index: int) -> str:
    version, key_id, payload = token.split(".", 2)
    raw = bytearray(base64.urlsafe_b64decode(payload))
    raw[index] ^= 0x01
    return f"{version}.{key_id}.{base64.urlsafe_b64encode(bytes(raw)).decode()}"


@pytest.mark.parametrize("index", [0, 11, 12, -1], ids=["nonce-start", "nonce-end", "body", "tag"])
def test_a_tampered_ciphertext_raises(index):
    vault = Vault.from_settings(SECRET_KEY, None)
    token = vault.encrypt("hunter2", CONTEXT)
    with pytest.raises(DecryptionError):
        vault.decrypt(_tamper(token, index), CONTEXT)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-4],  # truncated
        lambda t: t.split(".", 2)[2],  # no header
        lambda t: "v2." + t.split(".", 1)[1],  # unknown format version
        lambda t: t.replace("v1.derived.", "v1.nokey."),  # key not in the keyring
        lambda t: t.split(".", 2)[0] + "." + t.split(".", 2)[1] + ".!!!not base64!!!",
        lambda t: "v1.derived.",  # empty payload
        lambda t: "",
    ],
    ids=["truncated", "no-header", "version", "unknown-key", "not-base64", "empty-payload", "empty"],
)
def test_damaged_ciphertexts_raise_decryption_error_only(mangle):
    vault = Vault.from_settings(SECRET_KEY, None)
    token = vault.encrypt("hunter2", CONTEXT)
    with pytest.raises(DecryptionError):
        vault.decrypt(mangle(token), CONTEXT)


def test_a_keyring_encrypts_with_its_first_key_and_decrypts_with_all():
    spec_k1, keys = keyring("k1")
    old = Vault.from_settings(SECRET_KEY, spec_k1).encrypt("written under k1", CONTEXT)
    assert old.startswith("v1.k1.")

    spec_k2 = f"k2:{new_key()},k1:{keys['k1']}"
    vault = Vault.from_settings(SECRET_KEY, spec_k2)
    assert vault.primary_key_id == "k2"
    fresh = vault.encrypt("written under k2", CONTEXT)
    assert fresh.startswith("v1.k2.")
    assert vault.decrypt(fresh, CONTEXT) == "written under k2"
    assert vault.decrypt(old, CONTEXT) == "written under k1"
    # A vault that dropped k2 cannot read what k2 wrote.
    with pytest.raises(DecryptionError):
        Vault.from_settings(SECRET_KEY, spec_k1).decrypt(fresh, CONTEXT)


def test_values_under_the_derived_key_stay_readable_once_keys_are_configured():
    before = Vault.from_settings(SECRET_KEY, None)
    token = before.encrypt("from the derived key", CONTEXT)
    assert Vault.key_id_of(token) == "derived"
    spec, _ = keyring("k1")
    after = Vault.from_settings(SECRET_KEY, spec)
    assert after.primary_key_id == "k1"
    assert after.decrypt(token, CONTEXT) == "from the derived key"
    assert after.encrypt("new", CONTEXT).startswith("v1.k1.")


def test_a_key_of_the_same_id_but_other_bytes_cannot_decrypt():
    spec_a, _ = keyring("k1")
    spec_b, _ = keyring("k1")
    token = Vault.from_settings(SECRET_KEY, spec_a).encrypt("hunter2", CONTEXT)
    with pytest.raises(DecryptionError):
        Vault.from_settings(SECRET_KEY, spec_b).decrypt(token, CONTEXT)


def test_generated_keys_parse():
    spec, keys = keyring("k1", "k2")
    parsed = parse_keyring(spec)
    assert [key_id for key_id, _ in parsed] == ["k1", "k2"]
    assert all(len(raw) == 32 for _, raw in parsed)
    # Padded base64 and surrounding spaces are accepted too.
    padded = base64.urlsafe_b64encode(os.urandom(32)).decode()
    assert padded.endswith("=")
    assert [key_id for key_id, _ in parse_keyring(f" k3:{padded} , k4:{keys['k1']} ")] == ["k3", "k4"]


@pytest.mark.parametrize(
    ("spec", "mentions"),
    [
        ("justakey", "id:base64key"),
        (f":{new_key()}", "id:base64key"),
        (f"bad id:{new_key()}", "id:base64key"),
        (f"k1={new_key()}", "id:base64key"),
        ("k1:short", "'k1' must be 32 bytes"),
        (f"k1:{base64.urlsafe_b64encode(os.urandom(31)).decode()}", "'k1' must be 32 bytes"),
        (f"k1:{base64.urlsafe_b64encode(os.urandom(33)).decode()}", "'k1' must be 32 bytes"),
        ("k1:%%%%not-base64%%%%", "'k1' must be 32 bytes"),
        (f"k1:{new_key()},k1:{new_key()}", "repeats a key id"),
        (",", "holds no key"),
        (f"derived:{new_key()}", "'derived' is reserved"),
        (f"k1:{new_key()},derived:{new_key()}", "'derived' is reserved"),
    ],
    ids=[
        "no-colon",
        "empty-id",
        "space-in-id",
        "equals",
        "short",
        "31-bytes",
        "33-bytes",
        "not-base64",
        "duplicate",
        "empty",
        "reserved",
        "reserved-second",
    ],
)
def test_bad_keyrings_are_configuration_errors_naming_the_setting(spec, mentions):
    with pytest.raises(ConfigurationError) as caught:
        Vault.from_settings(SECRET_KEY, spec)
    message = str(caught.value)
    assert "EMAILMCP_ENCRYPTION_KEYS" in message
    assert mentions in message
    # The message must not echo key material.
    for entry in spec.split(","):
        _, _, encoded = entry.partition(":")
        if len(encoded) > 8:
            assert encoded.strip() not in message


# -- rotation against a real, migrated SQLite database -----------------------------------------


@pytest.fixture
async def engine(tmp_path):
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'vault.db'}", _env_file=None)
    engine = db.create_engine(settings)
    await db.apply_migrations(engine)
    yield engine
    await engine.dispose()


async def _add_mailboxes(session, tenant_name: str, passwords: dict[str, str], vault_for: dict[str, Vault]) -> Tenant:
    tenant = Tenant(name=tenant_name)
    session.add(tenant)
    await session.flush()
    for user_id, password in passwords.items():
        user = EndUser(tenant_id=tenant.id, user_id=user_id)
        session.add(user)
        await session.flush()
        token = None
        if password is not None:
            context = SecretContext("mailboxes", "smtp_password", tenant.id, user.id)
            token = vault_for[user_id].encrypt(password, context)
        session.add(Mailbox(user_pk=user.id, tenant_id=tenant.id, type="smtp", status="connected", smtp_password=token))
    await session.flush()
    return tenant


async def _tokens(session) -> dict[str, tuple[int, int, str | None]]:
    rows = await session.execute(
        select(EndUser.user_id, Mailbox.tenant_id, Mailbox.user_pk, Mailbox.smtp_password).join(
            Mailbox, Mailbox.user_pk == EndUser.id
        )
    )
    return {user_id: (tenant_id, pk, token) for user_id, tenant_id, pk, token in rows.all()}


async def test_rotate_re_encrypts_only_values_not_under_the_primary_key(engine):
    spec_k1, keys = keyring("k1")
    derived_vault = Vault.from_settings(SECRET_KEY, None)
    k1_vault = Vault.from_settings(SECRET_KEY, spec_k1)
    passwords = {"old-1": "pässwort-1", "old-2": "password 2", "new-1": "already k1", "none": None}
    writers = {"old-1": derived_vault, "old-2": derived_vault, "new-1": k1_vault, "none": derived_vault}
    sessionmaker = db.create_sessionmaker(engine)
    async with sessionmaker() as session:
        await _add_mailboxes(session, "acme", passwords, writers)
        await _add_mailboxes(session, "globex", {"old-3": "globex secret"}, {"old-3": derived_vault})
        await session.commit()
        before = await _tokens(session)

    async with sessionmaker() as session:
        assert await rotate(session, k1_vault, models.Base.metadata) == 3
        await session.commit()
    async with sessionmaker() as session:
        after = await _tokens(session)

    assert after["new-1"] == before["new-1"], "a value already under the primary key must not be rewritten"
    assert after["none"][2] is None
    for user_id, password in (passwords | {"old-3": "globex secret"}).items():
        if password is None:
            continue
        tenant_id, pk, token = after[user_id]
        assert token.startswith("v1.k1."), user_id
        context = SecretContext("mailboxes", "smtp_password", tenant_id, pk)
        assert k1_vault.decrypt(token, context) == password
        # Only the keyring holding k1 can read it now.
        if user_id != "new-1":
            assert token != before[user_id][2]
        with pytest.raises(DecryptionError):
            derived_vault.decrypt(token, context)

    # A second rotation has nothing left to do.
    async with sessionmaker() as session:
        assert await rotate(session, k1_vault, models.Base.metadata) == 0
        await session.commit()
    async with sessionmaker() as session:
        assert await _tokens(session) == after

    # Rotating on to k2 keeps everything readable, under k2.
    k2_vault = Vault.from_settings(SECRET_KEY, f"k2:{new_key()},k1:{keys['k1']}")
    async with sessionmaker() as session:
        assert await rotate(session, k2_vault, models.Base.metadata) == 4
        await session.commit()
    async with sessionmaker() as session:
        for user_id, (tenant_id, pk, token) in (await _tokens(session)).items():
            if token is not None:
                assert token.startswith("v1.k2.")
                assert (
                    k2_vault.decrypt(token, SecretContext("mailboxes", "smtp_password", tenant_id, pk))
                    == (passwords | {"old-3": "globex secret"})[user_id]
                )


async def test_rotate_refuses_a_value_it_cannot_decrypt_and_changes_nothing(engine):
    """A value moved to another row is reported, not silently re-encrypted under the new key."""
    derived_vault = Vault.from_settings(SECRET_KEY, None)
    spec_k1, _ = keyring("k1")
    sessionmaker = db.create_sessionmaker(engine)
    async with sessionmaker() as session:
        await _add_mailboxes(session, "acme", {"a": "pw-a", "b": "pw-b"}, {"a": derived_vault, "b": derived_vault})
        await session.commit()
        tokens = await _tokens(session)
        moved_onto_b = update(Mailbox).where(Mailbox.user_pk == tokens["b"][1]).values(smtp_password=tokens["a"][2])
        await session.execute(moved_onto_b)
        await session.commit()
        moved = await _tokens(session)
    async with sessionmaker() as session:
        with pytest.raises(DecryptionError):
            await rotate(session, Vault.from_settings(SECRET_KEY, spec_k1), models.Base.metadata)
        await session.rollback()
    async with sessionmaker() as session:
        assert await _tokens(session) == moved


def test_every_stored_credential_is_a_secret_column_that_rotation_covers():
    """`secrets rotate` finds what to re-encrypt by the columns' `secret` mark: a credential column without it would
    stay under a retired key."""
    assert {(table.name, column) for table, column in secret_columns(models.Base.metadata)} == {
        ("mailboxes", "smtp_password"),
        ("mailboxes", "oauth_access_token"),
        ("mailboxes", "oauth_refresh_token"),
        ("oauth_states", "code_verifier"),
        ("webhook_endpoints", "secret"),
        ("webhook_endpoints", "previous_secret"),
    }


async def test_webhook_signing_secrets_survive_a_key_rotation(engine):
    """Both secrets of a webhook in its rotation overlap stay usable after `secrets rotate` moves them to a new key."""
    derived_vault = Vault.from_settings(SECRET_KEY, None)
    spec_k1, _ = keyring("k1")
    k1_vault = Vault.from_settings(SECRET_KEY, spec_k1)
    settings = Settings(webhook_allow_http=True, webhook_allow_private_hosts=True, _env_file=None)
    sessionmaker = db.create_sessionmaker(engine)
    async with sessionmaker() as session:
        tenant = Tenant(name="acme")
        session.add(tenant)
        await session.flush()
        ctx = TenantContext(tenant_id=tenant.id, tenant_name="acme", key_id="", scopes=frozenset(Scope))
        hook = WebhookIn(url="http://127.0.0.1/hooks", events=["message.sent"])
        first = await webhooks.create_webhook(session, ctx, derived_vault, settings, hook)
        second = await webhooks.rotate_secret(session, ctx, derived_vault, first.id)
    async with sessionmaker() as session:
        assert await rotate(session, k1_vault, models.Base.metadata) == 2
        await session.commit()
    async with sessionmaker() as session:
        endpoint = await session.get(WebhookEndpoint, first.id)
        assert endpoint.secret.startswith("v1.k1.") and endpoint.previous_secret.startswith("v1.k1.")
        assert webhooks.secrets_in_use(k1_vault, endpoint, datetime.now(UTC)) == [second.secret, first.secret]
        with pytest.raises(DecryptionError):
            webhooks.secrets_in_use(derived_vault, endpoint, datetime.now(UTC))
