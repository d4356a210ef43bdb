"""The docs say what the code does (issue 22): every `python -m reptile_exp.train ...` command of docs/*.md and of
the config files' comments composes and passes the config checks, every `python scripts/<name>.py ...` of them and of
README.md parses with that script's own command line (scripts/benchmark.py's contenders also compose and pass the
checks), every message quoted in docs/troubleshooting.md's tables is one the code prints, and the two reference pages
stay short enough to scan.
(README.md's commands are run, not only composed: tests/test_readme_commands.py.)

A docs command is taken as bash would run it: the shell variables of its code block (`for x in a b; do`,
`name="..."`) filled in, unquoted `{a,b}` brace-expanded; then composed in this process with Hydra's compose API,
once per value of each swept knob (`-m a=1,2`, `range(...)`, `glob(...)`), and checked with `validate`, the checks
`python -m reptile_exp.train` makes before any work. Nothing is trained and no data is read, so commands that need
a cluster, a GPU or the real datasets are composed too.
"""

from __future__ import annotations

import ast
import re
import shlex
from functools import cache

import pytest
from conftest import ROOT, script
from doc_commands import ENTRY, conf_comments, doc_commands, script_commands
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from omegaconf import open_dict, read_write

from reptile_exp import train  # registers the config schema; train.validate: the checks a run makes before any work
from reptile_exp.config import GROUP_RANGES, RANGES

DOCS = sorted((ROOT / "docs").glob("*.md"))
# Placeholders a docs command may hold, and what the composition puts there (any path composes: nothing is read).
PLACEHOLDERS = {
    "<run>": "/placeholder/run_dir",
    "<run dir>": "/placeholder/run_dir",
    "<omniglot dir>": "/placeholder/omniglot",
}
# Flags of the command line that are not overrides.
FLAGS = ("-m", "--multirun", "--help", "--hydra-help")
SWEEPS = (ValueType.SIMPLE_CHOICE_SWEEP, ValueType.CHOICE_SWEEP, ValueType.RANGE_SWEEP)


# ---------------------------------------------------------------------------------------------- the commands


def overrides_of(command: list[str]) -> list[str]:
    """The overrides of a command: its words after `reptile_exp.train`, the flags left out, placeholders filled."""
    words = command[command.index("reptile_exp.train") + 1 :]
    unknown = [w for w in words if w.startswith("-") and w not in FLAGS]
    assert not unknown, f"{shlex.join(command)}: flags this test does not know: {unknown}"
    out = []
    for word in words:
        if word in FLAGS:
            continue
        for placeholder, value in PLACEHOLDERS.items():
            word = word.replace(placeholder, value)
        assert not re.search(r"<[^<>]*>", word), f"{word!r}: a placeholder this test does not know ({PLACEHOLDERS})"
        out.append(word)
    return out


def jobs_of(overrides: list[str]) -> list[list[str]]:
    """The jobs to compose: every value of every swept knob (a range: its first and last) at least once, the other
    knobs at their first value."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    keys = [o.key_or_group for o in parsed]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    assert not repeated, f"{repeated} given twice: Hydra keeps the last, so the command does not do what it shows"
    values = []
    for o, text in zip(parsed, overrides):
        key = text.partition("=")[0]
        if o.value_type in SWEEPS:
            swept = list(o.sweep_string_iterator())
            swept = swept[:: max(len(swept) - 1, 1)] if o.value_type == ValueType.RANGE_SWEEP else swept
            values.append([f"{key}={v}" for v in swept])
        elif o.value_type == ValueType.GLOB_CHOICE_SWEEP:
            options = sorted(p.stem for p in (ROOT / "conf" / o.key_or_group).glob("*.yaml"))
            chosen = o.value().filter(options)
            assert chosen, f"{text}: matches no option of conf/{o.key_or_group}/"
            values.append([f"{key}={v}" for v in chosen])
        else:
            assert not o.is_sweep_override(), f"{text}: a sweep this test cannot enumerate"
            values.append([text])
    first = [v[0] for v in values]
    jobs = [first]
    for i, options in enumerate(values):
        jobs += [[*first[:i], v, *first[i + 1 :]] for v in options[1:]]
    return jobs


@cache
def compose_and_check(overrides: tuple[str, ...]) -> None:
    """Compose as `python -m reptile_exp.train` does and run its checks (`validate`), nothing else."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
        train.validate(cfg)
    finally:
        HydraConfig.instance().cfg = None


