"""The shell commands a markdown text (or a config file's comments) shows, read as bash would pass them: the lines
of fenced code blocks (their shell variables filled in) and of inline code spans, `{a,b}` brace-expanded, placeholders
with a space (`<run dir>`) kept as one word. Used by tests/test_docs.py (composes or parses them) and
tests/test_readme_commands.py (runs them)."""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

ENTRY = ("python", "-m", "reptile_exp.train")
SEPARATORS = ("&&", "||", "|", ";", "&")


def brace_expand(line: str) -> str:
    """bash's brace expansion of the unquoted `{a,b,...}` in a line: `x={true,false}` -> `x=true x=false`."""
    words, word, quote = [], "", None
    for ch in line:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch.isspace():
            words.append(word)
            word = ""
            continue
        word += ch
    words.append(word)
    out = []
    for word in words:
        match = re.search(r"\{([^{}'\"]*,[^{}'\"]*)\}", word) if "'" not in word and '"' not in word else None
        while match:  # one brace group at a time, left to right, as bash
            alternatives = [word[: match.start()] + alt + word[match.end() :] for alt in match[1].split(",")]
            word = " ".join(alternatives)
            match = re.search(r"\{([^{}'\"]*,[^{}'\"]*)\}", word)
        out.append(word)
    return " ".join(out)


def block_lines(block: str) -> list[str]:
    """The command lines of a fenced code block, its shell variables filled in (one line per loop value)."""
    block = block.replace("\\\n", " ")
    assigned = dict(re.findall(r'^\s*(\w+)="([^"]*)"\s*$', block, flags=re.M))
    loops = dict(re.findall(r"for (\w+) in ([^;]+); do", block))
    lines = []
    for line in block.splitlines():
        for name, value in assigned.items():
            line = re.sub(rf"\$\{{{name}\}}|\${name}\b", value, line)
        used = [name for name in loops if re.search(rf"\$\{{{name}\}}|\${name}\b", line)]
        for values in itertools.product(*(loops[name].split() for name in used)):
            filled = line
            for name, value in zip(used, values):
                filled = re.sub(rf"\$\{{{name}\}}|\${name}\b", value, filled)
            lines.append(filled)
    return lines


def shell_lines(text: str) -> list[str]:
    """The lines of a markdown text a reader may run: those of fenced code blocks and of inline code spans (which may
    run over a line break)."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    lines = [line for block in blocks for line in block_lines(block)]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return lines + [span.replace("\n", " ") for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", prose)]


def shell_words(line: str) -> list[str]:
    """A line's words as bash passes them (a placeholder with a space, `<run dir>`, stays one word)."""
    line = re.sub(r"<[^<>]*>", lambda m: m[0].replace(" ", "\0"), line)
    return [w.replace("\0", " ") for w in shlex.split(brace_expand(line), comments=True)]


def until_separator(words: list[str], start: int) -> list[str]:
    return words[start : next((i for i in range(start, len(words)) if words[i] in SEPARATORS), len(words))]


def doc_commands(text: str) -> list[list[str]]:
    """The train commands of a markdown text (shell_lines), each cut at `&&`, `|` or `;`, in order, without repeats."""
    commands: list[list[str]] = []
    for line in shell_lines(text):
        if "reptile_exp.train" not in line:
            continue
        words = shell_words(line)
        for start in range(len(words)):
            torchrun = words[start] == "torchrun" and "reptile_exp.train" in words[start:]
            if torchrun or tuple(words[start : start + 3]) == ENTRY:
                command = until_separator(words, start)
                if command not in commands:
                    commands.append(command)
    return commands


def script_commands(text: str) -> list[tuple[str, list[str]]]:
    """(name, arguments) of every `python scripts/<name>.py ...` of a markdown text (shell_lines), in order, without
    repeats."""
    commands: list[tuple[str, list[str]]] = []
    for line in shell_lines(text):
        words = shell_words(line) if "scripts/" in line else []
        for start in range(1, len(words)):
            name = re.fullmatch(r"scripts/(\w+)\.py", words[start])
            if name and words[start - 1] in ("python", "python3"):
                command = (name[1], until_separator(words, start + 1))
                if command not in commands:
                    commands.append(command)
    return commands


def conf_comments(path: Path) -> str:
    """The commands in a config file's comments (`#   python -m reptile_exp.train ...   (a note)`), as a markdown code
    block: each from `python` to the first gap of two spaces, ` (` or backtick."""
    comments = [line.partition("#")[2] for line in path.read_text().splitlines()]
    found = [re.search(r"python3? (?:-m reptile_exp\.train|scripts/).*", comment) for comment in comments]
    return "```\n" + "".join(re.split(r"\s{2,}| \(|`", m[0])[0] + "\n" for m in found if m) + "```\n"
