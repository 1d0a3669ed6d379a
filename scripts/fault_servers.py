"""Throwaway Redis and PostgreSQL servers on free loopback ports, for fault tests and benchmarks that restart
or kill them (never the shared servers other tests use).

``RedisServer`` keeps its data in an append-only file fsynced at every write, so a server killed with SIGKILL
and started again holds everything it acknowledged (queues, jobs, blobs), as a Redis configured for durability
would (``durable=False``: nothing survives a restart). ``PostgresServer`` is a cluster made with ``initdb`` in a
temporary folder; a crash stop (``pg_ctl stop -m immediate``) aborts every connection and the next start replays
the WAL.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class ServerMissing(RuntimeError):
    """The server's binaries are not installed here."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_bytes(pid: int) -> int:
    """The peak resident memory of a live process (Linux ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


class RedisServer:
    def __init__(
        self, root: Path, port: int | None = None, *, durable: bool = True, extra_args: tuple[str, ...] = ()
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerMissing("redis-server is not installed (scripts/ensure_redis.sh installs it)")
        self.binary = binary
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra_args = extra_args  # e.g. ("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
        self.durable = durable  # False: nothing survives a restart (like scripts/ensure_redis.sh)
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout_s: float = 10.0) -> None:
        argv = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.root)]
        argv += ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        argv += ["--save", "", "--protected-mode", "no"]
        argv += ["--logfile", str(self.root / "redis.log"), *self.extra_args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}: {self.log_tail()}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1).ping())
        except redis.exceptions.RedisError:
            return False

    def kill(self) -> None:
        """Crash the server (SIGKILL): only the append-only file survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self, down_s: float = 0.0) -> None:
        self.kill()
        time.sleep(down_s)
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def info_memory(self) -> dict[str, int]:
        import redis

        info = redis.Redis(port=self.port, socket_timeout=5).info("memory")
        return {k: int(info[k]) for k in ("used_memory", "used_memory_peak")}

    def peak_rss_bytes(self) -> int:
        assert self.proc is not None
        return peak_rss_bytes(self.proc.pid)

    def log_tail(self, chars: int = 2000) -> str:
        path = self.root / "redis.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def postgres_bin_dir() -> Path:
    """The folder of ``initdb`` and ``pg_ctl`` (PATH first, then Debian's /usr/lib/postgresql/<v>/bin)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    raise ServerMissing("PostgreSQL server binaries (initdb, pg_ctl) are not installed")


class PostgresServer:
    """A PostgreSQL cluster of its own. Run as root, it runs as the ``postgres`` user (initdb refuses root)."""

    def __init__(self, port: int | None = None) -> None:
        self.bin = postgres_bin_dir()
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="anibot-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            try:
                user = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise ServerMissing(
                    "running as root and there is no 'postgres' user to run PostgreSQL"
                ) from exc
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str, timeout_s: float = 60) -> None:
        done = subprocess.run(
            [*self._as_user, *argv], capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed: {done.stderr.strip()[-1500:]}")

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"
        )

    def crash(self) -> None:
        """Stop at once, as a crash would: connections are cut, the WAL is replayed at the next start."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # already stopped
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"
