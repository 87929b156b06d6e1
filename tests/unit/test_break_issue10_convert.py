"""Issue 10 fault injection on the converter: the bounds on hostile tables (spans clipped, a cell holding a
table never copied by its spans, nested tables in record form) must not drop a page's text from the index.

Found: a nested table is written in record form (`header: value`), and a header cell whose column is empty in
every later row was dropped with its text. With a merged cell that holds a table (not copied by its spans,
so the cells it covers are empty) the whole inner table vanished: nothing of it was searchable.
"""

from __future__ import annotations

import pytest

from app.convert import storage_to_markdown

GROWTH, SLACK = 12, 512  # the converter's growth bound (tests/unit/test_convert_property.py)


def table(*rows: str) -> str:
    return "<table><tbody>" + "".join(f"<tr>{row}</tr>" for row in rows) + "</tbody></table>"


def in_a_cell(inner: str) -> str:
    return table(f"<td>{inner}</td><td>outer</td>")


def merged(inner: str, span: int = 2) -> str:
    """A table whose first cell, merged over `span` rows and columns, holds `inner`."""
    return table(f"<td rowspan='{span}' colspan='{span}'>{inner}</td><td>z</td>", "<td>q</td>")


CASES = {
    # a nested table whose first row's second column is empty below it
    "first-row text over an empty column": (
        in_a_cell(table("<td>alpha</td><td>beta</td>", "<td>gamma</td><td></td>")),
        ["alpha", "beta", "gamma", "outer"],
    ),
    # a merged cell holding a table, inside a table cell
    "table in a merged cell, nested": (in_a_cell(merged(table("<td>SECRET</td>"))), ["SECRET", "z", "q", "outer"]),
    # merged cells two by two, three tables deep (each level's text must survive)
    "merged cells three deep": (
        merged(merged(merged("<p>SECRET</p>"))),
        ["SECRET", "z", "q"],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_nested_and_merged_tables_keep_every_word(name: str) -> None:
    body, words = CASES[name]
    markdown = storage_to_markdown(body)
    missing = [word for word in words if word not in markdown]
    assert missing == [], f"{name}: {missing} dropped from {markdown!r}"
    assert len(markdown) <= GROWTH * len(body) + SLACK


def test_a_header_only_column_costs_the_same_whatever_the_number_of_rows() -> None:
    """The kept header is written once, not once per record: the growth bound is not traded away."""

    def converted(n: int) -> tuple[str, str]:
        # Nine columns: record form at the top level, so no enclosing table rewrites the result.
        head = "<td>Owner</td><td>Notes kept once</td>" + "<td>c</td>" * 7
        rows = [head, *(f"<td>person {i}</td><td></td>" + "<td>v</td>" * 7 for i in range(n))]
        body = table(*rows)
        return body, storage_to_markdown(body)

    (_, few), (body, many) = converted(3), converted(200)
    assert few.count("Notes kept once") == many.count("Notes kept once") >= 1 and "person 199" in many
    assert len(many) <= GROWTH * len(body) + SLACK
