"""The README documents every topic, from the one list in streams/topics.py."""

from __future__ import annotations

from streams import topics
from tests.conftest import ROOT


def test_the_topic_table_lists_every_topic_once() -> None:
    table = topics.markdown_table()
    rows = table.splitlines()[2:]
    assert len(rows) == len(topics.ALL) == len({t.name for t in topics.ALL})
    for spec in topics.ALL:
        kind = spec.name.rsplit(".", 1)[-1]
        assert sum(f"`streambid.{kind}`" in row for row in rows) == 1
    assert "compacted" in table and "30 days" in table


def test_the_readme_names_every_topic() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [f"streambid.{t.name.rsplit('.', 1)[-1]}" for t in topics.ALL
               if f"`streambid.{t.name.rsplit('.', 1)[-1]}`" not in readme]
    assert not missing, f"README.md does not document these topics: {missing} (see streams.topics.markdown_table())"
