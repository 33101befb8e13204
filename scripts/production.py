"""The production profile's Prefect: PostgreSQL, Redis, two API replicas and the services apart.

`make up PROFILE=production` (scripts/stack.py `--profile production`) starts it in place of the
embedded SQLite server; the rest of the stack (studio API, task workers, the local pool) is the
same. Everything runs as local processes, its state under `$STUDIO_WORKSPACE/.studio/production/`:

  postgres      Debian's PostgreSQL 15 (`postgresql-15`), run as the `postgres` user (it refuses
                root), initialised once, on 127.0.0.1 and its own port; database `prefect`
                with `pg_trgm`.
  redis         Debian's `redis-server` (scripts/setup_production.sh installs it), append-only.
  migrate       `prefect server database upgrade -y`, once per start, before any API.
  prefect-api   `prefect server start --no-services`: the *task* replica. The studio API's
                `.delay()`, the task workers and the reconciler's re-proposals all use this one
                process: Prefect keeps its queue of background tasks in one API process's memory
                (PrefectHQ/prefect#21218), so a worker only ever sees what was queued there.
  prefect-ui    a second `--no-services` replica serving the Prefect UI and other clients (TDs,
                the pool worker's flow runs). Started after the first (block registration races
                on a fresh database) and with block registration off.
  prefect-services  `prefect server services start`: scheduler, event persister, triggers,
                task-run recorder... They read the events from Redis, so a restart of this
                process loses none.

Both replicas publish and read events through Redis (prefect-redis): a client subscribed to
either sees the events sent to the other.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from scripts.local_prefect import free_port

PG_BIN = Path(os.environ.get("STUDIO_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_PACKAGE = "postgresql-15"
REDIS_PACKAGE = "redis-server"
DB_NAME = "prefect"
DB_USER = "prefect"

# Redis publishes in batches of 5 or every 10 s by default: a take's COMPLETED arrived 10.9 s late.
# One message per publish keeps events at most a fraction of a second behind (bench/scale.py).
PUBLISHER_BATCH_SIZE = "1"
PUBLISHER_PUBLISH_EVERY = "1"


class ProductionError(RuntimeError):
    """Something the operator must fix; the message says what."""


def _read_secret(name: str, default_file: Path) -> str:
    """`NAME` from the environment, or the file `NAME_FILE` names, or one generated once into
    `default_file` (0600). Never written into the repository."""
    if os.environ.get(name):
        return os.environ[name]
    path = Path(os.environ.get(f"{name}_FILE") or default_file)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    stop_signal: int = signal.SIGTERM

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if not self.alive():
            return
        os.killpg(self.popen.pid, self.stop_signal)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


@dataclass
class ProductionPrefect:
    """The production Prefect as child processes; the same interface as LocalPrefectServer
    (`env()`, `start()`, `stop()`, `api_url`, `ui_url`) so that the stack can use either."""

    state_dir: Path
    ui_port: int = 4200
    task_port: int = 0
    pg_port: int = 0
    redis_port: int = 0
    logs: Path | None = None
    children: dict[str, Child] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state_dir = self.state_dir.absolute()
        self.task_port = self.task_port or free_port()
        self.pg_port = self.pg_port or free_port()
        self.redis_port = self.redis_port or free_port()
        self.logs = (self.logs or self.state_dir / "logs").absolute()

    # --- where things are ----------------------------------------------------------------

    @property
    def pg_data(self) -> Path:
        return self.state_dir / "postgres" / "data"

    @property
    def redis_dir(self) -> Path:
        return self.state_dir / "redis"

    @property
    def home(self) -> Path:
        return self.state_dir / "prefect-home"

    @property
    def api_url(self) -> str:
        """The task replica: what the studio API and the task workers use."""
        return f"http://127.0.0.1:{self.task_port}/api"

    @property
    def ui_api_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def db_password(self) -> str:
        return _read_secret("STUDIO_DB_PASSWORD", self.state_dir / "secrets" / "db-password")

    def database_url(self) -> str:
        return (f"postgresql+asyncpg://{DB_USER}:{self.db_password()}"
                f"@127.0.0.1:{self.pg_port}/{DB_NAME}")

    def redis_url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/{db}"

    # --- environments -----------------------------------------------------------------------

    def server_env(self) -> dict[str, str]:
        """What every Prefect server process (replicas, services, migrations) needs."""
        return {
            "PREFECT_HOME": str(self.home),
            # What a service calls back, if any: never another stack's server.
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": self.database_url(),
            "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EVENTS_MESSAGING_BROKER": "prefect_redis.messaging",
            "PREFECT_SERVER_EVENTS_MESSAGING_CACHE": "prefect_redis.messaging",
            "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
            "PREFECT_SERVER_DOCKET_URL": self.redis_url(1),
            "PREFECT_REDIS_MESSAGING_HOST": "127.0.0.1",
            "PREFECT_REDIS_MESSAGING_PORT": str(self.redis_port),
            "PREFECT_REDIS_MESSAGING_DB": "0",
            "PREFECT_REDIS_MESSAGING_PUBLISHER_BATCH_SIZE": PUBLISHER_BATCH_SIZE,
            "PREFECT_REDIS_MESSAGING_PUBLISHER_PUBLISH_EVERY": PUBLISHER_PUBLISH_EVERY,
            "PREFECT_SERVER_METRICS_ENABLED": "true",
        }

    def env(self) -> dict[str, str]:
        """What the studio's processes need: the task replica, named twice so that nothing
        has to guess which replica holds the task queue."""
        env = {
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "STUDIO_TASK_API_URL": self.api_url,
            "STUDIO_PREFECT_UI_API_URL": self.ui_api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        return env

    def ui_client_env(self) -> dict[str, str]:
        """For clients that never `.delay()` (a pool worker and its flow runs, TDs' scripts)."""
        return {**self.env(), "PREFECT_API_URL": self.ui_api_url}

    # --- starting and stopping -----------------------------------------------------------

    def check_installed(self) -> None:
        for binary in ("initdb", "postgres"):
            if not (PG_BIN / binary).is_file():
                raise ProductionError(
                    f"PostgreSQL 15 is not installed ({PG_BIN / binary} is missing): "
                    f"`apt-get install {PG_PACKAGE}` (or set STUDIO_PG_BIN to its bin folder)")
        if shutil.which("redis-server") is None:
            raise ProductionError(
                f"redis-server is not installed: `apt-get install {REDIS_PACKAGE}` "
                "(`bash scripts/setup_production.sh` does it)")

    def start(self, timeout: float = 300) -> None:
        self.check_installed()
        assert self.logs is not None
        self.logs.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self.start_postgres(timeout)
            self.start_redis(timeout)
            self._run("migrate", [sys.executable, "-m", "prefect", "server", "database",
                                  "upgrade", "-y"], timeout)
            self.start_task_api(timeout)
            # The UI replica and the services start together, after the task replica registered
            # the blocks (two replicas registering at once on a fresh database: one crashed).
            self._spawn("prefect-ui", self._api_command(self.ui_port),
                        {**self.server_env(), "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false"})
            self.start_services()
            self._wait_http("prefect-ui", f"{self.ui_api_url}/health", timeout)
        except BaseException:
            self.stop()
            raise

    def start_task_api(self, timeout: float = 300) -> None:
        self._spawn("prefect-api", self._api_command(self.task_port),
                    {**self.server_env(), "PREFECT_UI_ENABLED": "false"})
        self._wait_http("prefect-api", f"{self.api_url}/health", timeout)

    def start_services(self) -> None:
        self._spawn("prefect-services",
                    [sys.executable, "-m", "prefect", "server", "services", "start"],
                    self.server_env())

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Ends one process at once (tests: a crash); `start_services()` brings services back."""
        child = self.children.pop(name)
        if child.alive():
            os.killpg(child.popen.pid, sig)
            child.popen.wait()

    def stop(self) -> None:
        for name in reversed(list(self.children)):
            self.children.pop(name).stop()

    def restart(self, timeout: float = 300) -> None:
        self.stop()
        self.start(timeout)

    # --- PostgreSQL ---------------------------------------------------------------------------

    def _as_postgres(self, cmd: list[str]) -> list[str]:
        """PostgreSQL refuses to run as root: run it as the `postgres` user then."""
        if os.geteuid() != 0:
            return cmd
        return [_runuser(), "-u", "postgres", "--", *cmd]

    def _check_reachable(self) -> None:
        """As root, the `postgres` user must be able to reach the data folder."""
        if os.geteuid() != 0:
            return
        probe = subprocess.run(self._as_postgres(["test", "-w", str(self.pg_data.parent)]),
                               check=False)
        if probe.returncode != 0:
            raise ProductionError(
                f"the `postgres` user cannot write {self.pg_data.parent}: every folder above it "
                "must be searchable by others (chmod o+x), e.g. a workspace outside /root")

    def init_postgres(self, timeout: float) -> None:
        """initdb and the `prefect` database with pg_trgm, once (PG_VERSION marks it done)."""
        folder = self.pg_data.parent
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
            folder.chmod(0o700)
        self._check_reachable()
        if (self.pg_data / "PG_VERSION").is_file():
            return
        superuser = _read_secret("STUDIO_PG_SUPERUSER_PASSWORD",
                                 self.state_dir / "secrets" / "postgres-password")
        pwfile = folder / "initdb.pw"
        pwfile.write_text(superuser)
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        try:
            self._run("postgres-initdb", self._as_postgres([
                str(PG_BIN / "initdb"), "-D", str(self.pg_data), "-U", "postgres",
                f"--pwfile={pwfile}", "--auth-local=peer", "--auth-host=scram-sha-256",
                "--encoding=UTF8", "--no-locale"]), timeout)
        finally:
            pwfile.unlink(missing_ok=True)

    def start_postgres(self, timeout: float) -> None:
        fresh = not (self.pg_data / "PG_VERSION").is_file()
        self.init_postgres(timeout)
        self._spawn("postgres", self._as_postgres([
            str(PG_BIN / "postgres"), "-D", str(self.pg_data), "-p", str(self.pg_port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
            "-c", "max_connections=200"]), {}, stop_signal=signal.SIGINT)  # SIGINT: fast shutdown
        self._wait(lambda: self._psql("postgres", "SELECT 1", check=False)[0] == 0, timeout,
                   "postgres")
        if fresh or not (self.state_dir / "postgres" / "db-created").is_file():
            self._create_database()

    def _psql(self, db: str, sql: str, check: bool = True) -> tuple[int, str]:
        """Runs one statement as the superuser over TCP; (exit code, its output)."""
        superuser = _read_secret("STUDIO_PG_SUPERUSER_PASSWORD",
                                 self.state_dir / "secrets" / "postgres-password")
        env = {**os.environ, "PGPASSWORD": superuser}
        done = subprocess.run([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.pg_port),
                               "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-qtAc",
                               sql],
                              env=env, capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            raise ProductionError(f"psql failed: {sql.split()[0]} ...: {done.stderr.strip()}")
        return done.returncode, done.stdout.strip()

    def _create_database(self) -> None:
        password = self.db_password().replace("'", "''")
        self._psql("postgres", f"DO $$ BEGIN CREATE ROLE {DB_USER} LOGIN PASSWORD '{password}';"
                   " EXCEPTION WHEN duplicate_object THEN NULL; END $$;")
        exists = self._psql("postgres", f"SELECT 1 FROM pg_database WHERE datname='{DB_NAME}'")
        if exists[1] != "1":
            self._psql("postgres", f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
        self._psql(DB_NAME, "CREATE EXTENSION IF NOT EXISTS pg_trgm")
        (self.state_dir / "postgres" / "db-created").write_text("1")

    # --- Redis --------------------------------------------------------------------------------

    def start_redis(self, timeout: float) -> None:
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        self._spawn("redis", ["redis-server", "--bind", "127.0.0.1", "--port",
                              str(self.redis_port), "--dir", str(self.redis_dir),
                              "--appendonly", "yes", "--save", "", "--protected-mode", "yes"],
                    {})
        import redis

        def ping() -> bool:
            try:
                return bool(redis.Redis(port=self.redis_port, socket_timeout=1).ping())
            except redis.RedisError:
                return False

        self._wait(ping, timeout, "redis")

    # --- helpers ------------------------------------------------------------------------------

    def _api_command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "prefect", "server", "start", "--no-services",
                "--host", "127.0.0.1", "--port", str(port)]

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str],
               stop_signal: int = signal.SIGTERM) -> Child:
        assert self.logs is not None
        with (self.logs / f"{name}.log").open("ab") as log:
            popen = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        child = Child(name, popen, stop_signal)
        self.children[name] = child
        return child

    def _run(self, name: str, cmd: list[str], timeout: float) -> None:
        assert self.logs is not None
        with (self.logs / f"{name}.log").open("ab") as log:
            done = subprocess.run(cmd, env={**os.environ, **self.server_env()}, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  timeout=timeout, check=False)
        if done.returncode != 0:
            raise ProductionError(f"{name} failed ({done.returncode}); see {self.logs}/{name}.log")

    def _wait(self, check: object, timeout: float, name: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            child = self.children.get(name)
            if child is not None and not child.alive():
                raise ProductionError(f"{name} exited ({child.popen.returncode}); "
                                      f"see {self.logs}/{name}.log")
            if check():  # type: ignore[operator]
                return
            time.sleep(0.3)
        raise ProductionError(f"{name} not ready after {timeout:.0f} s; see {self.logs}/{name}.log")

    def _wait_http(self, name: str, url: str, timeout: float) -> None:
        def ok() -> bool:
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        self._wait(ok, timeout, name)


def _runuser() -> str:
    """util-linux's runuser lives in /usr/sbin, which a plain user's PATH (and some CI
    runners') leaves out."""
    found = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.access(p, os.X_OK)), None)
    if found is None:
        raise SystemExit("runuser (util-linux) is needed to run PostgreSQL as the postgres user "
                         "when the stack runs as root: apt-get install util-linux")
    return found
