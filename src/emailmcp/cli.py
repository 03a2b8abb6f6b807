"""The `emailmcp` command: serve, worker, mcp, migrate, keys, tenants, webhooks, secrets."""

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from emailmcp import models, vault
from emailmcp.errors import APIError, ConfigurationError, validation_details
from emailmcp.observability import configure_logging
from emailmcp.runtime import Runtime
from emailmcp.settings import Settings, load_settings
from emailmcp.tenancy import service as tenancy
from emailmcp.tenancy.schemas import ApiKeyInfo, Scope, TenantContext
from emailmcp.webhooks import service as webhooks
from emailmcp.webhooks.schemas import DeliveryStatus, EventType, WebhookIn, WebhookUpdate

app = typer.Typer(
    help="EmailMCP: email for apps and their AI agents, through users' own mailboxes.", no_args_is_help=True
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
tenants_app = typer.Typer(help="List, inspect, configure and delete tenants.", no_args_is_help=True)
secrets_app = typer.Typer(help="Manage the encryption keys of stored credentials.", no_args_is_help=True)
webhooks_app = typer.Typer(
    help="Manage a tenant's webhooks and their deliveries (prints the same JSON as the REST API).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(secrets_app, name="secrets")

T = TypeVar("T")


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ValueError as exc:
        _fail(f"invalid configuration: {exc}", 2)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _run(work: Callable[[Runtime], Awaitable[T]]) -> T:
    """Runs async work against the configured database, turning refusals into a message and exit code."""

    async def main() -> T:
        runtime = Runtime.create(_settings())
        try:
            return await work(runtime)
        finally:
            await runtime.close()

    try:
        return asyncio.run(main())
    except tenancy.TenancyError as exc:
        _fail(str(exc))
    except APIError as exc:
        _fail(exc.message)
    except ValidationError as exc:
        _fail("; ".join(f"{detail['field']}: {detail['message']}" for detail in validation_details(exc.errors())))
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    except vault.DecryptionError as exc:
        _fail(f"{exc}. Nothing was changed; keep the old key in EMAILMCP_ENCRYPTION_KEYS until rotation succeeds.")


def _with_session(work: Callable[[AsyncSession, Runtime], Awaitable[T]]) -> T:
    """One unit of work in a session, on a migrated database, committed at the end."""

    async def in_session(runtime: Runtime) -> T:
        await runtime.migrate()
        async with runtime.sessionmaker() as session:
            result = await work(session, runtime)
            await session.commit()
            return result

    return _run(in_session)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind [default: EMAILMCP_HOST or 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: EMAILMCP_PORT or 8080]")] = None,
    no_worker: Annotated[
        bool,
        typer.Option("--no-worker", help="Serve the API only; run delivery in separate `emailmcp worker` processes."),
    ] = False,
) -> None:
    """Run the HTTP API (migrates the database first)."""
    import uvicorn

    from emailmcp.app import create_app

    settings = _settings()
    # The options win over the environment, for everything that derives from them (the OAuth callback URL).
    settings = settings.model_copy(update={"host": host or settings.host, "port": port or settings.port})
    try:
        runtime = Runtime.create(settings)
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    application = create_app(runtime=runtime, run_worker=not no_worker)
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        server_header=False,
    )


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Messages sent at the same time.")] = 8,
) -> None:
    """Run a standalone worker: mail delivery and webhook dispatch (migrates first). Stops gracefully on SIGTERM
    or Ctrl-C."""
    from emailmcp.background import run_background

    async def work(runtime: Runtime) -> None:
        await runtime.migrate()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run_background(runtime, stop, concurrency)

    _run(work)


@app.command()
def mcp(
    api_key: Annotated[
        str,
        typer.Option(
            envvar="EMAILMCP_API_KEY", show_default=False, help="An API key with the mail scope: the tenant to act for."
        ),
    ],
    no_worker: Annotated[
        bool,
        typer.Option("--no-worker", help="Only queue mail; a `serve` or `worker` process elsewhere delivers it."),
    ] = False,
) -> None:
    """Serve the agent actions as MCP tools over stdio, for local clients such as Claude Desktop.

    Works on the configured database directly; logs go to stderr, stdout carries the protocol only."""
    from emailmcp.mcp_server.stdio import serve_stdio

    async def work(runtime: Runtime) -> None:
        try:
            await serve_stdio(runtime, api_key, run_worker=not no_worker)
        except APIError as exc:
            _fail(exc.message, 2)

    _run(work)


