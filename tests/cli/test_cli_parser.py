"""Parser errors on the oldest and the newest Typer sparsekit supports: one line on stderr, exit
code 2, no traceback, Click's "did you mean" hint; `-h` is `--help`; no arguments shows the help.

The newest Typer is the one installed; the oldest (the floor of the range in pyproject.toml) is
installed into a temporary folder and put first on the path of a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OLDEST = {"typer": "0.12.5", "click": "8.1.8"}   # what the pyproject floor resolves to

CASES = [
    (["prune", "demo", "-o", "out", "--sparsty", "0.5"], "No such option: --sparsty", "--sparsity"),
    (["prune", "demo", "-o", "out", "--sparsity", "abc"], "'--sparsity'", "abc"),
    (["prune", "demo", "-o", "out", "--nsamples", "abc"], "'--nsamples'", "abc"),
    (["export", "pruned", "-o", "out", "--max-shard-size", "2 bananas"], "--max-shard-size '2 bananas' is not a size",
     "2GiB"),
    (["prune", "demo"], "Missing option '-o' / '--output'", "sparsekit prune --help"),
    (["prune", "-o", "out"], "Missing argument", "sparsekit prune --help"),
    (["prun", "demo"], "No such command 'prun'", "Did you mean 'prune'?"),
    (["eval", "demo", "--batch-size", "1.5"], "'--batch-size'", "1.5"),
]


def one_line(code: int, stderr: str, *parts: str) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    for part in parts:
        assert part in stderr, stderr


def test_pyproject_pins_the_tested_range():
    text = (REPO / "pyproject.toml").read_text()
    floor, ceiling = re.search(r'"typer>=([\d.]+),<([\d.]+)"', text).groups()
    assert floor == OLDEST["typer"]
    import typer

    assert tuple(int(x) for x in typer.__version__.split(".")[:2]) < tuple(int(x) for x in ceiling.split("."))


@pytest.mark.parametrize("args, message, hint", CASES)
def test_parser_errors_are_one_line(cli, args, message, hint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = cli(*args)
    one_line(code, stderr, message, hint)
    assert stdout == "" and list(tmp_path.iterdir()) == []


def test_json_errors_are_a_json_object(cli, tmp_path):
    code, stdout, stderr = cli("prune", "demo", "-o", tmp_path / "out", "--json", "--sparsity", "2")
    one_line(code, stderr, "--sparsity 2.0 is outside [0, 1)")
    assert json.loads(stdout) == {"error": stderr.strip().removeprefix("error: "), "exit_code": 2}
    code, stdout, stderr = cli("prune", "demo", "-o", tmp_path / "out", "--json", "--sparsty", "2")
    one_line(code, stderr, "No such option")
    assert json.loads(stdout)["error"].startswith("No such option: --sparsty")


def test_help_short_and_long_and_no_arguments(cli):
    for args in (["-h"], ["--help"], ["prune", "-h"], []):
        code, stdout, stderr = cli(*args)
        assert code == 0 and stdout.startswith("Usage: sparsekit") and stderr == "", (args, stderr)
    assert "--method" in cli("prune", "-h")[1]


@pytest.fixture(scope="session")
def oldest_typer(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("oldest-typer")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           *(f"{k}=={v}" for k, v in OLDEST.items())], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"the package index is not reachable to install typer {OLDEST['typer']}: {proc.stderr[-300:]}")
    return target


# Runs each argument list through the CLI in one process (one torch import), capturing the streams.
DRIVER = """
import contextlib, io, json, sys, typer
from sparsekit.cli import main
results = []
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps({"typer": typer.__version__, "results": results}))
"""


def test_oldest_typer_gives_the_same_one_line_errors(oldest_typer):
    runs = [args for args, _, _ in CASES] + [["-h"], ["prune", "-h"], [], ["--version"]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(oldest_typer), str(REPO / "src")]))
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(runs)], capture_output=True, text=True, env=env,
                          cwd=oldest_typer)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["typer"] == OLDEST["typer"]
    results = report["results"]
    for (args, message, hint), (code, stdout, stderr) in zip(CASES, results):
        one_line(code, stderr, message, hint)
    for args, (code, stdout, stderr) in zip(runs[len(CASES):-1], results[len(CASES):-1]):
        assert code == 0 and stdout.startswith("Usage: sparsekit"), (args, stderr)
    assert results[-1][0] == 0 and results[-1][1].startswith("sparsekit ")
