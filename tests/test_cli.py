"""The command line: help, version, data and summary subcommands, errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lenet5 import __version__, cli


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lenet5 {__version__}"
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("data", "summary"):
        assert command in out


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "lenet5.cli", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and __version__ in result.stdout


def test_summary_prints_the_papers_table(capsys):
    assert cli.main(["summary", "--arch", "classic"]) == 0
    out = capsys.readouterr().out
    for figure in ("122,304", "5,880", "151,600", "2,000", "48,120", "10,164", "60,000", "340,908"):
        assert figure in out


def test_summary_json(capsys):
    assert cli.main(["summary", "--arch", "twin", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in summary["layers"]] == [
        "c1",
        "s2",
        "c3",
        "s4",
        "c5",
        "f6",
        "output",
    ]


def test_unknown_arch_is_one_clear_error(capsys):
    assert cli.main(["summary", "--arch", "lenet7"]) == 1
    err = capsys.readouterr().err
    assert "unknown architecture 'lenet7'" in err and "Traceback" not in err


def test_data_info_on_real_mnist(mnist_dir, capsys):
    assert cli.main(["data", "info", "--data-dir", str(mnist_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"]["train"]["count"] == 60_000
    assert info["splits"]["test"]["class_counts"][1] == 1135


def test_data_verify_on_real_mnist(mnist_dir, capsys):
    assert cli.main(["data", "verify", "--data-dir", str(mnist_dir)]) == 0
    assert "4 of 4 files good" in capsys.readouterr().out


def test_missing_data_dir_is_one_clear_error(tmp_path, capsys):
    assert cli.main(["data", "info", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lenet5: error:") and "missing" in err
