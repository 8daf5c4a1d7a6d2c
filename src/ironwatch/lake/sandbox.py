"""A sandboxed DuckDB of one tenant root: it sees that root's files and nothing else.

A :class:`Sandbox` is locked down when it is made (external access limited to the tenant's own
directories, no extensions, no temporary directory, the configuration locked), so analysts' SQL can
neither read other files nor widen its own access. Its views over the lake are set up per query
(:meth:`Sandbox.prepare`), over the files visible at that moment, so one sandbox can serve many
queries of its tenant one after the other (see :mod:`ironwatch.lake.pool`) and each of them sees
exactly what a brand-new DuckDB would.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping

import duckdb
import pyarrow as pa

from ironwatch.errors import QueryError
from ironwatch.lake import views
from ironwatch.lake.root import Root


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Sandbox:
    """One locked-down in-memory DuckDB over the root at ``url``, serving one query at a time.

    ``is_profiled`` keeps DuckDB's profile of each query in memory (for the bytes it read). The
    Parquet metadata cache is on: a sandbox that is used again parses no footer twice.
    """

    def __init__(self, root: Root, *, memory_limit: str, threads: int = 2, is_profiled: bool = False) -> None:
        self.url = root.url
        self.memory_limit = memory_limit
        self.is_profiled = is_profiled
        self.created_s = time.monotonic()
        self.used_s = self.created_s
        self.queries = 0
        #: The SQL behind each view set up now, by name; what :meth:`prepare` compares against.
        self.views: dict[str, str] = {}
        self._tables: list[str] = []
        self.con = duckdb.connect(":memory:")
        try:
            self.con.execute("SET TimeZone = 'UTC'")
            self.con.execute(f"SET memory_limit = {_quote(memory_limit)}")
            self.con.execute(f"SET threads = {int(threads)}")
            # Footers and page indexes stay parsed between the queries of this sandbox (only its
            # own tenant's files ever enter it); entries are checked against each file's mtime.
            self.con.execute("SET parquet_metadata_cache = true")
            if is_profiled:
                self.con.execute("SET enable_profiling = 'no_output'")
            dirs = [_quote(d) for d in root.duckdb_dirs()]
            # DuckDB lets a connection read its temporary directory (by default .tmp in the server's
            # working directory, shared by every tenant's queries), so queries do not spill to disk.
            self.con.execute("SET temp_directory = ''")
            self.con.execute(f"SET allowed_directories = [{', '.join(dirs)}]")
            self.con.execute("SET enable_external_access = false")
            self.con.execute("SET autoinstall_known_extensions = false")
            self.con.execute("SET autoload_known_extensions = false")
            # Names in SQL must never reach the Python objects of the frame that runs it.
            self.con.execute("SET python_enable_replacements = false")
            self.con.execute("SET lock_configuration = true")
        except duckdb.Error as exc:
            self.con.close()
            raise QueryError(f"cannot open the tenant's lake: {exc}") from exc

    def prepare(self, root: Root, sql: str | None, tables: Mapping[str, pa.Table] | None = None) -> None:
        """Set up the views ``sql`` can use over the files visible now, and register ``tables``.

        Exactly the views of ``views.needed(sql)`` exist afterwards, as in a new DuckDB: the others
        are dropped, so a name built at run time (``query('SELECT * FROM ' || ...)``) cannot reach
        a view that was left over the files of an earlier moment. A view whose files did not change
        is kept as it is (no listing is skipped, only DuckDB's binding).
        """
        if root.url != self.url:  # the pool never lends a sandbox to another root; refuse anyway
            raise QueryError(f"a sandbox of {self.url} cannot serve {root.url}")
        wanted = {view.name: views.view_sql(root, view) for view in views.needed(sql)}
        try:
            for name in [n for n in self.views if n not in wanted]:
                del self.views[name]
                self.con.execute(f"DROP VIEW IF EXISTS {name}")
            for name, text in wanted.items():
                if self.views.get(name) != text:
                    self.views.pop(name, None)  # forgotten first: a failed CREATE leaves no stale entry
                    self.con.execute(f"CREATE OR REPLACE VIEW {name} AS {text}")
                    self.views[name] = text
            for name, table in (tables or {}).items():
                self._tables.append(name)
                self.con.register(name, table)
        except duckdb.Error as exc:
            raise QueryError(f"cannot open the tenant's lake: {exc}") from exc

    def reset(self) -> None:
        """Undo what one query brought: its registered tables, and any ``setseed`` it called.

        A SELECT cannot create, set or prepare anything (``Stream`` runs nothing else); the seed of
        ``random()`` is the one state it can change, so it is drawn again as a new DuckDB draws it.
        """
        self.queries += 1
        self.used_s = time.monotonic()
        try:
            for name in self._tables:
                self.con.unregister(name)
            self.con.execute("SELECT setseed(?)", [random.uniform(-1.0, 1.0)]).fetchall()
        except duckdb.Error as exc:
            raise QueryError(f"cannot reset the sandbox: {exc}") from exc
        finally:
            self._tables.clear()

    def close(self) -> None:
        """Close the DuckDB; its memory goes back."""
        self.con.close()


def connect(
    root: Root,
    *,
    memory_limit: str = "512MB",
    threads: int = 2,
    tables: Mapping[str, pa.Table] | None = None,
    is_profiled: bool = False,
    sql: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """A new sandboxed DuckDB connection with the tenant's views; nothing outside ``root`` is reachable.

    ``tables`` adds in-memory views (such as ``sensors`` from the metadata database) by name; with
    ``sql``, only the lake views that statement can use are set up (see ``views.needed``). The
    caller closes it; queries of the server go through a :class:`~ironwatch.lake.pool.Pool` instead.
    """
    box = Sandbox(root, memory_limit=memory_limit, threads=threads, is_profiled=is_profiled)
    try:
        box.prepare(root, sql, tables)
    except BaseException:
        box.close()
        raise
    return box.con
