"""What the README states about commands, topics, alerts and recording rules holds for the project as it is."""

from __future__ import annotations

import argparse
import re
import shlex

import yaml

from bidder.cli import build_parser
from streams import topics
from tests.conftest import ROOT

README = ROOT / "README.md"
RULES = ROOT / "deploy" / "prometheus" / "rules"


def readme() -> str:
    return README.read_text()


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, re.S)


def commands() -> dict[tuple[str, ...], set[str]]:
    """Every command path of the CLI (`()`, `("serve",)`, `("campaign", "set")`, …) and the options it takes."""
    tree: dict[tuple[str, ...], set[str]] = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        tree[path] = {s for a in parser._actions for s in a.option_strings}
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, path + (name,))

    walk(build_parser(), ())
    return tree


def readme_command_lines(text: str) -> list[str]:
    """The `streambid` command lines of the README's code blocks and inline code, without comments."""
    lines = [line for block in code_blocks(text) for line in block.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`((?:\.venv/bin/)?streambid [^`]*)`", text)
    out = []
    for line in lines:
        line = line.split(" #", 1)[0].strip()
        line = re.sub(r"^(?:[A-Z_]+=\S+ )+", "", line)  # an environment set for the one command
        if re.match(r"(?:\.venv/bin/)?streambid\b", line):
            out.append(line)
    return out


def test_the_readme_opens_with_the_two_set_up_commands() -> None:
    first = code_blocks(readme())[0]
    assert [line.split("#", 1)[0].strip() for line in first.splitlines()] == ["make demo", "make test"]


def test_every_option_the_readme_gives_a_command_is_one_it_takes() -> None:
    tree = commands()
    checked, wrong = 0, []
    lines = readme_command_lines(readme())
    while lines:
        line = lines.pop()
        words = shlex.split(line)[1:]
        path: tuple[str, ...] = ()
        while words and path + (words[0],) in tree:
            path, words = path + (words[0],), words[1:]
        for word in words:
            if re.match(r"(?:\.venv/bin/)?streambid ", word):  # a command given to another (`--bidder-cmd`)
                lines.append(word)
            option = word.split("=", 1)[0]
            if re.fullmatch(r"--[a-z][a-z0-9-]*", option):
                checked += 1
                if option not in tree[path]:
                    wrong.append(f"streambid {' '.join(path)} {option}  (in: {line})")
    assert checked > 30
    assert not wrong, "README.md gives options these commands do not take:\n" + "\n".join(wrong)


def test_the_readme_topic_table_is_the_generated_one() -> None:
    """The README says its topic table is `topics.markdown_table()`: an edit made to the table alone is lost (or
    wrong) the next time it is generated, so every word of it must come from streams/topics.py."""
    assert topics.markdown_table() in readme()


def github_anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_is_named_in_the_readme_and_its_runbook_link_leads_to_a_heading() -> None:
    text = readme()
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    rules = [r for g in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    assert len(rules) > 10
    for rule in rules:
        named = (f"#### {rule['alert']}\n", f"`{rule['alert']}`", f"*{rule['alert']}*")
        assert any(n in text for n in named), f"README.md does not name {rule['alert']}"
        link = rule["annotations"]["runbook"]
        assert link.startswith("README.md#") and link.split("#", 1)[1] in anchors, (rule["alert"], link)


def test_every_recording_rule_is_named_in_the_readme() -> None:
    """Named as `level:metric:operation`, or with the operation abbreviated (`campaign:streambid_ecpc:…`) once the
    operations were given for the first of a list."""
    text = readme()
    records = [r["record"] for g in yaml.safe_load((RULES / "recording.yml").read_text())["groups"] for r in g["rules"]]
    assert len(records) > 20
    missing = [name for name in records if f"`{name.rsplit(':', 1)[0]}:" not in text]
    assert not missing, f"README.md does not name these recording rules: {missing}"


def test_the_readme_start_sets_every_variable_serve_warns_about() -> None:
    """`serve` warns when STREAMBID_SECRET or STREAMBID_SALT is unset: the README's steps must not lead to a warning."""
    running = readme().split("\n## Running it\n", 1)[1].split("```", 2)[1]
    for var in ("STREAMBID_SECRET", "STREAMBID_SALT"):
        assert re.search(rf"\bexport\b[^\n]*\b{var}=", running), f"README's Running it steps do not set {var}"
