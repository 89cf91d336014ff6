"""Real PostgreSQL and Redis servers on free ports, for the tests and the benchmarks.

Nothing here is a fake: :class:`LocalPostgres` runs the machine's PostgreSQL binaries
(``initdb``/``pg_ctl`` from Debian's versioned directory, as the ``postgres`` user when
this process is root, since PostgreSQL refuses to run as root) on a throw-away cluster;
:class:`LocalRedis` runs ``redis-server`` without persistence. Both stop and clean up when
their ``with`` block ends.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["LocalPostgres", "LocalRedis", "ServerMissingError"]


class ServerMissingError(RuntimeError):
    """The server binary is not installed; the message says how to install it."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        on_path = shutil.which("initdb")
        if on_path is None:
            raise ServerMissingError(
                "PostgreSQL's initdb was not found (looked in /usr/lib/postgresql/*/bin and "
                "PATH); install it with: apt-get install postgresql"
            )
        return Path(on_path).parent
    return Path(found[-1]).parent


class LocalPostgres:
    """A PostgreSQL cluster in a temporary directory, trusting local connections."""

    def __init__(self, user: str = "quantmesh") -> None:
        self.user = user
        self.port = _free_port()
        self._bin = _postgres_bin()
        self._dir = Path(tempfile.mkdtemp(prefix="quantmesh-pg-"))
        self._data = self._dir / "data"
        self._databases = 0

    @property
    def url(self) -> str:
        """URL of the ``postgres`` maintenance database."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def create_database(self, prefix: str = "test") -> str:
        """Create a fresh, empty database; return its URL."""
        self._databases += 1
        name = f"{prefix}_{self._databases}"
        self._run(
            [
                str(self._bin / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                name,
            ]
        )
        return self.database_url(name)

    def start(self) -> LocalPostgres:
        if os.geteuid() == 0:
            shutil.chown(self._dir, "postgres", "postgres")
        self._run(
            [
                str(self._bin / "initdb"),
                "-D",
                str(self._data),
                "-U",
                self.user,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        self._start_server()
        return self

    def stop(self) -> None:
        if self._data.exists():
            self._run(
                [str(self._bin / "pg_ctl"), "-D", str(self._data), "-m", "immediate", "stop"],
                check=False,
            )
        shutil.rmtree(self._dir, ignore_errors=True)

    def kill(self) -> None:
        """Stop the server abruptly (as a crash would), keeping its data for a restart."""
        self._run([str(self._bin / "pg_ctl"), "-D", str(self._data), "-m", "immediate", "stop"])

    def restart(self) -> None:
        """Start again on the same port and data after :meth:`kill`."""
        self._start_server()

    def _start_server(self) -> None:
        options = (
            f"-p {self.port} -k {self._dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            [
                str(self._bin / "pg_ctl"),
                "-D",
                str(self._data),
                "-o",
                options,
                "-l",
                str(self._dir / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def _run(self, command: list[str], check: bool = True) -> None:
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalRedis:
    """``redis-server`` on a free port, in memory only."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerMissingError(
                "redis-server was not found; install it with: apt-get install redis-server"
            )
        self._binary = binary
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> LocalRedis:
        self._process = subprocess.Popen(
            [
                self._binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 30 s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def kill(self) -> None:
        """Stop abruptly (as a crash would); :meth:`start` brings it back on the same port."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
