"""Every `face2hbe ...` command the docs show parses with the real command tree: each subcommand and flag exists,
flags that take a value get one, choices are valid (issue #26, docs that run).

Commands come from README.md and docs/*.md: code blocks (fenced or indented, `\\` continuations joined, shell
comments and the rest of a pipeline dropped) and inline code spans that start with `face2hbe `. They are parsed
with click (`make_context`, resilient_parsing=False), never run. Notation is read as notation: `<name>` is one
value, an upper-case word (N, RUN_DIR, URL) a value of the parameter's type, `[--flag value]` is the flag,
`[options]` is nothing, and a COMMAND placeholder stands for every command.
An inline span may name a command or flag without a whole command line (`face2hbe serve --host`): a missing
argument or value is fine there, an unknown flag or command is not. Paths need not exist here.
"""

from __future__ import annotations

import re
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from markdown_it import MarkdownIt

from face2hbe.app.cli import cli

from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ";;", "(", ")", "<", ">", ">>", "2>", "2>&1", "|&"}
PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>")  # <photo>, <run dir>: one value (a redirect `< file` has a space)
COMMAND_WORD = re.compile(r"(?<![\w\"'./-])face2hbe(?=\s|$)")  # the program, not "face2hbe" in quotes or a path
METAVAR = re.compile(r"[A-Z][A-Z0-9_]*")  # N, RUN_DIR, URL (and <...> as PLACEHOLDER): any value of the right type


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line
    args: tuple[str, ...]  # after `face2hbe`
    inline: bool  # from an inline code span (may be partial) rather than a code block

    def __str__(self) -> str:
        return f"{self.where}: face2hbe {' '.join(self.args)}"


def _notation(text: str) -> str:
    """Usage notation to plain words: <x> -> X, [--flag v] -> --flag v, [options] -> nothing."""
    text = PLACEHOLDER.sub("PLACEHOLDER", text)
    text = re.sub(r"\[\s*(-[^\[\]]*)\]", r"\1", text)
    return re.sub(r"\[[^\[\]]*\]", " ", text)


def _shell_words(line: str) -> list[str]:
    lexer = shlex.shlex(_notation(line), posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True  # words as the shell splits them: `--url=x:1` is one, `a|b` three
    lexer.commenters = "#"
    return list(lexer)


def _commands_in_code(line: str) -> list[list[str]]:
    """The argument lists after each `face2hbe` word of a shell line, up to the next shell operator."""
    if not COMMAND_WORD.search(line):
        return []  # other commands' lines (curl with JSON, protobuf text) are not read as notation
    words, found = _shell_words(line), []
    for i, word in enumerate(words):
        if word == "face2hbe" and not (i and words[i - 1].startswith("-") and words[i - 1] != "--"):
            # (`kubectl -n face2hbe`: an option's value; `ray job submit -- face2hbe ...`: the program)
            args, rest = [], words[i + 1 :]
            for n, arg in enumerate(rest):
                if arg in SHELL_OPERATORS or arg.startswith((">", "<", "|", "&", ";")):
                    break
                if arg.isdigit() and n + 1 < len(rest) and rest[n + 1].startswith((">", "<")):
                    break  # `2>&1`, `2> log`: a redirect's file descriptor
                args.append(arg)
            found.append(args)
    return found


def _joined(content: str) -> list[tuple[int, str]]:
    """(offset of the first line, logical line) with backslash continuations joined."""
    lines, start, pending = [], 0, ""
    for n, line in enumerate(content.splitlines()):
        if not pending:
            start = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((start, pending + line))
        pending = ""
    if pending:
        lines.append((start, pending))
    return lines


def _line_of(lines: list[str], span: str, start: int, end: int) -> int:
    """The 0-based line where an inline code span starts, from `start` on (a span may wrap onto the next lines)."""
    head = "`" + " ".join(span.split()[:2])  # `face2hbe serve
    return next((n for n in range(start, end) if head in lines[n]), start)


def doc_commands(path: Path) -> list[DocCommand]:
    found = []
    text = path.read_text()
    lines = text.splitlines()
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    for token in MarkdownIt("commonmark").parse(text):
        first = (token.map or (0, 0))[0] + 1
        if token.type in ("fence", "code_block"):
            if token.type == "fence" and token.info.strip() not in ("", "sh", "bash", "shell", "console", "text"):
                continue  # JSON, YAML, protobuf text: no shell commands
            skip = 1 if token.type == "fence" else 0
            for offset, line in _joined(token.content):
                for args in _commands_in_code(line):
                    found.append(DocCommand(f"{name}:{first + skip + offset}", tuple(args), inline=False))
        elif token.type == "inline":
            cursor = token.map[0]  # spans in order: each is looked for from the line of the one before
            for child in token.children or ():
                if child.type == "code_inline" and child.content.startswith("face2hbe "):
                    cursor = _line_of(lines, child.content, cursor, token.map[1])
                    for args in _commands_in_code(child.content):
                        found.append(DocCommand(f"{name}:{cursor + 1}", tuple(args), inline=True))
    return found


ALL = [command for path in DOCS for command in doc_commands(path)]


@pytest.fixture
def notation(monkeypatch):
    """Docs name example paths (runs/celeba, photos/): parse them as paths without looking at the disk. A metavar
    (N, RUN_DIR) stands for a value of the parameter's type: it is not converted."""
    convert, cast = click.Path.convert, click.Parameter.type_cast_value

    def without_existence(self, value, param, ctx):
        exists, self.exists = self.exists, False
        try:
            return convert(self, value, param, ctx)
        finally:
            self.exists = exists

    def metavars_as_they_are(self, ctx, value):
        values = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, str) and METAVAR.fullmatch(v) for v in values):
            return value
        return cast(self, ctx, value)

    monkeypatch.setattr(click.Path, "convert", without_existence)
    monkeypatch.setattr(click.Parameter, "type_cast_value", metavars_as_they_are)


