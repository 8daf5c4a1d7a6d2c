"""``ironwatch.Client``: the HTTP API from a notebook, as pandas DataFrames and Arrow tables.

    from ironwatch import Client
    client = Client("http://127.0.0.1:8000", "iw_...")   # or IRONWATCH_URL and IRONWATCH_KEY
    frame = client.query("SELECT sensor, avg(value) FROM readings GROUP BY sensor")

Answers travel as Parquet, so types survive (timestamps come back tz-aware in UTC). Every error is
one of the ironwatch error tree (``QueryError`` for bad SQL, ``Forbidden``, ``Unavailable`` when
the server cannot be reached, ...) with the answer's ``status`` and whether a retry can help.
httpx, pyarrow and pandas are imported when first needed, so ``import ironwatch`` stays light;
without the ``sdk`` extra the error names the pip line.
"""

from __future__ import annotations

import importlib
import os
import time
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ironwatch.arrowfile import arrow_file
from ironwatch.errors import InvalidInput, MissingDependency, QueryError, Unavailable
from ironwatch.remote import error_from_answer

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

FINISHED = frozenset({"succeeded", "failed", "cancelled"})


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(module, "sdk") from exc


def _time(value: str | int | datetime | None, name: str) -> str | None:
    """A time for the API: RFC 3339 text, epoch milliseconds, or a tz-aware datetime."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidInput(name, "a datetime needs a time zone (such as datetime.now(UTC))")
        return value.isoformat()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InvalidInput(name, f"expected RFC 3339 text, epoch milliseconds or a datetime, got {value!r}")


class Client:
    """A connection to an ironwatch server with one API key; close it, or use it in ``with``."""

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout_s: float = 300.0) -> None:
        url = url or os.environ.get("IRONWATCH_URL")
        key = key or os.environ.get("IRONWATCH_KEY")
        if not url:
            raise InvalidInput("url", "give the server's URL, or set IRONWATCH_URL")
        if not key:
            raise InvalidInput("key", "give an API key, or set IRONWATCH_KEY")
        httpx = _require("httpx")
        self.url = url.rstrip("/")
        self._httpx = httpx
        self._http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout_s
        )

    def __repr__(self) -> str:
        return f"Client({self.url!r})"  # never the key

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections to the server."""
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; the ``httpx.Response`` on 2xx, the ironwatch error of the answer otherwise."""
        httpx = self._httpx
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise Unavailable(f"{self.url} did not answer in time ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_answer(response.status_code, response.content)
        return response

    # SQL ---------------------------------------------------------------------------------------
    def query_arrow(self, sql: str) -> pa.Table:
        """The answer of one SELECT as an Arrow table (fetched as Parquet, so types survive).

        Answers over the server's ``query.max_rows`` are refused; :meth:`submit` a job for those.
        """
        pq = _require("pyarrow.parquet")
        response = self.request("POST", "/api/v1/query", json={"sql": sql, "format": "parquet"})
        table: pa.Table = pq.read_table(arrow_file(response.content))
        return table

    def query(self, sql: str) -> pd.DataFrame:
        """The answer of one SELECT as a pandas DataFrame; timestamps are tz-aware (UTC)."""
        _require("pandas")
        frame: pd.DataFrame = self.query_arrow(sql).to_pandas()
        return frame

    def submit(self, sql: str) -> QueryJob:
        """Start a query job for answers of any size; see :class:`QueryJob`."""
        return QueryJob(self, self.request("POST", "/api/v1/queries", json={"sql": sql}).json())

    def job(self, job_id: str) -> QueryJob:
        """A query job of this tenant by id."""
        return QueryJob(self, self.request("GET", f"/api/v1/queries/{job_id}").json())

    def jobs(self, limit: int = 50) -> list[QueryJob]:
        """The tenant's latest query jobs, newest first."""
        doc = self.request("GET", "/api/v1/queries", params={"limit": limit}).json()
        return [QueryJob(self, j) for j in doc["queries"]]

    # series ------------------------------------------------------------------------------------
    def series(
        self,
        site: str,
        sensor: str,
        metric: str,
        start: str | int | datetime | None = None,
        end: str | int | datetime | None = None,
        max_points: int | None = None,
    ) -> pd.DataFrame:
        """One sensor's metric over ``[start, end)`` with at most ``max_points`` points.

        Columns ``ts`` (UTC), ``mean``, ``min``, ``max``, ``count``; ``frame.attrs["resolution"]``
        says whether the points are raw readings or 1-minute or 1-hour buckets. Times are RFC 3339
        text, epoch milliseconds, relative text such as ``"-6h"``, or tz-aware datetimes.
        """
        pd = _require("pandas")
        params: dict[str, str | None] = {"site": site, "sensor": sensor, "metric": metric}
        params |= {"start": _time(start, "start"), "end": _time(end, "end")}
        if max_points is not None:
            params["max_points"] = str(int(max_points))
        doc = self.request("GET", "/api/v1/series", params={k: v for k, v in params.items() if v is not None})
        body = doc.json()
        frame = pd.DataFrame(
            {
                "ts": pd.to_datetime(pd.Series(body["ts"], dtype="int64"), unit="ms", utc=True),
                "mean": pd.Series(body["mean"], dtype="float64"),
                "min": pd.Series(body["min"], dtype="float64"),
                "max": pd.Series(body["max"], dtype="float64"),
                "count": pd.Series(body["count"], dtype="int64"),
            }
        )
        frame.attrs["resolution"] = body.get("resolution")
        return frame


