"""Every command line in README.md and docs/*.md parses with its program's own parser, so a renamed or
misspelt flag fails CI instead of a reader.

Checked: each line of a fenced code block that starts with `python -m grokcopy...`, `python -m bench...`,
`python train.py`, `python3 train.py`, `torchrun ... train.py` or `python -m torch.distributed.run ...`
(after `$ ` and VAR=value prefixes; `\\` continuations joined, `# comments` dropped). In-process, in a
temporary working directory, nothing trained or written:
- train.py: `train.parse_args`, which parses and validates the whole configuration (presets, types,
  ranges); torchrun's own flags through torchrun's parser first;
- `python -m grokcopy.evals.experiment`: its own `--dry-run` (experiment names checked), and every
  train.py command it prints is checked in turn;
- any other `python -m` tool: its `main(argv)` up to its parser's parse_args, then stopped.
Flags must be spelt in full: argparse's prefix matching is switched off here, or a doc's `--max-step`
would pass for `--max-steps` (and survive a rename of it). Placeholders (DIR, RUN, HOST) become temporary
paths; usage notation (`...`, `[...]`) is refused, so each command can be pasted as it stands.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from torch.distributed.run import get_args_parser

import train
from grokcopy.__main__ import ENTRY_POINTS
from grokcopy.model import PRESETS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# inline `commands` are checked too on these pages; the research logs (TINY.md, REPRODUCTION*.md) quote
# runs in prose with placeholders like `--seed S`, and only their fenced commands are checked
INLINE_CHECKED = [ROOT / "README.md", *(ROOT / "docs" / f"{name}.md"
                                       for name in ("training", "metrics", "data", "kernels", "interop"))]
CHECKED = re.compile(r"(python3? (train\.py|-m (grokcopy|bench|torch\.distributed\.run)(\.[\w.]+)?)|torchrun)(\s|$)")
PLACEHOLDERS = {"DIR": "dir", "RUN": "run", "HOST": None}  # HOST becomes localhost; the others temp paths


class Parsed(Exception):  # noqa: N818 (not an error: how the intercepted parse hands back its result)
    """Raised by the intercepted parse_args, carrying its result, so the tool's main stops there."""

    def __init__(self, namespace: argparse.Namespace):
        super().__init__("parsed")
        self.namespace = namespace


class CommandError(AssertionError):
    """A documented command that does not parse; the message says why."""


# ---------------------------------------------------------------------------------------------
# Extraction


def fenced_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) for each checked command line inside ``` fences."""
    found, in_fence, pending, start = [], False, "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.lstrip().startswith("```"):
            in_fence, pending = not in_fence, ""
            continue
        if not in_fence:
            continue
        line = raw.strip()
        if not pending:
            start = number
            line = re.sub(r"^\$\s+", "", line)
            while re.match(r"^[A-Za-z_][A-Za-z0-9_]*=\S*\s", line):  # OMP_NUM_THREADS=1 python ...
                line = line.split(None, 1)[1]
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        command, pending = pending + line, ""
        if CHECKED.match(command):
            found.append((start, command))
    return found


def inline_code(text: str) -> list[tuple[int, str]]:
    """(line number, code) for each `inline code` span outside fences (a span may wrap a line)."""
    lines, in_fence = [], False
    for raw in text.splitlines():
        fence = raw.lstrip().startswith("```")
        in_fence ^= fence
        lines.append("" if fence or in_fence else raw)
    prose = "\n".join(lines)
    return [(prose.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split()))
            for m in re.finditer(r"`([^`]+)`", prose)]


def documented_commands() -> list[tuple[str, str]]:
    found = [(path, number, command) for path in DOCS for number, command in fenced_commands(path.read_text())]
    # a bare `python -m tool` in prose names the tool: it must exist and answer --help
    found += [(path, number, code + " --help" if re.fullmatch(r"python3? -m \S+", code) else code)
              for path in INLINE_CHECKED for number, code in inline_code(path.read_text())
              if CHECKED.match(code) and " " in code]
    return [(f"{path.relative_to(ROOT)}:{number}", command) for path, number, command in sorted(found)]


def documented_imports() -> list[tuple[str, str]]:
    """`from grokcopy... import ...` statements in code blocks and inline code."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for number, line in [*enumerate(text.splitlines(), 1), *inline_code(text)]:
            for statement in re.findall(r"\bfrom grokcopy[\w.]* import [\w, ]+", line):
                found.append((f"{path.relative_to(ROOT)}:{number}", statement.strip().rstrip(",")))
    return found


# ---------------------------------------------------------------------------------------------
# Checking


def words(command: str, workdir: Path) -> list[str]:
    """The command's arguments with placeholders filled in; usage notation is an error."""
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError as e:
        raise CommandError(f"not a shell command line ({e})") from None
    for token in tokens:
        if "..." in token or token.startswith("[") or token.endswith("]") or token.startswith("<"):
            raise CommandError(f"{token!r} is usage notation, not an argument: write a command a reader can paste")

    def fill(token: str) -> str:
        for name, path in PLACEHOLDERS.items():
            token = re.sub(rf"\b{name}\b", "localhost" if path is None else str(workdir / path), token)
        return token

    return [fill(t) for t in tokens]


