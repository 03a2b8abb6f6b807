"""First start: the generated secret key, the bootstrap key and how it reaches the operator (file,
terminal, never the log), restarts, and refusing PostgreSQL without a shared secret key."""

import os
import pty
import re
import select
import stat
import subprocess
import sys
import time

import httpx2
import pytest

from conftest import EMAILMCP, free_port

KEY_SHAPE = re.compile(r"emk_[a-z0-9]{12}_([A-Za-z0-9_-]{43})")


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def key_count(server) -> int:
    listing = server.cli("keys", "list").stdout
    return sum(1 for line in listing.splitlines()[1:] if line.strip())


def test_first_start_creates_a_private_all_scope_key_and_secret_key(start_server):
    server = start_server()
    key_file = server.data_dir / "bootstrap-key"
    secret_file = server.data_dir / "secret-key"
    assert key_file.exists() and mode(key_file) == 0o600
    assert secret_file.exists() and mode(secret_file) == 0o600
    key = server.bootstrap_key
    match = KEY_SHAPE.fullmatch(key)
    assert match, f"not an emailmcp key: {key!r}"
    assert len(secret_file.read_text().strip()) >= 32

    with server.client(key) as client:
        assert client.get("/v1/users").status_code == 200  # mail
        assert client.post("/v1/users", json={"user_id": "boot-user"}).status_code == 201
        assert client.delete("/v1/users/boot-user").status_code == 204  # admin
    listing = server.cli("keys", "list").stdout
    assert key[4:16] in listing
    assert re.search(rf"{key[4:16]}\s+default\s+admin,llm,mail\s", listing), listing  # llm too

    log = server.log_text()
    assert "secret_key_generated" in log
    assert str(secret_file.resolve()) in log, "the log should say where the generated secret key is"
    assert str(key_file.resolve()) in log, "the log should say where the bootstrap key is"
    assert key not in log
    assert match.group(1) not in log
    assert secret_file.read_text().strip() not in log


def test_second_start_keeps_the_key(start_server):
    server = start_server()
    key_file = server.data_dir / "bootstrap-key"
    first_key, first_stat = server.bootstrap_key, key_file.stat()
    secret = (server.data_dir / "secret-key").read_text()
    server.stop()
    server.start()
    assert key_file.read_text().strip() == first_key
    assert key_file.stat().st_mtime_ns == first_stat.st_mtime_ns
    assert (server.data_dir / "secret-key").read_text() == secret
    assert key_count(server) == 1
    log = server.log_text()
    assert log.count("bootstrap_key_created") == 1
    assert log.count("secret_key_generated") == 1
    with server.client(first_key) as client:
        assert client.get("/v1/users").status_code == 200


def test_a_deleted_bootstrap_key_file_is_not_recreated(start_server):
    server = start_server()
    (server.data_dir / "bootstrap-key").unlink()
    server.stop()
    server.start()
    assert not (server.data_dir / "bootstrap-key").exists()
    assert key_count(server) == 1


def _read_until(fd: int, pattern: re.Pattern, deadline: float, seen: bytearray) -> re.Match | None:
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            found = pattern.search(seen.decode(errors="replace"))
            if found:
                return found
    return None


def test_the_key_is_printed_on_a_terminal(tmp_path):
    master, slave = pty.openpty()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILMCP_")}
    env["EMAILMCP_DATA_DIR"] = str(tmp_path / "data")
    process = subprocess.Popen(
        [EMAILMCP, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    seen = bytearray()
    try:
        found = _read_until(master, KEY_SHAPE, time.monotonic() + 30, seen)
        assert found, f"no key on the terminal:\n{seen.decode(errors='replace')}"
        assert found.group(0) == (tmp_path / "data" / "bootstrap-key").read_text().strip()
        # Let the server finish starting and log a request, then check the key was shown once only.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx2.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx2.TransportError:
                _read_until(master, re.compile("(?!)"), time.monotonic() + 0.2, seen)
        _read_until(master, re.compile("(?!)"), time.monotonic() + 1, seen)
        assert seen.decode(errors="replace").count(found.group(1)) == 1
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        os.close(master)


def test_the_key_is_not_printed_without_a_terminal(start_server):
    server = start_server()
    key = server.bootstrap_key
    server.stop()  # flushes everything the process wrote
    output = server.log_text()
    assert "bootstrap_key_created" in output
    assert key not in output
    assert KEY_SHAPE.search(output) is None


@pytest.mark.parametrize("secret_key", [None, "too-short"], ids=["missing", "short"])
@pytest.mark.parametrize("command", ["serve", "migrate", "keys-list"])
def test_postgresql_needs_a_secret_key(make_database, tmp_path, command, secret_key):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILMCP_")} | {
        "EMAILMCP_DATABASE_URL": make_database("postgresql"),
        "EMAILMCP_DATA_DIR": str(tmp_path / "data"),
    }
    if secret_key:
        env["EMAILMCP_SECRET_KEY"] = secret_key
    args = {"serve": ["serve", "--port", str(free_port())], "migrate": ["migrate"], "keys-list": ["keys", "list"]}
    args = args[command]
    started = time.monotonic()
    try:
        result = subprocess.run([EMAILMCP, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"emailmcp {command} kept running without a usable EMAILMCP_SECRET_KEY")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert time.monotonic() - started < 15
    assert "EMAILMCP_SECRET_KEY" in output
    assert "Traceback" not in output
    assert not (tmp_path / "data" / "secret-key").exists(), "PostgreSQL must not fall back to a local secret key"
    if secret_key:
        assert secret_key not in output


RACE = """
import sys, time
from pathlib import Path
from emailmcp.observability import configure_logging
from emailmcp.runtime import load_secret_key
from emailmcp.settings import Settings
configure_logging("warning", "json")  # logs to stderr, as every emailmcp command does
settings = Settings(data_dir=Path(sys.argv[2]), _env_file=None)
while time.time() < float(sys.argv[1]):
    pass
print(load_secret_key(settings).decode())
"""


def test_processes_starting_together_agree_on_the_generated_secret_key(tmp_path):
    """Replicas (or `emailmcp keys create` run while the server first starts) on one fresh SQLite data dir must
    all end up with the secret key the file holds: otherwise keys one of them made do not authenticate on the
    others, and credentials one of them stored cannot be decrypted after a restart."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILMCP_")}
    for trial in range(2):
        data_dir = tmp_path / f"data{trial}"
        start_at = str(time.time() + 2.5)  # after every process has imported emailmcp
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", RACE, start_at, str(data_dir)],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(8)
        ]
        results = [proc.communicate(timeout=60) for proc in procs]
        assert all(proc.returncode == 0 for proc in procs), [err for _, err in results]
        stored = (data_dir / "secret-key").read_text().strip()
        assert len(stored) >= 32
        held = [out.strip() for out, _ in results]
        assert set(held) == {stored}, (
            f"{len(set(held))} different secret keys in use, {held.count(stored)} of 8 match the file"
        )
