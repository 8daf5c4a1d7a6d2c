"""DuckDB's errors as :class:`QueryError`: its message on one line, and where in the SQL it points.

DuckDB reports a position only inside its message text (``LINE 2: ...`` followed by a caret line,
the excerpt cut with ``...`` around long lines); this module reads it back into ``line``,
``column`` (both from 1) and ``position`` (characters from the start of the SQL, from 0), so a
client can underline the mistake. Errors that surface through an Arrow stream arrive as plain
``OSError``/``ArrowException`` with DuckDB's text, and are read the same way.
"""

from __future__ import annotations

import re
from typing import Any

from ironwatch.errors import QueryError

_EXCERPT = re.compile(r"\n\s*LINE (\d+): ?(.*)\n( *)\^+[^\n]*", re.DOTALL)
_KIND = re.compile(r"^([A-Z][A-Za-z ]*?) Error: ")
_OUT_OF_MEMORY = "Out of Memory Error"


def locate(sql: str, message: str) -> dict[str, int]:
    """``{"line", "column", "position"}`` of the caret in a DuckDB message; empty when it has none."""
    found = _EXCERPT.search(message)
    if found is None:
        return {}
    line_no = int(found.group(1))
    prefix = f"LINE {found.group(1)}: "
    shown = found.group(2).split("\n", 1)[0]
    caret = len(found.group(3)) - len(prefix)
    lines = sql.split("\n")
    if not 1 <= line_no <= len(lines) or caret < 0:
        return {}
    text = lines[line_no - 1]
    start = 0
    if shown.startswith("..."):
        # A long line is shown from somewhere in its middle: find where the shown part begins.
        core = shown[3:]
        core = core[:-3] if core.endswith("...") else core
        start = text.find(core)
        if start < 0:
            return {}
        caret -= 3
    column = _index_at_width(text, start, caret)
    if column is None:
        return {}
    position = sum(len(x) + 1 for x in lines[: line_no - 1]) + column
    return {"line": line_no, "column": column + 1, "position": position}


def _index_at_width(text: str, start: int, width: int) -> int | None:
    """The index of the character ``width`` display columns after ``start``: DuckDB draws tabs 0 wide."""
    index = start
    while index < len(text) and (width > 0 or text[index] == "\t"):
        if text[index] != "\t":
            width -= 1
        index += 1
    return index if width == 0 else None


def kind(message: str, exc: BaseException) -> str:
    """DuckDB's name of the error (``ParserException``), from the exception or from its text."""
    name = type(exc).__name__
    if name.endswith("Exception") and type(exc).__module__.startswith(("duckdb", "_duckdb")):
        return name
    found = _KIND.match(message)
    return found.group(1).title().replace(" ", "") + "Exception" if found else name


def translate(exc: BaseException, sql: str, *, memory_limit: str | None = None) -> QueryError:
    """A 400-style :class:`QueryError` for an error DuckDB raised while running ``sql``."""
    text = str(exc).strip()
    where = locate(sql, text)
    summary = _EXCERPT.sub("", text).strip()
    details: dict[str, Any] = {"duckdb": kind(text, exc), **where}
    if summary.startswith(_OUT_OF_MEMORY):
        # DuckDB's advice (a persistent database, a temporary directory) is not the analyst's to take.
        first = summary.splitlines()[0]
        limit = f" of {memory_limit}" if memory_limit else ""
        message = (
            f"the query needs more memory than its limit{limit} (query.memory_limit); "
            f"filter or aggregate more, or select fewer columns ({first})"
        )
        return QueryError(message, {**details, "memory_limit": memory_limit})
    message = " ".join(part.strip() for part in summary.splitlines() if part.strip())
    if where:
        message += f" (line {where['line']}, column {where['column']})"
    return QueryError(message, details)
