"""The documentation stays true: the site builds, the pages' code runs, the printed numbers hold.

Three checks:

* ``mkdocs build --strict`` builds the site (user guide and API reference) without a warning:
  no broken link or anchor, no docstring that fails to render.
* Every ```` ```python ```` block of ``README.md`` and ``docs/*.md`` runs. The blocks of one page
  run in order in one namespace (a later block may use an earlier block's names), in a temporary
  working directory, so a block reads like a session a user types.
* What a block prints is checked where the page shows it. A comment ``# -> TEXT`` shows output:
  on a code line, or on comment lines of their own just below a statement (several ``# ->``
  lines are several lines of output). It is compared with everything the top-level statement it
  belongs to printed (a loop: every pass). Numbers are compared as numbers, the rest as text
  (whitespace need not match); ``...`` stands for any text. A number written with decimals
  matches within one unit of its last digit (``5.1499`` within 1e-4), a whole number exactly,
  unless the expectation ends in ``(± TOL)`` or ``(± TOL%)``, which is then the tolerance of
  every number in it (anything written after that clause is prose); ``{2.98 ± 0.04}`` gives
  one number its own tolerance. `` — `` (a spaced dash) ends the expectation: prose follows.
  Monte Carlo output states a tolerance of about four Monte Carlo standard errors, so that a
  change of random stream passes and a drifted estimate does not.

A block is not run when the line before it is ``<!-- docs-test: skip (reason) -->``: excerpts of
the library's source, and calls that change process-wide settings, never to save time.

The pages' blocks and the docstrings' examples carry the ``docs`` mark, as do the commands the
pages document that compile much of the library anew in one test (the README's ``unnorm demo``
in ``tests/test_cli.py``, the benchmarks' quick runs in ``tests/test_benchmarks.py``): about five
minutes of CPU together, which the default ``pytest`` (held to four minutes on two cores) leaves
out; ``pytest -m docs`` runs them, and so does CI (``.ci/run``), after the default run.
pytest-xdist hands out each page and each module to whichever worker is free
(``tests/conftest.py``), not the whole file to one worker as it does other files. The
site's ``--strict`` build and the checks of the output-matching rules run by default. Examples
are written at small sizes: a few hundred draws, four chains, data of a few hundred to a few
thousand rows, optimizer runs of hundreds of steps. Nearly all of their cost is compiling
programs, so they also reuse shapes: the blocks of a page and the examples of the modules
share model shapes, chain counts and data sizes where the example allows it, and the test
session's persistent compilation cache (``tests/conftest.py``) then serves a program that an
earlier page or module compiled on the same worker. A block runs as written; what it prints is
what is checked.
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import importlib
import io
import math
import re
import subprocess
import sys
import tokenize
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SKIP_MARK = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->")
FENCE = re.compile(r"^```python[ \t]*\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
TOLERANCE = re.compile(r"\(±\s*(?P<value>[0-9.eE+-]+)(?P<percent>%?)\)")
OWN_TOLERANCE = re.compile(
    r"\{\s*(?P<value>" + NUMBER.pattern + r")\s*±\s*(?P<tol>[0-9.eE+-]+%?)\s*\}")
EXPECT = "# ->"


@dataclass
class Block:
    page: str
    line: int           # line of the first code line in the page
    code: str
    skip: str | None    # the reason, when marked


@dataclass
class Expectation:
    line: int                       # page line of the first ``# ->``
    lines: list[str] = field(default_factory=list)


def page_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = SKIP_MARK.search(before)
        code = match.group("code")
        blocks.append(Block(path.name, text[:match.start("code")].count("\n") + 1, code,
                            marker.group("reason") if marker else None))
    return blocks


def expectations(block: Block) -> dict[int, list[Expectation]]:
    """Top-level statement's first page line -> the outputs shown for it."""
    tree = ast.parse(_padded(block))
    statements = [(node.lineno, node.end_lineno) for node in tree.body]
    found: dict[int, list[Expectation]] = {}
    previous_line = None
    tokens = tokenize.generate_tokens(io.StringIO(_padded(block)).readline)
    for token in tokens:
        if token.type != tokenize.COMMENT or not token.string.startswith(EXPECT):
            continue
        line = token.start[0]
        own_line = not token.line[:token.start[1]].strip()
        if own_line:
            owners = [start for start, end in statements if end < line]
        else:
            owners = [start for start, end in statements if start <= line <= end]
        assert owners, f"{block.page}:{line}: '# ->' before any statement"
        owner = owners[-1]
        shown = token.string[len(EXPECT):].split(" — ")[0].strip()     # " — prose" ends it
        items = found.setdefault(owner, [])
        if own_line and previous_line == line - 1 and items:
            items[-1].lines.append(shown)        # one more line of the same output
        else:
            items.append(Expectation(line, [shown]))
        previous_line = line
    return found


