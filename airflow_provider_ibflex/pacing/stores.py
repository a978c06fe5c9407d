"""Where a token's request budget is kept so that every process sees one budget.

A store runs one change of a token's ``BudgetState`` atomically, on its own clock:

- ``FileBudgetStore`` (the default): a file per token under a folder, changed under ``flock``. Every
  process on one machine that shares the folder (``$AIRFLOW_HOME`` by default) shares the budget.
- ``RedisBudgetStore``: a key per token in Redis, changed in an optimistic ``WATCH``/``MULTI``
  transaction on Redis's clock. Every process on every machine that reaches the server shares it.
- ``SqlBudgetStore``: a row per token in a PostgreSQL database, changed in a transaction that locks
  the row (``SELECT ... FOR UPDATE``) on the database's clock. Every process on every machine that
  reaches the database shares it; a deployment without Redis already runs one.

Which one a process uses comes from Airflow's configuration, section ``[ibflex]`` (see
``store_from_config``). A store that cannot be reached raises ``BudgetStoreError`` naming itself;
the caller waits and asks again (``pacing``), and never sends without a turn.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from airflow_provider_ibflex.pacing.budget import BudgetState

T = TypeVar("T")
Change = Callable[[BudgetState, float], tuple[BudgetState, T]]

SECTION = "ibflex"
# Redis keys expire once nothing has used a token for this long (a hold-off never lasts that long).
REDIS_TTL_SECONDS = 24 * 3600
REDIS_PREFIX = "ibflex:budget:"


class BudgetStoreError(Exception):
    """The store of the token budgets could not be reached or changed; nothing was changed."""


class BudgetStore(Protocol):
    """One atomic change of one token's state at a time, wherever the state lives."""

    @property
    def started(self) -> float | None:
        """When the store last started, on its clock, if a start may lose what it kept (None for a
        store that keeps everything)."""
        ...

    def update(self, key: str, change: Change[T]) -> T:
        """Apply ``change(state, now)`` atomically and return its result.

        :param key: the token's key (``token_key``).
        :param change: gets the current state and the store's clock; returns the new state and a result.
        :raises BudgetStoreError: the store could not be reached or changed.
        """
        ...


class FileBudgetStore:
    """Budgets in files under ``folder``: one machine, any number of processes.

    Each token's state is one small file, locked with ``flock`` while it is read and rewritten in
    place with a single write (padded with spaces when it shrinks): other processes wait for the lock,
    so none sees a write half-done, and a few hundred bytes written to a local file are not cut short
    by a signal. No temporary file, no rename: a transaction is five system calls.

    :param folder: a folder every process of the deployment on this machine can write.
    """

    started = None  # files outlive every process

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._folder = str(folder)

    def __repr__(self) -> str:
        return f"FileBudgetStore({self._folder!r})"

    def update(self, key: str, change: Change[T]) -> T:
        try:
            return self._update(key, change)
        except OSError as exc:
            raise BudgetStoreError(f"{self!r}: {type(exc).__name__}: {exc}") from exc

    def _update(self, key: str, change: Change[T]) -> T:
        path = os.path.join(self._folder, f"{key}.budget")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:
            os.makedirs(self._folder, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, os.fstat(fd).st_size, 0)
            old = BudgetState.from_json(raw.strip() or None)
            new, result = change(old, time.time())
            if new != old:
                data = new.to_json().encode()
                os.pwrite(fd, data.ljust(len(raw)), 0)
            return result
        finally:
            os.close(fd)  # and the lock with it


