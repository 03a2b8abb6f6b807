"""Pinned npm packages for the Node test peers: each peer folder (tests/peers/<name>/) has a package.json and a
package-lock.json, and `ensure_installed(folder)` runs `npm ci` there unless node_modules already holds what the lock
pins, under a file lock so that parallel test processes do not race.
"""

import fcntl
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path


def _installed(peer_dir: Path) -> bool:
    """Whether node_modules holds what package-lock.json pins (npm writes node_modules/.package-lock.json last).

    Optional packages (the native builds for other platforms) are only compared when npm installed them."""
    try:
        wanted = json.loads((peer_dir / "package-lock.json").read_text())["packages"]
        have = json.loads((peer_dir / "node_modules" / ".package-lock.json").read_text())["packages"]
    except (OSError, ValueError, KeyError):
        return False
    for name, entry in wanted.items():
        if not name:  # the peer's own package.json
            continue
        if name not in have and entry.get("optional"):
            continue
        if have.get(name, {}).get("version") != entry.get("version"):
            return False
    return True


def ensure_installed(peer_dir: Path) -> None:
    """Installs the npm packages locked in `peer_dir` (`npm ci`) unless they are there, under a file lock against
    concurrent installs by parallel test processes."""
    if _installed(peer_dir):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is not installed: the test peer in {peer_dir} needs Node.js 20+ and npm")
    key = hashlib.sha256(str(peer_dir.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir(), f"emailmcp-npm-{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _installed(peer_dir):  # another process installed them while this one waited
                return
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=peer_dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if result.returncode != 0 or not _installed(peer_dir):
                raise RuntimeError(f"npm ci failed in {peer_dir}:\n{result.stdout}\n{result.stderr}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