def _padded(block: Block) -> str:
    # page line numbers in tracebacks and in the statements' positions
    return "\n" * (block.line - 1) + block.code


def _decimals_tolerance(number: str) -> float:
    mantissa, _, exponent = number.lower().partition("e")
    if "." not in mantissa:
        return 0.0 if not exponent else 10.0 ** int(exponent)
    decimals = len(mantissa.split(".")[1])
    return 10.0 ** (-decimals + (int(exponent) if exponent else 0))


def check_output(shown_lines: list[str], printed: str, where: str) -> None:
    shown = "\n".join(shown_lines)
    tolerance = None
    match = TOLERANCE.search(shown)
    if match:
        tolerance = (float(match.group("value")), bool(match.group("percent")))
        shown = shown[:match.start()].rstrip()
    pattern, numbers = [], []     # numbers: (as written, its own tolerance or None)
    position = 0
    for token in re.finditer(r"\.\.\.|\s+|" + OWN_TOLERANCE.pattern + "|" + NUMBER.pattern, shown):
        pattern.append(re.escape(shown[position:token.start()]))
        position = token.end()
        piece = token.group()
        if piece == "...":
            pattern.append(r".*?")
        elif piece.isspace():
            pattern.append(r"\s*")
        elif tolerance is None and re.fullmatch(r"[-+]?\d+", piece):
            # a whole number is matched exactly, as text: ``...`` may skip to the right one
            pattern.append(r"(?<!\d)" + re.escape(piece) + r"(?![\d.])")
        else:
            own = OWN_TOLERANCE.fullmatch(piece)
            pattern.append("(" + NUMBER.pattern + ")")
            numbers.append((own.group("value"), own.group("tol")) if own else (piece, None))
    pattern.append(re.escape(shown[position:]))
    actual = printed.strip()
    # whitespace is optional between any two pieces: NumPy pads "[ 1. 10.]" and "[5. ]"
    found = re.fullmatch(r"\s*".join(pattern), actual, re.S)
    assert found, f"{where}: the page shows\n{shown}\nbut the block printed\n{actual}"
    for (expected, own), got in zip(numbers, found.groups(), strict=True):
        value = float(expected)
        if own is not None:
            allowed = abs(value) * float(own[:-1]) / 100 if own.endswith("%") else float(own)
        elif tolerance is not None:
            allowed = abs(value) * tolerance[0] / 100 if tolerance[1] else tolerance[0]
        else:
            allowed = _decimals_tolerance(expected)
        # one part in 1e9 of slack for the decimal representation itself
        assert abs(float(got) - value) <= allowed * (1 + 1e-9) + 1e-12, (
            f"{where}: the page shows {expected} (within {allowed:g}) but the block printed "
            f"{got}, in\n{actual}")


