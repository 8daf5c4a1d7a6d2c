"""The lake views are set up per query: those the statement names, or all when it reads the catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lakefiles import readings, sql, write

from ironwatch import lake
from ironwatch.errors import QueryError
from ironwatch.lake import views


def test_a_statement_sets_up_the_views_it_names() -> None:
    names = lambda text: [v.name for v in views.needed(text)]  # noqa: E731
    assert names("SELECT count(*) FROM readings") == ["readings"]
    assert names('select * from "ROLLUP_1M" join rollup_1h using (sensor)') == ["rollup_1m", "rollup_1h"]
    assert names("SELECT 42") == []
    every = [v.name for v in views.LAKE_VIEWS]
    assert names("SELECT * FROM information_schema.tables") == every
    assert names("SELECT * FROM duckdb_views()") == every
    assert names(None) == every


def test_catalog_queries_and_typing_errors_behave_as_with_every_view(tmp_path: Path) -> None:
    root = lake.open_root(str(tmp_path / "acme"))
    write(root, [readings(np.random.default_rng(1), 10)])
    tables = sql(root, "SELECT table_name FROM information_schema.tables ORDER BY 1")
    assert [t[0] for t in tables] == sorted(v.name for v in views.LAKE_VIEWS)
    with pytest.raises(QueryError, match='Did you mean "readings"'):
        sql(root, "SELECT * FROM reading")
    assert sql(root, "SELECT count(*) FROM readings") == [(10,)]