class RedisBudgetStore:
    """Budgets in Redis: any number of processes on any number of machines.

    :param client: a ``redis.Redis`` client.
    :param prefix: the keys' prefix.
    """

    def __init__(self, client: Any, prefix: str = REDIS_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._started: float | None = None

    def __repr__(self) -> str:
        kwargs = getattr(getattr(self.client, "connection_pool", None), "connection_kwargs", {})
        where = f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
        return f"RedisBudgetStore({where!r})"

    @property
    def started(self) -> float | None:
        """When the server started (its clock): a restart without persistence loses every budget."""
        if self._started is None:
            try:
                uptime = float(self.client.info("server")["uptime_in_seconds"])
                seconds, micros = self.client.time()
            except Exception as exc:
                raise self._error(exc) from exc
            self._started = seconds + micros / 1_000_000 - uptime
        return self._started

    def _error(self, exc: Exception) -> BudgetStoreError:
        self._started = None  # reconnected, it may be another start
        return BudgetStoreError(f"{self!r}: {type(exc).__name__}: {exc}")

    def update(self, key: str, change: Change[T]) -> T:
        from redis.exceptions import RedisError

        try:
            return self._update(key, change)
        except RedisError as exc:
            raise self._error(exc) from exc

    def _update(self, key: str, change: Change[T]) -> T:
        from redis.exceptions import WatchError

        name = self.prefix + key
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(name)
                    raw = pipe.get(name)
                    seconds, micros = pipe.time()
                    old = BudgetState.from_json(raw)
                    new, result = change(old, seconds + micros / 1_000_000)
                    pipe.multi()
                    if new != old:
                        pipe.set(name, new.to_json(), ex=REDIS_TTL_SECONDS)
                    pipe.execute()
                    return result
                except WatchError:
                    continue  # another process changed the token's state first: decide again on the new one


SQL_TABLE = "ibflex_token_budget"


class SqlBudgetStore:
    """Budgets in PostgreSQL through SQLAlchemy: any number of processes on any number of machines.

    :param engine: a SQLAlchemy engine for a PostgreSQL database the deployment can write to.
    :param table: the table's name (created on first use).
    """

    started = None  # a database keeps what it committed

    def __init__(self, engine: Any, table: str = SQL_TABLE) -> None:
        import sqlalchemy as sa

        self.engine = engine
        self.table = sa.Table(
            table,
            sa.MetaData(),
            sa.Column("token_key", sa.String(64), primary_key=True),
            sa.Column("state", sa.Text, nullable=False),
        )
        self._ready = False

    def __repr__(self) -> str:
        return (
            f"SqlBudgetStore({self.engine.url.render_as_string(hide_password=True)!r}, {self.table.name!r})"
        )

    def _create_table(self) -> None:
        import sqlalchemy as sa

        try:
            self.table.create(self.engine, checkfirst=True)
        except sa.exc.SQLAlchemyError:
            # Another process created it in the same instant: fine if it is there now.
            if not sa.inspect(self.engine).has_table(self.table.name):
                raise
        self._ready = True

    def update(self, key: str, change: Change[T]) -> T:
        import sqlalchemy as sa

        try:
            return self._update(key, change)
        except sa.exc.DBAPIError as exc:
            raise BudgetStoreError(f"{self!r}: {type(exc).__name__}: {exc.orig}") from exc

    def _update(self, key: str, change: Change[T]) -> T:
        import sqlalchemy as sa

        if not self._ready:
            self._create_table()
        with self.engine.begin() as connection:
            locked = sa.select(self.table.c.state).where(self.table.c.token_key == key).with_for_update()
            raw = connection.execute(locked).scalar_one_or_none()
            if raw is None:
                # First use of the token: create its row; a racing process's row wins and is locked.
                with contextlib.suppress(sa.exc.IntegrityError), connection.begin_nested():
                    connection.execute(sa.insert(self.table).values(token_key=key, state=""))
                raw = connection.execute(locked).scalar_one()
            now = float(
                connection.execute(sa.text("SELECT extract(epoch from clock_timestamp())")).scalar_one()
            )
            old = BudgetState.from_json(raw)
            new, result = change(old, now)
            if new != old:
                update = sa.update(self.table).where(self.table.c.token_key == key)
                connection.execute(update.values(state=new.to_json()))
            return result


def sql_engine_from_connection(conn: Any) -> Any:
    """A SQLAlchemy engine from an Airflow connection of type ``postgres``.

    :param conn: the connection: ``host``, ``port``, ``login``, ``password`` and ``schema`` (the
        database).
    """
    import sqlalchemy as sa

    url = sa.URL.create(
        "postgresql+psycopg2",
        username=conn.login or None,
        password=conn.password or None,
        host=conn.host or "localhost",
        port=int(conn.port) if conn.port else None,
        database=conn.schema or None,
    )
    return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)


def redis_client_from_connection(conn: Any) -> Any:
    """A Redis client from an Airflow connection of type ``redis``.

    :param conn: the connection: ``host``, ``port``, ``login`` (user), ``password``; extras ``db``
        (or the schema) and ``ssl``.
    """
    try:
        import redis
    except ImportError:
        raise ImportError(
            "the Redis rate-limit store needs the redis package: pip install 'airflow-provider-ibflex[redis]'"
        ) from None
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    extra = conn.extra_dejson or {}
    db = extra.get("db", conn.schema or 0)
    return redis.Redis(
        host=conn.host or "localhost",
        port=int(conn.port or 6379),
        db=int(db or 0),
        username=conn.login or None,
        password=conn.password or None,
        ssl=str(extra.get("ssl", "")).lower() in ("1", "true", "yes"),
        socket_timeout=10,
        socket_connect_timeout=10,
        # One immediate retry reconnects a pooled connection the server dropped. Longer outages are
        # waited out by the budget's own backoff, which logs the store and the error: redis-py's
        # default (ten silent, jittered retries) would hide them for seconds.
        retry=Retry(NoBackoff(), 1),
    )


def default_folder() -> Path:
    """``$AIRFLOW_HOME/ibflex/rate-limits``: shared by every Airflow process on the machine."""
    home = os.path.expanduser(os.environ.get("AIRFLOW_HOME", "~/airflow"))
    return Path(home) / "ibflex" / "rate-limits"


def store_from_config(conn_id: str, folder: str, get_connection: Callable[[str], Any]) -> BudgetStore:
    """The store Airflow's configuration names.

    :param conn_id: ``[ibflex] rate_limit_conn_id``: a ``redis`` or ``postgres`` connection for a
        budget shared across machines; empty for the file store.
    :param folder: ``[ibflex] rate_limit_folder``: the file store's folder; empty for the default.
    :param get_connection: how to load a connection (``BaseHook.get_connection``).
    """
    if conn_id.strip():
        conn = get_connection(conn_id.strip())
        if conn.conn_type == "redis":
            return RedisBudgetStore(redis_client_from_connection(conn))
        if conn.conn_type in ("postgres", "postgresql"):
            return SqlBudgetStore(sql_engine_from_connection(conn))
        raise ValueError(
            f"[{SECTION}] rate_limit_conn_id {conn_id!r} is a {conn.conn_type!r} connection; it must be "
            "a 'redis' or 'postgres' connection (or leave it empty for the file store on one machine)"
        )
    return FileBudgetStore(folder.strip() or default_folder())