CONFS = sorted((ROOT / "conf").rglob("*.yaml"))
SOURCES = {path.name: path.read_text() for path in DOCS} | {
    str(path.relative_to(ROOT)): conf_comments(path) for path in CONFS
}
COMMANDS = [(name, command) for name, text in SOURCES.items() for command in doc_commands(text)]


def test_the_docs_show_train_commands():
    shown = {name for name, _ in COMMANDS}
    assert shown >= {"benchmarks.md", "reproduce.md", "results.md", "sweeps.md", "conf/debug/smoke.yaml"}


@pytest.mark.parametrize(("doc", "command"), COMMANDS, ids=[f"{d}: {' '.join(c)}" for d, c in COMMANDS])
def test_a_docs_command_composes_and_passes_the_config_checks(doc, command):
    for job in jobs_of(overrides_of(command)):
        try:
            compose_and_check(tuple(job))
        except Exception as e:  # noqa: BLE001 - any failure, named with the job
            pytest.fail(f"{doc}: {shlex.join(command)}\njob {shlex.join(job)}: {type(e).__name__}: {e}")


def test_brace_expansion_and_shell_variables_are_read_as_bash_does():
    text = "```bash\nfor t in false true; do\n  python -m reptile_exp.train a=$t x={1,2} 'y={3,4}'\ndone\n```\n"
    assert doc_commands(text) == [
        [*ENTRY, "a=false", "x=1", "x=2", "y={3,4}"],
        [*ENTRY, "a=true", "x=1", "x=2", "y={3,4}"],
    ]
    with pytest.raises(AssertionError, match="given twice"):
        jobs_of(["a=false", "x=1", "x=2"])
    assert jobs_of(["a=1,2", "k=range(1,4)", "b=3"]) == [
        ["a=1", "k=1", "b=3"],
        ["a=2", "k=1", "b=3"],
        ["a=1", "k=3", "b=3"],
    ]


def check_script_command(name: str, args: list[str]) -> None:
    """AssertionError naming the fault unless `python scripts/<name>.py args` parses with the script's command line
    (its flags, choices and value checks); a benchmark also composes and checks the config of every contender."""
    parser = script(name).arguments()

    def refuse(message: str):  # argparse's usage error, raised where the script would print it and exit
        raise AssertionError(f"python scripts/{name}.py {shlex.join(args)}: {message}")

    parser.error = refuse
    parsed = parser.parse_args(args)
    if name == "benchmark":
        bench = script("benchmark")
        for preset in parsed.presets:
            for variant in parsed.variants or bench.DEFAULT_VARIANTS[parsed.device]:
                try:
                    compose_and_check(tuple(bench.contender(preset, parsed.device, parsed.overrides, variant)))
                except Exception as e:  # noqa: BLE001 - any failure, named with the contender
                    raise AssertionError(f"{shlex.join(args)}: {preset}, {variant}: {type(e).__name__}: {e}") from None


SCRIPT_COMMANDS = [
    (doc, name, args)
    for doc, text in {**SOURCES, "README.md": (ROOT / "README.md").read_text()}.items()
    for name, args in script_commands(text)
]


def test_the_docs_show_script_commands():
    assert {name for _, name, _ in SCRIPT_COMMANDS} == {p.stem for p in (ROOT / "scripts").glob("*.py")}


@pytest.mark.parametrize(
    ("doc", "name", "args"), SCRIPT_COMMANDS, ids=[f"{d}: {n}.py {' '.join(a)}" for d, n, a in SCRIPT_COMMANDS]
)
def test_a_docs_script_command_parses(doc, name, args):
    try:
        check_script_command(name, args)
    except AssertionError as e:
        pytest.fail(f"{doc}: {e}")


@pytest.mark.parametrize(
    ("name", "args", "fault"),
    [
        ("benchmark", ["--repetitions", "3"], "unrecognized arguments: --repetitions"),
        ("benchmark", ["--variants", "plain", "bmm+fp8"], "bmm+fp8: each part must be one of"),
        ("benchmark", ["--presets", "omniglot", "--overrides", "inner_lr=-1"], "inner_lr=-1.0 is invalid"),
        ("benchmark", ["--presets", "sine", "--overrides", "compile=fast"], "ConfigCompositionException"),
        ("gpu_check", ["--plan", "benchmark=soon"], "give STEP=SECONDS"),
        ("study", ["outputs/x", "--plot", "ks"], "invalid choice: 'ks'"),
        ("summarize_sweep", [], "the following arguments are required: sweep_dirs"),
    ],
)
def test_the_script_check_catches_a_wrong_flag_value_or_override(name, args, fault):
    with pytest.raises(AssertionError, match=re.escape(fault)):
        check_script_command(name, args)


