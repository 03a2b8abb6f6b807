"""Shared fixtures: real `emailmcp serve` processes on free ports, on SQLite and on PostgreSQL.

PostgreSQL tests take EMAILMCP_TEST_DATABASE_URL (a server where the test may create databases)
and Redis tests EMAILMCP_TEST_REDIS_URL. Without them the tests skip, except under CI=true,
where they fail: CI must run everything.
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest

from peers.chromium import browser  # noqa: F401  (the fixtures, for every test module)
from peers.smtp import smtp_sink  # noqa: F401

BIN = Path(sys.executable).parent
EMAILMCP = str(BIN / "emailmcp")
IN_CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get("EMAILMCP_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("EMAILMCP_TEST_REDIS_URL")
BACKENDS = ["sqlite", "postgresql"]
# Gmail configured, with Google's endpoints on a closed port: the OAuth endpoints answer without any network.
OFFLINE_GOOGLE = {
    "EMAILMCP_GOOGLE_CLIENT_ID": "emailmcp-tests.apps.example.com",
    "EMAILMCP_GOOGLE_CLIENT_SECRET": "not-a-real-secret",
    **{
        f"EMAILMCP_GOOGLE_{name}_URL": f"http://127.0.0.1:9/{name.lower()}"
        for name in ("AUTH", "TOKEN", "REVOKE", "USERINFO")
    },
}


def unavailable(what: str, how: str) -> None:
    """Skips a test whose service is missing, or fails it under CI=true."""
    message = f"{what} not available: {how}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true requires it)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresDatabase:
    """A fresh database on the test PostgreSQL server, dropped afterwards."""

    def __init__(self, base_url: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self.base_url = base_url
        self.name = f"emailmcp_t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self._plain(base_url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.url = base_url.rsplit("/", 1)[0] + "/" + self.name

    @staticmethod
    def _plain(url: str) -> str:
        return url.replace("postgresql+psycopg://", "postgresql://")

    def drop(self) -> None:
        with self._psycopg.connect(self._plain(self.base_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def require_postgres() -> str:
    if not PG_URL:
        unavailable(
            "PostgreSQL", "set EMAILMCP_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test to run these tests"
        )
    return PG_URL


@pytest.fixture
def make_database(tmp_path_factory) -> Iterator:
    """Returns a function giving a fresh database URL for a backend ('sqlite' or 'postgresql')."""
    created: list[PostgresDatabase] = []

    def make(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'emailmcp.db'}"
        database = PostgresDatabase(require_postgres())
        created.append(database)
        return database.url

    yield make
    for database in created:
        database.drop()


class Server:
    """An `emailmcp serve` process, started from its own working directory like a user would."""

    def __init__(self, workdir: Path, database_url: str | None = None, args: tuple[str, ...] = (), **env: str) -> None:
        self.workdir = workdir
        self.args = tuple(args)  # extra `emailmcp serve` options, e.g. ("--no-worker",)
        self.data_dir = workdir / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("EMAILMCP_")},
            "EMAILMCP_DATA_DIR": str(self.data_dir),
            "EMAILMCP_LOG_FORMAT": "json",
            **env,
        }
        if database_url:
            self.env["EMAILMCP_DATABASE_URL"] = database_url
        if database_url and database_url.startswith("postgresql"):
            self.env.setdefault("EMAILMCP_SECRET_KEY", secrets.token_hex(32))
        self.log_path = workdir / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "Server":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- stays open for the process's lifetime
        self.process = subprocess.Popen(
            [EMAILMCP, "serve", "--port", str(self.port), *self.args],
            cwd=self.workdir,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                if httpx2.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx2.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.log_text()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process:
            self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def bootstrap_key(self) -> str:
        return (self.data_dir / "bootstrap-key").read_text().strip()

    def cli(
        self, *args: str, check: bool = True, input: str | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess:
        """Runs the emailmcp CLI against this server's database, from another directory by default."""
        result = subprocess.run(
            [EMAILMCP, *args],
            cwd=cwd or self.workdir.parent,
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"emailmcp {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def create_key(self, tenant: str, *scopes: str) -> str:
        args = ["keys", "create", "--tenant", tenant]
        for scope in scopes:
            args += ["--scope", scope]
        return self.cli(*args).stdout.strip().splitlines()[-1]

    def client(self, key: str | None = None, headers: dict[str, str] | None = None, **kwargs) -> httpx2.Client:
        """An HTTP client for this server; `key` goes in Authorization: Bearer."""
        headers = ({"Authorization": f"Bearer {key}"} if key else {}) | (headers or {})
        return httpx2.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)


class WorkerProcess:
    """A standalone `emailmcp worker` against a server's database, with the server's environment."""

    def __init__(self, server: Server, concurrency: int, number: int) -> None:
        self.log_path = server.workdir / f"worker-{number}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (open for the process's lifetime)
        self.process = subprocess.Popen(
            [EMAILMCP, "worker", "--concurrency", str(concurrency)],
            cwd=server.workdir,
            env=server.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def kill(self) -> int:
        self.process.send_signal(signal.SIGKILL)
        return self.process.wait(10)

    def running(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture
def start_worker() -> Iterator[Callable[..., WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(server: Server, concurrency: int = 8) -> WorkerProcess:
        worker = WorkerProcess(server, concurrency, len(workers) + 1)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.close()


def _starter(tmp_path_factory) -> Iterator:
    servers: list[Server] = []

    def start(database_url: str | None = None, args: tuple[str, ...] = (), **env: str) -> Server:
        server = Server(tmp_path_factory.mktemp("server"), database_url, args, **env).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def start_server(tmp_path_factory) -> Iterator:
    """Returns a function starting a server with the given database URL and extra EMAILMCP_* settings."""
    yield from _starter(tmp_path_factory)


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory) -> Iterator:
    """Like start_server, for servers shared by a whole test module."""
    yield from _starter(tmp_path_factory)


def backend_database_url(request) -> str | None:
    """For a fixture parametrised over BACKENDS: a fresh PostgreSQL database (dropped at teardown), or None."""
    if request.param != "postgresql":
        return None
    database = PostgresDatabase(require_postgres())
    request.addfinalizer(database.drop)
    return database.url


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory) -> Iterator[Server]:
    """One shared server per test module and backend; tests make their own tenants for isolation."""
    database = None
    url = None
    if request.param == "postgresql":
        database = PostgresDatabase(require_postgres())
        url = database.url
    instance = Server(tmp_path_factory.mktemp(f"server-{request.param}"), url, **OFFLINE_GOOGLE).start()
    yield instance
    instance.stop()
    if database:
        database.drop()


@pytest.fixture
def tenant_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


# Internals that must never reach a client in an error body.
LEAKS = (
    "Traceback",
    'File "',
    "/site-packages/",
    "sqlalchemy",
    "psycopg",
    "sqlite3",
    "pydantic_core",
    "SELECT ",
    "INSERT ",
    "UPDATE ",
)


def unique(prefix: str) -> str:
    """A name no other test uses: for tenants, users, addresses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Polls `predicate` until it returns something true, which is returned; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], list)
    if code is not None:
        assert error["code"] == code, error
    for leak in LEAKS:
        assert leak not in response.text, f"error body leaks internals ({leak!r}): {response.text}"
    return error
