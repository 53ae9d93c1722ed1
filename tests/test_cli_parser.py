"""Argument errors of the real command line: one line, exit code 2, and an unknown option names the option of
that command it most likely meant (a synonym users bring from other tools, or the closest spelling)."""

from __future__ import annotations

import pytest

from seedvr_local.cli import build_parser, main


def _one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert exited.value.code == 2 and captured.out == "" and len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize(
    "argv, meant",
    [
        (["upscale", "in.png", "--scale", "4"], "--upscale-factor"),  # a synonym, not --noise-scale's spelling
        (["upscale", "in.png", "--factor=4"], "--upscale-factor"),
        (["upscale", "in.png", "--upscale-factr", "4"], "--upscale-factor"),  # a typo
        (["upscale", "in.png", "--output-dir", "out"], "--output"),
        (["upscale", "in.png", "--colour-fix", "lab"], "--color-fix"),
        (["download", "--model", "3b", "--output-dir", "w"], "--dir"),  # the same name, another command's option
        (["serve", "--model", "tiny", "--listen", "0.0.0.0"], "--host"),
        (["serve", "--model", "tiny", "--api-keys", "k"], "--api-key"),
        (["worker", "--model", "tiny", "--gpus", "cuda:0"], "--devices"),  # before "--devices is required"
    ],
)
def test_an_unknown_option_names_the_one_meant(capsys, argv, meant):
    command = argv[0]
    unknown = next(arg for arg in argv[1:] if arg.startswith("--") and arg.split("=")[0] != "--model")
    line = _one_line_error(capsys, argv)
    assert line == f"seedvr-local {command}: error: unrecognized argument {unknown.split('=')[0]}: did you mean {meant}?"


def test_a_misspelt_command_line_option_is_named_too(capsys):
    assert _one_line_error(capsys, ["--verison"]) == "seedvr-local: error: unrecognized argument --verison: did you mean --version?"


def test_every_suggestion_is_an_option_of_its_command():
    """The synonym table may only point at options that exist (in some command), so a renamed option cannot
    leave it suggesting a flag that is gone."""
    from seedvr_local.cli_parser import OPTION_SYNONYMS

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices.values()
    options = {name for command in commands for action in command._actions for name in action.option_strings}
    assert {target for targets in OPTION_SYNONYMS.values() for target in targets} <= options


def test_an_unknown_option_without_a_likeness_points_at_help(capsys):
    line = _one_line_error(capsys, ["upscale", "in.png", "--zzzz"])
    assert line == "seedvr-local upscale: error: unrecognized argument --zzzz: see seedvr-local upscale --help for the options"


def test_a_stray_argument_and_other_argument_errors_are_one_line_too(capsys):
    assert "unrecognized argument 'extra'" in _one_line_error(capsys, ["upscale", "in.png", "extra"])
    assert "invalid choice: 'sepia'" in _one_line_error(capsys, ["upscale", "in.png", "--color-fix", "sepia"])