def parse(args: tuple[str, ...], partial: bool = False) -> None:
    """Parse `face2hbe ARGS` with the command tree without running it; raises click's error when it does not parse."""
    try:
        group = cli.make_context("face2hbe", list(args), resilient_parsing=False)
    except click.exceptions.Exit:
        return  # --help / --version: answered while parsing
    with warnings.catch_warnings():  # click 8.2+ deprecates protected_args (the command's name) for 9.0
        warnings.simplefilter("ignore", DeprecationWarning)
        rest = [*group.protected_args, *group.args]
    if not rest:
        return  # `face2hbe` alone, or with group options only
    names = sorted(cli.commands) if rest[0] == "COMMAND" else [rest[0]]  # `face2hbe COMMAND --help`
    for name in names:
        _, command, sub = cli.resolve_command(group, [name, *rest[1:]])
        try:
            with command.make_context(name, list(sub), parent=group, resilient_parsing=False):
                pass
        except click.exceptions.Exit:
            pass
        except (click.MissingParameter, click.BadOptionUsage) as exc:
            # An inline span may leave out a required argument or a flag's value; a block may not.
            incomplete = isinstance(exc, click.MissingParameter) or "requires an argument" in exc.format_message()
            if not (partial and incomplete):
                raise


def test_the_docs_show_commands():
    """The extraction finds the commands it must (or every check below passes on nothing)."""
    shown = {(c.args[0] if c.args else "") for c in ALL}
    assert {"train", "export", "promote", "serve", "recommend", "batch", "evaluate", "bench", "loadtest"} <= shown
    assert len(ALL) >= 60
    assert any(c.inline for c in ALL) and any(not c.inline for c in ALL)
    continued = [c for c in ALL if c.where.startswith("docs/training.md") and "--output" in c.args]
    assert continued, "a command continued with `\\` on the next line is read as one"


@pytest.mark.parametrize("command", ALL, ids=str)
def test_doc_command_parses(command: DocCommand, notation):
    try:
        parse(command.args, partial=command.inline)
    except click.UsageError as exc:
        pytest.fail(f"{command}\n  does not parse: {exc.format_message()}")


@pytest.mark.parametrize(
    "args, partial",
    [
        (("serve", "--int8"), False),  # a flag that does not exist
        (("serve", "--precision", "int9"), False),  # a value outside the choices
        (("servez",), False),  # a command that does not exist
        (("export", "runs/a", "runs/b"), False),  # an extra argument
        (("serve", "--host"), False),  # a flag without its value, in a block
        (("serve", "--int8"), True),  # unknown flags are wrong inline too
        (("serve", "--precision", "int8", "--threads", "one"), False),  # a value of the wrong type
    ],
)
def test_wrong_commands_fail(args, partial, notation):
    with pytest.raises(click.UsageError):
        parse(args, partial)


def test_a_wrong_command_in_a_doc_is_found(tmp_path, notation):
    doc = tmp_path / "wrong.md"
    doc.write_text(
        "# Serving\n\nStart it:\n\n```sh\nface2hbe serve \\\n  --int8 &\n```\n\n"
        "or in one go with `face2hbe serve\n--precision int9`, then `face2hbe recommend photos/ --url <url>`.\n"
    )
    found = doc_commands(doc)
    assert [(c.where, c.args, c.inline) for c in found] == [
        ("wrong.md:6", ("serve", "--int8"), False),
        ("wrong.md:10", ("serve", "--precision", "int9"), True),
        ("wrong.md:11", ("recommend", "photos/", "--url", "PLACEHOLDER"), True),
    ]
    for command in found[:2]:
        with pytest.raises(click.UsageError):
            parse(command.args, command.inline)
    parse(found[2].args, found[2].inline)


def test_notation_and_shell_are_read_as_such():
    assert _commands_in_code("face2hbe serve [--precision fp32] [--graph plain]  # INT8 by default") == [
        ["serve", "--precision", "fp32", "--graph", "plain"]
    ]
    assert _commands_in_code("make kserve-node && face2hbe serve & sleep 5; face2hbe recommend <photo> > out") == [
        ["serve"],
        ["recommend", "PLACEHOLDER"],
    ]
    assert _commands_in_code("face2hbe batch PHOTOS --url URL --jsonl OUT.jsonl [options]") == [
        ["batch", "PHOTOS", "--url", "URL", "--jsonl", "OUT.jsonl"]
    ]
    assert _commands_in_code("face2hbe serve --threads 2 2>&1 | tee log") == [["serve", "--threads", "2"]]
    assert _commands_in_code("kubectl -n face2hbe get pods") == _commands_in_code('model_name: "face2hbe"') == []
    assert _commands_in_code("ray job submit -- face2hbe batch m.parquet --output N") == [
        ["batch", "m.parquet", "--output", "N"]
    ]
    assert _joined("ray job submit -- \\\n  face2hbe batch x \\\n  --output y\nnext") == [
        (0, "ray job submit --    face2hbe batch x    --output y"),
        (3, "next"),
    ]


def test_no_doc_or_source_mentions_an_int8_flag():
    """There is no `--int8` flag (INT8 is `face2hbe serve --precision int8`, the CPU default): as
    `grep -rn -- --int8 README.md docs src` would, every file is read, binary ones included."""
    files = [
        ROOT / "README.md",
        *(p for top in ("docs", "src") for p in sorted((ROOT / top).rglob("*")) if p.is_file()),
    ]
    found = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in files
        for n, line in enumerate(p.read_bytes().splitlines(), 1)
        if b"--int8" in line
    ]
    assert len(files) > 20 and found == []