class QueryJob:
    """A query job on the server: ``wait()`` for it, then ``download()`` or ``to_pandas()`` its CSV."""

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
        self.client = client
        self.info = info

    def __repr__(self) -> str:
        return f"QueryJob({self.id!r}, status={self.status!r})"

    @property
    def id(self) -> str:
        return str(self.info["id"])

    @property
    def status(self) -> str:
        """As last seen: queued, running, succeeded, failed or cancelled (:meth:`refresh` asks again)."""
        return str(self.info["status"])

    def refresh(self) -> QueryJob:
        """Ask the server for the job's current state."""
        self.info = self.client.request("GET", f"/api/v1/queries/{self.id}").json()
        return self

    def wait(self, timeout_s: float | None = None) -> QueryJob:
        """Wait until the job has finished; :class:`QueryError` if it failed or was cancelled."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pause = 0.05
        while self.refresh().status not in FINISHED:
            if deadline is not None and time.monotonic() >= deadline:
                raise Unavailable(f"query {self.id} is still {self.status} after {timeout_s:g} s")
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
        if self.status != "succeeded":
            error = self.info.get("error") or {}
            details = {**error.get("details", {}), "query": self.id}
            raise QueryError(
                f"query {self.id} {self.status}: {error.get('message', 'no reason given')}", details
            )
        return self

    def cancel(self) -> QueryJob:
        """Cancel the job if it is queued or running."""
        self.info = self.client.request("DELETE", f"/api/v1/queries/{self.id}").json()
        return self

    def download(self, path: str | Path) -> Path:
        """Save the job's CSV to ``path``, streamed; the file appears only once it is complete."""
        target = Path(path)
        part = target.with_name(f"{target.name}.part")
        httpx = self.client._httpx
        try:
            with self.client._http.stream("GET", f"/api/v1/queries/{self.id}/result") as response:
                if response.status_code >= 400:
                    raise error_from_answer(response.status_code, response.read())
                with part.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
            part.replace(target)
        except httpx.TransportError as exc:
            raise Unavailable(f"{self.client.url} broke off the result of query {self.id}: {exc}") from exc
        finally:
            part.unlink(missing_ok=True)
        return target

    def to_arrow(self) -> pa.Table:
        """The job's CSV read into Arrow (types are inferred from the text)."""
        pacsv = _require("pyarrow.csv")
        response = self.client.request("GET", f"/api/v1/queries/{self.id}/result")
        table: pa.Table = pacsv.read_csv(arrow_file(response.content))
        return table

    def to_pandas(self) -> pd.DataFrame:
        """The job's CSV as a pandas DataFrame."""
        _require("pandas")
        frame: pd.DataFrame = self.to_arrow().to_pandas()
        return frame