@app.command()
def migrate() -> None:
    """Apply database migrations (serve does this too, under a lock)."""
    _run(Runtime.migrate)
    typer.echo("database is at the current schema")


def _print_keys(keys: list[ApiKeyInfo]) -> None:
    if not keys:
        typer.echo("no keys")
        return
    typer.echo(f"{'ID':<14}{'TENANT':<20}{'SCOPES':<18}{'CREATED':<22}{'LAST USED':<22}{'STATUS'}")
    for key in keys:
        typer.echo(
            f"{key.id:<14}{key.tenant:<20}{','.join(key.scopes):<18}{key.created_at:%Y-%m-%d %H:%M:%S}   "
            f"{(f'{key.last_used_at:%Y-%m-%d %H:%M:%S}' if key.last_used_at else '-'):<22}"
            f"{'revoked' if key.revoked_at else 'active'}"
        )


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant name; created if it does not exist.")],
    scope: Annotated[list[Scope], typer.Option(help="Repeat for several: mail, llm, admin.")],
    name: Annotated[str | None, typer.Option(help="A label to recognise the key by.")] = None,
) -> None:
    """Create an API key. The key itself is the last line printed, and is never shown again."""
    info, plaintext = _with_session(
        lambda session, runtime: tenancy.create_key(session, runtime.key_pepper, tenant, scope, name)
    )
    typer.echo(f"created key {info.id} for tenant {info.tenant} with scopes {','.join(info.scopes)}", err=True)
    typer.echo(plaintext)


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None) -> None:
    """List keys (never their secret material)."""
    _print_keys(_with_session(lambda session, _: tenancy.list_keys(session, tenant)))


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id; it stops working at once."""
    info = _with_session(lambda session, _: tenancy.revoke_key(session, key_id))
    typer.echo(f"revoked key {info.id} of tenant {info.tenant}")


@tenants_app.command("list")
def tenants_list() -> None:
    rows = _with_session(lambda session, _: tenancy.list_tenants(session))
    typer.echo(f"{'NAME':<24}{'ACTIVE KEYS':<14}{'USERS':<10}CREATED")
    for tenant, active_keys, users in rows:
        typer.echo(f"{tenant.name:<24}{active_keys:<14}{users:<10}{tenant.created_at:%Y-%m-%d %H:%M:%S}")


@tenants_app.command("show")
def tenants_show(name: str) -> None:
    """A tenant's settings (JSON) and keys."""

    async def work(session: AsyncSession, _: Runtime):
        return await tenancy.tenant_settings(session, name), await tenancy.list_keys(session, name)

    settings, keys = _with_session(work)
    typer.echo(json.dumps({"tenant": name, "settings": settings.model_dump()}, indent=2))
    _print_keys(keys)


@tenants_app.command("set")
def tenants_set(name: str, setting: str, value: str) -> None:
    """Set one tenant setting, checked against its type."""
    values = _with_session(lambda session, _: tenancy.set_tenant_setting(session, name, setting, value))
    typer.echo(json.dumps(values.model_dump(), indent=2))


@tenants_app.command("unset")
def tenants_unset(name: str, setting: str) -> None:
    """Return a tenant setting to the service default."""
    values = _with_session(lambda session, _: tenancy.set_tenant_setting(session, name, setting, None))
    typer.echo(json.dumps(values.model_dump(), indent=2))


@tenants_app.command("delete")
def tenants_delete(
    name: str, yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False
) -> None:
    """Delete a tenant with all its keys, users and their data."""
    if not yes and not typer.confirm(f"Delete tenant {name!r} and everything it owns?", err=True):
        raise typer.Exit(1)
    _with_session(lambda session, _: tenancy.delete_tenant(session, name))
    typer.echo(f"deleted tenant {name}")


TenantOption = Annotated[str, typer.Option(help="The tenant the webhook belongs to.")]
EventsOption = Annotated[
    list[EventType] | None, typer.Option("--event", help="An event type to send; repeat for several.")
]