def strict_parsers(monkeypatch) -> None:
    """Every ArgumentParser made from here on rejects abbreviated flags."""
    real_init = argparse.ArgumentParser.__init__

    def init(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "__init__", init)


def run_parser(call, *args):
    """call(*args), with argparse's exit (a usage error) turned into CommandError with its message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return call(*args)
    except SystemExit as e:
        if e.code in (0, None):  # --help or --version: it parsed
            raise Parsed(argparse.Namespace()) from None
        message = err.getvalue().strip().splitlines() or [str(e)]
        raise CommandError(f"exit status {e.code}: {message[-1]}") from None  # argparse's error line


def files_read_at_parse(argv: list[str], workdir: Path) -> None:
    """Stand-ins for the files train.py reads while parsing (--config, --init-from-hf), where a doc's
    example names one that does not exist here."""
    for flag, i in ((a, i) for i, a in enumerate(argv) if a in ("--config", "--init-from-hf")):
        path = workdir / argv[i + 1]
        if flag == "--config" and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
        if flag == "--init-from-hf" and not (path / "config.json").exists():
            shape = PRESETS["tiny"].model
            path.mkdir(parents=True, exist_ok=True)
            (path / "config.json").write_text(json.dumps({
                "model_type": "llama", "vocab_size": shape.vocab_size, "hidden_size": shape.d_model,
                "intermediate_size": shape.d_mlp, "num_hidden_layers": shape.n_layers,
                "num_attention_heads": shape.n_heads, "max_position_embeddings": shape.context}))


def check_train(argv: list[str], workdir: Path, monkeypatch) -> None:
    files_read_at_parse(argv, workdir)
    # whether tensorboard / wandb are installed is this machine's business, not the command's
    monkeypatch.setattr(train, "tensorboard_available", lambda: True)
    monkeypatch.setattr(train, "wandb_available", lambda: True)
    try:
        run_parser(train.parse_args, argv)
    except train.ConfigError as e:
        raise CommandError(f"train.py: {e}") from None


def check_module(module_name: str, argv: list[str], workdir: Path, monkeypatch) -> None:
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise CommandError(f"python -m {module_name}: no such module ({e})") from None
    if not callable(getattr(module, "main", None)) and importlib.util.find_spec(f"{module_name}.__main__"):
        module = importlib.import_module(f"{module_name}.__main__")  # a package run with -m
    if not callable(getattr(module, "main", None)):
        raise CommandError(f"python -m {module_name}: has no main(argv) to check its flags with")
    if module_name == "grokcopy.evals.experiment":  # its dry run checks the names and prints the train.py lines
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = run_parser(module.main, [*argv, "--dry-run"])
        if status:
            raise CommandError(f"{module_name} --dry-run: exit status {status}")
        for line in out.getvalue().splitlines():
            if not line.startswith("skip "):
                check(line, workdir, monkeypatch)
        return
    real_parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(real_parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    try:
        run_parser(module.main, argv)
    except Parsed:
        return
    finally:
        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", real_parse)
    raise CommandError(f"python -m {module_name}: main() returned without parsing its arguments")


def check(command: str, workdir: Path, monkeypatch) -> None:
    """Raises CommandError unless `command` parses with its program's own parser."""
    try:
        check_parse(command, workdir, monkeypatch)
    except Parsed:
        pass  # stopped at a clean exit of the parser (--help)


def check_parse(command: str, workdir: Path, monkeypatch) -> None:
    strict_parsers(monkeypatch)
    argv = words(command, workdir)
    program, rest = Path(argv[0]).name, argv[1:]
    if program.startswith("python") and rest[:2] == ["-m", "torch.distributed.run"]:
        program, rest = "torchrun", rest[2:]
    if program == "torchrun":
        args = run_parser(get_args_parser().parse_args, rest)
        if Path(args.training_script).name != "train.py":
            raise CommandError(f"torchrun runs {args.training_script!r}, not train.py")
        return check_train(args.training_script_args, workdir, monkeypatch)
    if rest and Path(rest[0]).name == "train.py":
        return check_train(rest[1:], workdir, monkeypatch)
    if rest[:1] == ["-m"] and len(rest) >= 2:
        return check_module(rest[1], rest[2:], workdir, monkeypatch)
    raise CommandError(f"not a command this test knows how to check: {command!r}")


# ---------------------------------------------------------------------------------------------
# Tests


COMMANDS = documented_commands()