def run_page(path: Path) -> int:
    """Run the page's blocks in one namespace; check the shown output; return blocks run."""
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for block in page_blocks(path):
        if block.skip is not None:
            continue
        filename = f"{block.page}:{block.line}"
        printed: list[tuple[int | None, str]] = []      # (page line, text) in the order printed

        def recording_print(*args, file=None, _filename=filename, _printed=printed, **kwargs):
            if file not in (None, sys.stdout):
                return print(*args, file=file, **kwargs)
            frame, line = sys._getframe(1), None
            while frame is not None:                 # the outermost frame of this block
                if frame.f_code.co_filename == _filename:
                    line = frame.f_lineno
                frame = frame.f_back
            text = io.StringIO()
            print(*args, file=text, **kwargs)
            _printed.append((line, text.getvalue()))
            print(*args, **kwargs)

        namespace["print"] = recording_print
        exec(compile(_padded(block), filename, "exec"), namespace)
        ran += 1
        tree = ast.parse(_padded(block))
        for owner, shown in expectations(block).items():
            end = next(node.end_lineno for node in tree.body if node.lineno == owner)
            output = "".join(text for line, text in printed
                             if line is not None and owner <= line <= end)
            text_lines = output.rstrip("\n").split("\n")
            # several expectations under one statement split its output in order
            position = 0
            for index, item in enumerate(shown):
                if index == len(shown) - 1:
                    part = text_lines[position:]
                else:
                    part = text_lines[position:position + len(item.lines)]
                position += len(item.lines)
                check_output(item.lines, "\n".join(part), f"{block.page}:{item.line}")
    return ran


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A page runs in a temporary directory; JAX's precision and matplotlib figures are put back
    afterwards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    x64 = jax.config.jax_enable_x64
    try:
        with warnings.catch_warnings():
            yield
    finally:
        jax.config.update("jax_enable_x64", x64)
        plt.close("all")


@pytest.mark.docs
@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in PAGES])
def test_page_blocks_run_and_print_what_the_page_shows(path, isolated):
    blocks = page_blocks(path)
    if not blocks or all(block.skip for block in blocks):
        pytest.skip(f"{path.name} has no block to run")
    run_page(path)


def test_every_page_is_in_the_site_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [p.name for p in PAGES[1:] if p.name not in nav]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"


def test_mkdocs_builds_the_site_without_warnings(tmp_path):
    pytest.importorskip("mkdocstrings")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"),
         "--config-file", str(ROOT / "mkdocs.yml")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "WARNING" not in log, log
    assert (tmp_path / "site" / "reference" / "unnorm" / "index.html").is_file()


def test_shown_output_is_checked_with_its_tolerance():
    check_output(["[0.21 0.31 0.49] (± 0.05) the weights"], "[0.2  0.3 0.5]", "here")
    check_output(["5.1499 ... True"], "5.149896 17.0 True", "here")
    check_output(["AIS {2.98 ± 0.04}, ESS {249 ± 5%} of 256"], "AIS 2.9609, ESS 240 of 256", "x")
    with pytest.raises(AssertionError, match="the page shows 2.98"):
        check_output(["AIS {2.98 ± 0.01}"], "AIS 2.9609", "here")
    with pytest.raises(AssertionError, match="the page shows 5.1499"):
        check_output(["5.1499"], "5.1510", "here")
    with pytest.raises(AssertionError, match="but the block printed"):
        check_output(["(4, 500, 2)"], "(4, 500, 3)", "here")
    assert math.isclose(_decimals_tolerance("0.98"), 0.01)
    assert _decimals_tolerance("3") == 0.0


def test_expectations_belong_to_the_statement_above(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\nfor i in range(2):\n    print(i / 3)\n"
                    "# -> 0.0\n# -> 0.333\nprint('done')   # -> done\n```\n")
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_page(page) == 1
    page.write_text(page.read_text().replace("0.333", "0.336"))
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(AssertionError,
                                                                   match="page.md:6"):
        run_page(page)


# ---- docstring examples -------------------------------------------------------------------------

#: every module with examples in its docstrings
DOCTEST_MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for path in (ROOT / "unnorm").rglob("*.py") if ">>>" in path.read_text())

DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.docs
@pytest.mark.parametrize("module", DOCTEST_MODULES)
def test_docstring_examples(module, isolated):
    imported = importlib.import_module(module)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS)
    tests = [t for t in finder.find(imported, module) if t.examples]
    assert tests, f"{module} has '>>>' but no example was found"
    report = io.StringIO()
    for test in tests:
        runner.run(test, out=report.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, report.getvalue()