def _for_tenant(tenant: str, work: Callable[[AsyncSession, Runtime, TenantContext], Awaitable[BaseModel | None]]):
    """Runs webhook work as the operator acting for `tenant`, and prints its answer as JSON."""

    async def in_session(session: AsyncSession, runtime: Runtime) -> BaseModel | None:
        return await work(session, runtime, await tenancy.operator_context(session, tenant))

    answer = _with_session(in_session)
    if answer is not None:
        typer.echo(answer.model_dump_json(indent=2))


@webhooks_app.command("create")
def webhooks_create(
    tenant: TenantOption,
    url: str,
    event: Annotated[list[EventType], typer.Option(help="An event type to send; repeat for several.")],
    description: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Subscribe a URL to events. Prints the webhook with its signing secret, which is not shown again."""

    def create(session: AsyncSession, runtime: Runtime, ctx: TenantContext):
        data = WebhookIn(url=url, events=event, description=description)
        return webhooks.create_webhook(session, ctx, runtime.vault, runtime.settings, data)

    _for_tenant(tenant, create)


@webhooks_app.command("list")
def webhooks_list(tenant: TenantOption) -> None:
    _for_tenant(tenant, lambda s, _, ctx: webhooks.list_webhooks(s, ctx))


@webhooks_app.command("show")
def webhooks_show(tenant: TenantOption, webhook_id: str) -> None:
    _for_tenant(tenant, lambda s, _, ctx: webhooks.get_webhook(s, ctx, webhook_id))


@webhooks_app.command("update")
def webhooks_update(
    tenant: TenantOption,
    webhook_id: str,
    url: Annotated[str | None, typer.Option()] = None,
    event: EventsOption = None,
    description: Annotated[str | None, typer.Option()] = None,
    enabled: Annotated[bool | None, typer.Option("--enable/--disable", help="Resume or pause deliveries.")] = None,
) -> None:
    """Change a webhook; only the options given change. --enable resumes waiting deliveries at once."""
    given = {"url": url, "events": event, "description": description, "enabled": enabled}

    def update(session: AsyncSession, runtime: Runtime, ctx: TenantContext):
        data = WebhookUpdate(**{name: value for name, value in given.items() if value is not None})
        return webhooks.update_webhook(session, ctx, runtime.settings, webhook_id, data)

    _for_tenant(tenant, update)


@webhooks_app.command("delete")
def webhooks_delete(tenant: TenantOption, webhook_id: str) -> None:
    """Delete a webhook and its deliveries."""
    _for_tenant(tenant, lambda s, _, ctx: webhooks.delete_webhook(s, ctx, webhook_id))
    typer.echo(f"deleted webhook {webhook_id}")


@webhooks_app.command("rotate-secret")
def webhooks_rotate_secret(tenant: TenantOption, webhook_id: str) -> None:
    """A new signing secret; for 24 hours deliveries are signed with the previous one too."""
    _for_tenant(tenant, lambda s, r, ctx: webhooks.rotate_secret(s, ctx, r.vault, webhook_id))


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    tenant: TenantOption,
    webhook_id: str,
    status: Annotated[list[DeliveryStatus] | None, typer.Option(help="Only these; repeat for several.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=webhooks.MAX_PAGE)] = 20,
) -> None:
    """A webhook's latest deliveries with their attempts, newest first."""
    _for_tenant(tenant, lambda s, _, ctx: webhooks.list_deliveries(s, ctx, webhook_id, status, None, limit))


@webhooks_app.command("retry")
def webhooks_retry(tenant: TenantOption, delivery_id: str) -> None:
    """Attempt a delivery again now (a running server or worker sends it)."""
    _for_tenant(tenant, lambda s, r, ctx: webhooks.retry_delivery(s, ctx, r.settings, delivery_id))


@secrets_app.command("rotate")
def secrets_rotate() -> None:
    """Re-encrypt every stored credential under the first key of EMAILMCP_ENCRYPTION_KEYS."""

    async def work(session: AsyncSession, runtime: Runtime) -> tuple[int, str]:
        return await vault.rotate(session, runtime.vault, models.Base.metadata), runtime.vault.primary_key_id

    count, key_id = _with_session(work)
    typer.echo(f"re-encrypted {count} value(s) under key {key_id!r}")


@secrets_app.command("generate-key")
def secrets_generate_key(key_id: Annotated[str, typer.Argument(help="An id for the key, e.g. k2")] = "k1") -> None:
    """Print a new random key as an EMAILMCP_ENCRYPTION_KEYS entry."""
    typer.echo(f"{key_id}:{vault.new_key()}")