SCRIPTS = sorted(p.stem for p in (ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_numeric_flag_of_a_script_has_a_range(name):
    """A count or budget given as 0, -1, nan or inf was taken as given (`--eval-repeats 0`: a traceback after the
    timing); every numeric flag parses with cli.at_least, which refuses what lies below its bound or is not finite."""
    parser = script(name).arguments()
    numeric = [
        a for a in parser._actions if a.type in (int, float) or getattr(a.type, "__name__", "") in ("int", "float")
    ]
    for action in numeric:
        flag = action.option_strings[0] if action.option_strings else action.dest
        assert action.type not in (int, float), f"scripts/{name}.py {flag}: give it a range (cli.at_least)"
        for bad in ("-1", "nan", "inf", "x"):
            with pytest.raises(Exception, match="give a finite number|is not"):
                action.type(bad)


def test_benchmark_refuses_more_eval_rounds_than_rounds(capsys):
    with pytest.raises(SystemExit):
        script("benchmark").main(["--presets", "sine", "--repeats", "1", "--eval-repeats", "2"])
    assert "--eval-repeats 2: at most --repeats (1)" in capsys.readouterr().err


# -------------------------------------------------------------------------------- the messages of troubleshooting.md

DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# In a quoted message: `...` (and the start and end of the line) stand for any text; a placeholder (<file>) for a value.
# In a template: a value the code fills in ({path}, %s).
STAR, VALUE, HOLE = "\1", "\3", "\2"
# Text in the quoted messages that comes from a library, not from reptile_exp: the library's words as a template.
LIBRARY = {
    "Value \2 of type \2 could not be converted to Integer": "OmegaConf, a value of the wrong type",
    "Invalid value \2, expected one of [\2]": "OmegaConf, a value outside an Enum's options",
    "no viable alternative at input \2": "Hydra's override parser",
    "Interpolation key \2 not found": "OmegaConf, an interpolation that points nowhere",
    "Error locating target \2": "Hydra's instantiate, a _target_ that does not import",
    "Error in call to target \2": "Hydra's instantiate, a _target_ that raised",
    "\2 unexpected keyword argument \2": "Python, a key the _target_ does not take",
    "No space left on device": "the OS's strerror (ENOSPC)",
    "Nesterov momentum requires a momentum and zero dampening": "torch.optim.SGD's own check",
}


def _templates_of(node: ast.AST) -> str | None:
    """A string expression as a template: its literal text, each value it fills in as HOLE."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.sub(r"%[-#0 +]*\d*(?:\.\d+)?[sdrfgi]", HOLE, node.value)  # a logging call's %s, %d, %.4g
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else HOLE for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _templates_of(node.left), _templates_of(node.right)
        if left is not None or right is not None:
            return (left or HOLE) + (right or HOLE)
    return None


@cache
def code_templates() -> tuple[str, ...]:
    """Every string the package and its sweeper plugin can print, as templates: their string literals, f-strings and
    `+` sums, and the ranges a message names (`an integer >= 1`: config.Range's text)."""
    found = set(LIBRARY) | {str(r) for r in [*RANGES.values(), *(r for g in GROUP_RANGES.values() for r in g.values())]}
    for path in sorted([*(ROOT / "reptile_exp").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]):
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, DOCUMENTED) and ast.get_docstring(n)}
        for node in ast.walk(tree):
            template = None if id(node) in docstrings else _templates_of(node)
            if template and " " in template and len(template.replace(HOLE, "")) >= 4:  # not a key or a name
                found.add(template)
    return tuple(sorted(found))


@cache
def _is_value(text: str) -> bool:
    """Text a template's hole may hold without a template of its own: one word (a path, a number, `key=value`, a
    placeholder), a list `a, b`, and brackets, parentheses or quotes holding what they like (`[64, 0]`, `'a b'`)."""
    for pattern in (r"\([^()]*\)", r"\[[^\[\]]*\]", r"'[^']*'", r'"[^"]*"'):
        for _ in range(3):  # nested brackets
            text = re.sub(pattern, "x", text)
    return not re.search(r"\s", re.sub(r"(?<=\S), (?=\S)", ",", text))


def printed_by_the_code(message: str) -> bool:
    """Whether the code can print a line that holds `message`, its key phrase: the phrase matches a template whose
    literal text it keeps, in order, where each value filled in is a plain value (_is_value) or itself matches a
    template. A placeholder (<file>) stands for a value; `...` for any part of a template (values or words left
    out); the phrase may leave out the start and the end of the line."""
    literal = {p for p in re.findall(r"<[^<>]*>", message) if any(p in t for t in code_templates())}
    doc = re.sub(r"<[^<>]*>", lambda m: m[0] if m[0] in literal else VALUE, message)  # <file or run dir> is literal
    doc = STAR + re.sub(r"\s*\.\.\.", STAR, doc) + STAR
    templates = [(t, words, shape) for t, words, shape in _chunked_templates() if any(w in doc for w in words)]

    @cache
    def span_matches(start: int, end: int) -> bool:
        text = doc[start:end]
        if STAR in text:
            return any(matches(start, end, t) for t, words, _ in templates if any(w in text for w in words))
        return any(matches(start, end, t) for t, _, shape in templates if shape.fullmatch(text))  # quicker, exact

    @cache
    def matches(start: int, end: int, template: str) -> bool:
        """A walk over (position in the span, position in the template), from the start of both to their ends."""
        for first, last in ((template[0], doc[start]), (template[-1], doc[end - 1])):
            if first != HOLE and last not in (first, STAR):
                return False
        seen, todo = set(), [(start, 0)]
        while todo:
            i, j = todo.pop()
            if (i, j) in seen:
                continue
            seen.add((i, j))
            if j == len(template) and all(c == STAR for c in doc[i:end]):
                return True
            if i < end and doc[i] == STAR:  # a placeholder: stands for nothing more, or for the template's next item
                todo += [(i + 1, j)] + ([(i, j + 1)] if j < len(template) else [])
            if j == len(template):
                continue
            if template[j] == HOLE:  # a value, or a part built from another template (a shorter span, not after `...`)
                after = template[j + 1 : j + 2]
                for k in range(i, end + 1):
                    if after in ("", HOLE) or (k < end and doc[k] in (after, STAR)):
                        fill = doc[i:k]
                        if _is_value(fill) or (k - i < end - start and fill[:1] != STAR and span_matches(i, k)):
                            todo.append((k, j + 1))
            elif i < end and doc[i] == template[j]:
                todo.append((i + 1, j + 1))
        return False

    return span_matches(0, len(doc))


@cache
def _chunked_templates() -> tuple[tuple[str, tuple[str, ...], re.Pattern], ...]:
    """Each template with its words of 3 letters or more (a span is tried against a template holding one of them)
    and its shape, a regex of its literal text with any text in its holes (for a span without `...`)."""
    return tuple(
        (t, tuple(set(re.findall(r"[A-Za-z]{3,}", t))), re.compile(".*".join(map(re.escape, t.split(HOLE))), re.S))
        for t in code_templates()
    )


def troubleshooting_messages() -> list[str]:
    """The code spans of the first column of every table whose header starts `| message (key phrase) |`."""
    messages, in_table = [], False
    for line in (ROOT / "docs" / "troubleshooting.md").read_text().splitlines():
        if line.startswith("| message (key phrase) |"):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        elif in_table and not line.startswith("|---"):
            messages += re.findall(r"`([^`]+)`", line.split(" | ")[0])
    return messages


MESSAGES = troubleshooting_messages()


def test_troubleshooting_quotes_messages():
    assert len(MESSAGES) >= 50


@pytest.mark.parametrize("message", MESSAGES)
def test_a_quoted_message_is_one_the_code_prints(message):
    assert printed_by_the_code(message), f"docs/troubleshooting.md quotes {message!r}; the code prints no such line"


def test_the_message_matcher_tells_a_reworded_message_from_a_real_one():
    assert printed_by_the_code("checkpoint <file> cannot be loaded: ...")
    assert printed_by_the_code("diverged at iteration 7: the inner-loop loss (nan) is not finite; ...")
    assert not printed_by_the_code("checkpoint <file> could not be loaded: ...")  # reworded
    assert not printed_by_the_code("diverged at iteration 7: the outer loss (nan) is not finite; ...")  # no such part
    assert not printed_by_the_code("k=0 is invalid: must be a whole number")  # a reason the code never gives


def test_the_ranges_troubleshooting_lists_are_the_checks():
    """The fix column of the `k=0 is invalid` row lists every numeric knob's range as config.RANGES has it."""
    row = next(
        line for line in (ROOT / "docs" / "troubleshooting.md").read_text().splitlines() if "`k=0 is invalid" in line
    )
    listed = {"epsilon_final"}  # the next row's
    for part in row.split(" | ")[2].split(";"):
        found = re.fullmatch(r"\s*(?:the ranges: )?((?:`\w+`(?:, )?)+) (>=|>) (\d+)\s*", part)
        for key in re.findall(r"`(\w+)`", found[1]) if found else []:
            allowed = RANGES[key]
            assert (allowed.low, allowed.low_open, allowed.high) == (int(found[3]), found[2] == ">", None), key
            listed.add(key)
        both = re.fullmatch(r"\s*`(\d+) (<=?) (\w+) (<=?) 2\^(\d+)`.*", part)  # `0 <= seed < 2^63`
        if both:
            low, low_op, key, high_op, exponent = both.groups()
            allowed, high, high_open = RANGES[key], 2 ** int(exponent), high_op == "<"
            if allowed.integer and high_open:  # an integer < 2^63 is one <= 2^63 - 1
                high, high_open = high - 1, False
            assert (allowed.low, allowed.low_open, allowed.high, allowed.high_open) == (
                int(low),
                low_op == "<",
                high,
                high_open,
            ), key
            listed.add(key)
    assert listed == set(RANGES), f"docs/troubleshooting.md's ranges lack {sorted(set(RANGES) - listed)}"


# ------------------------------------------------------------------------------ REFERENCE.md and GUIDE.md citations

# The team's shared pages, copied into docs/ so that a clone can open what the code and docs cite: the paper's
# protocol in facts (REFERENCE) and the design guide (GUIDE), each with the fewest citations the project has of it.
SHARED_PAGES = {"REFERENCE": 50, "GUIDE": 6}
CITING = [p for p in (ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "pyproject.toml") if p.exists()] + [
    p for folder in ("docs", "reptile_exp", "scripts", "conf", "tests") for p in sorted((ROOT / folder).rglob("*.*"))
]


@pytest.mark.parametrize("page", SHARED_PAGES)
def test_every_citation_names_a_section_it_has(page):
    """`REFERENCE.md section 6` (or `sections 4 and 5`), `GUIDE.md section 2` anywhere in the project: docs/ has
    that page and section."""
    doc = ROOT / "docs" / f"{page}.md"
    sections = set(re.findall(r"^## (\d+)\. ", doc.read_text(), flags=re.M))
    cited = 0
    for path in CITING:
        if path.suffix not in (".md", ".py", ".yaml", ".toml") or path == doc:
            continue
        for match in re.finditer(rf"{page}(?:\.md)? sections? ((?:\d+(?:, | and |-))*\d+)", path.read_text()):
            cited += 1
            missing = set(re.findall(r"\d+", match[1])) - sections
            assert not missing, f"{path.relative_to(ROOT)}: {match[0]!r} cites no section of docs/{page}.md"
    assert cited >= SHARED_PAGES[page]


@pytest.mark.parametrize("page", SHARED_PAGES)
def test_the_page_is_the_shared_one(page):
    """docs/<page>.md is the team's ../shared/<page>.md byte for byte, where a checkout has it (CI's clean clone
    does not)."""
    shared = ROOT.parent / "shared" / f"{page}.md"
    if not shared.exists():
        pytest.skip(f"no {shared} beside this checkout")
    doc = ROOT / "docs" / f"{page}.md"
    assert doc.read_bytes() == shared.read_bytes(), f"docs/{page}.md differs from {shared}: copy it again"


# ------------------------------------------------------------------------------------------------- their length


@pytest.mark.parametrize("doc", ["benchmarks.md", "results.md"])
def test_a_reference_page_stays_under_2500_words(doc):
    words = len((ROOT / "docs" / doc).read_text().split())  # as `wc -w` counts
    assert words < 2500, f"docs/{doc} has {words} words: one current table per topic, history in CHANGELOG.md"
