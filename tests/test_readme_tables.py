"""The README's Meta-World tables are the committed JSON, printed by bench/readme_tables.py (reads JSON only)."""

from __future__ import annotations

import json

import pytest

from bench import readme_tables as rt


def test_readme_holds_the_generated_block() -> None:
    block = rt.readme_block(rt.README.read_text())
    assert block is not None, "README.md lost its generated Meta-World block"
    assert block == rt.markdown(), "README.md differs from `python -m bench.readme_tables`: paste its output in"


@pytest.mark.parametrize("column", [c for c in (*rt.COLUMNS, *rt.UNNAMED_COLUMNS) if len(c.sources) == 1], ids=lambda c: c.header)
def test_single_source_means_equal_the_json(column) -> None:
    """Where a column reads one file, its split means are the ones that file's bench wrote."""
    (src,) = column.sources
    tasks = rt.TASKS if column in rt.COLUMNS else rt.UNNAMED
    stored = json.loads((rt.RESULTS / src.file).read_text())["split_means_pct"][dict(src.match)["policy"]]
    assert rt.split_means(column.cells(tasks)) == pytest.approx(stored)


def test_every_cell_is_filled_and_mixed_columns_tag_each_cell() -> None:
    for column in rt.COLUMNS:
        found = column.cells(rt.TASKS)
        assert set(found) == set(rt.TASKS), f"{column.header}: no row for {set(rt.TASKS) - set(found)}"
        if len({s.tag for s in column.sources}) > 1:
            lines = rt.task_table((column,), rt.TASKS)[2:]
            assert all(line.rstrip(" |").endswith("]") for line in lines), lines
