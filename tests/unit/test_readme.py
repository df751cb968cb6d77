"""The README's configuration table is generated from the config models: keep them in sync."""

from __future__ import annotations

from pathlib import Path

from recicl.config import reference_markdown

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def test_readme_config_table_is_current():
    text = README.read_text()
    block = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert block == reference_markdown(), (
        "README config table is stale: run `python tests/unit/test_readme.py` to rewrite it"
    )


def rewrite() -> None:
    text = README.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(f"{head}{START}\n{reference_markdown()}\n{END}{tail}")


if __name__ == "__main__":
    rewrite()