@pytest.mark.parametrize("where, command", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_documented_command_parses(where, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative --out and the like land here; nothing is written anyway
    try:
        check(command, tmp_path, monkeypatch)
    except CommandError as e:
        pytest.fail(f"{where}: {command}\n  {e}")


IMPORTS = documented_imports()


@pytest.mark.parametrize("where, statement", IMPORTS, ids=[where for where, _ in IMPORTS])
def test_documented_import_works(where, statement):
    module_name, names = re.match(r"from (\S+) import (.+)", statement).groups()
    module = importlib.import_module(module_name)
    missing = [n.strip() for n in names.split(",") if n.strip() and not hasattr(module, n.strip())]
    assert not missing, f"{where}: {statement}: {module_name} has no {missing}"


def test_the_docs_have_commands_to_check():
    """The extraction finds the README's commands (an empty list would pass every check above)."""
    readme = [c for where, c in COMMANDS if where.startswith("README.md")]
    assert any(c.startswith("torchrun") for c in readme) and any("grokcopy.model.hf" in c for c in readme)
    assert len(COMMANDS) >= 25, COMMANDS


MISTAKES = [
    "python train.py --max-stepz 10",                                    # a made-up flag
    "python train.py --max-step 10",                                     # an abbreviation of --max-steps
    "python train.py --preset tiny --lr -1",                             # parses, but validation refuses it
    "python train.py --preset tiny-ish",                                 # an unknown preset
    "torchrun --standalone --nproc-per-node=1 train.py --no-such-flag",
    "torchrun --standalone --nprocs=1 train.py",                         # torchrun's own flag misspelt
    "python -m grokcopy.model.sample RUN --temprature 0",
    "python -m grokcopy.model.hf exprt RUN DIR",                         # a misspelt subcommand
    "python -m grokcopy.evals.experiment no-such-experiment",
    "python -m grokcopy.evals.report RUN --out DIR --onset no_such_onset",
    "python -m grokcopy.data.prepare --input DIR --out DIR --vocab 512",  # --vocab-size abbreviated
    "python -m grokcopy.no_such_tool --help",
    "python train.py --preset tiny ...",                                 # usage notation
    "python -m grokcopy --list-everything",
]


@pytest.mark.parametrize("command", MISTAKES)
def test_a_wrong_command_fails(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CommandError):
        check(command, tmp_path, monkeypatch)


def test_a_right_command_passes_and_extraction_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "\n".join([
        "python train.py --not-in-a-fence",
        "```bash",
        "$ OMP_NUM_THREADS=1 python train.py --preset tiny --max-steps 20 \\",
        "    --out runs/short   # a comment --no-such-flag",
        "pip install -e '.[tb]'",
        "```",
        "```python",
        "python -m grokcopy.model.sample RUN --seed 1",
        "```",
    ])
    assert fenced_commands(text) == [(3, "python train.py --preset tiny --max-steps 20  --out runs/short   "
                                         "# a comment --no-such-flag"),
                                     (8, "python -m grokcopy.model.sample RUN --seed 1")]
    for _, command in [*fenced_commands(text), (0, "python -m grokcopy --help"), (0, "python train.py --help")]:
        check(command, tmp_path, monkeypatch)
    assert not (tmp_path / "runs").exists()  # parsing wrote nothing


# ---------------------------------------------------------------------------------------------
# python -m grokcopy

PACKAGE_OF_FOLDER = {"kernels": "grokcopy.kernels", "model": "grokcopy.model", "data": "grokcopy.data",
                     "evals": "grokcopy.evals", "bench": "bench"}


def test_python_m_grokcopy_lists_the_entry_points():
    for argv in ([], ["--help"]):
        proc = subprocess.run([sys.executable, "-m", "grokcopy", *argv], capture_output=True, text=True,
                              timeout=120, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        for command, what in ENTRY_POINTS:
            assert any(line.split() == [*command.split(), *what.split()] for line in lines), command
    proc = subprocess.run([sys.executable, "-m", "grokcopy", "--no-such-flag"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr


def test_each_listed_tool_answers_help(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command, _ in ENTRY_POINTS:
        if command.startswith(("python -m", "torchrun")):
            check(f"{command} --help", tmp_path, monkeypatch)


def test_every_command_line_tool_is_listed():
    """A module with a main() run as a script (`if __name__ == "__main__"`) is a tool: it is in the list."""
    listed = {command.split()[2] for command, _ in ENTRY_POINTS if command.startswith("python -m")}
    tools = {f"{PACKAGE_OF_FOLDER[path.parent.name]}.{path.stem}"
             for folder in PACKAGE_OF_FOLDER for path in (ROOT / folder).glob("*.py")
             if "\ndef main(" in path.read_text() and '__name__ == "__main__"' in path.read_text()}
    assert tools and tools <= listed, f"add {sorted(tools - listed)} to ENTRY_POINTS in grokcopy/__main__.py"


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_the_pages_resolve():
    """Every relative link of README.md and the topic pages names a file that exists (and a heading
    that exists, for a #fragment into a Markdown page)."""
    broken = []
    for page in INLINE_CHECKED:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, fragment = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif fragment and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
                if fragment not in {anchor(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
