"""Markdown table of benchmark rows (dicts), shared by the bench scripts."""
from __future__ import annotations


def print_markdown_table(rows: list[dict], columns: list[str], key: str = "clip") -> None:
    """One row per dict; floats with 2 decimals, missing values as '-', failed rows as `error: ...`."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        if "error" in row:
            print(f"| {row[key]} | error: {row['error']} |")
            continue
        cells = []
        for column in columns:
            value = row.get(column)
            cells.append("-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value))
        print("| " + " | ".join(cells) + " |")
