"""The command line's argument parser: every argument error is one line with exit code 2, and an unknown option
names the command's option it most likely meant (`--scale` -> `--upscale-factor`). Standard library only, so
errors answer before anything heavy is imported."""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import NoReturn

#: Option names users bring from other upscalers and tools, each with the options of ours that do the same job,
#: in order of preference (the first one the command has is suggested). Typos are found without this table.
OPTION_SYNONYMS: dict[str, tuple[str, ...]] = {
    "--scale": ("--upscale-factor",),
    "--factor": ("--upscale-factor",),
    "--scale-factor": ("--upscale-factor",),
    "--upscale": ("--upscale-factor",),
    "--resolution": ("--target-resolution",),
    "--output-dir": ("--output", "--dir", "--data-dir"),
    "--out-dir": ("--output", "--dir", "--data-dir"),
    "--outdir": ("--output", "--dir", "--data-dir"),
    "--out": ("--output",),
    "--format": ("--output-format",),
    "--colorfix": ("--color-fix",),
    "--color-correction": ("--color-fix",),
    "--gpu": ("--device", "--devices"),
    "--gpus": ("--devices",),
    "--precision": ("--dtype",),
    "--tile-size": ("--vae-tile",),
    "--tile": ("--vae-tile",),
    "--force": ("--overwrite",),
    "--model-dir": ("--weights-dir",),
    "--checkpoint-dir": ("--weights-dir",),
    "--listen": ("--host",),
    "--bind": ("--host",),
}


class CommandLineParser(argparse.ArgumentParser):
    """An ArgumentParser (its sub-commands' too) whose errors are one line, without the usage block."""

    _arg_strings: list[str] = []

    def error(self, message: str) -> NoReturn:
        # A required option reported missing may be one the user spelt another way (`--gpu` for `--devices`):
        # the unknown option is the news then.
        unknown = [arg for arg in self._arg_strings if self._is_unknown_option(arg)]
        if unknown and message.startswith("the following arguments are required"):
            message = unrecognized_message(unknown, _option_names(self), self.prog)
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_known_args(self, args=None, namespace=None):
        self._arg_strings = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            command = _chosen_command(self, parsed)
            command.error(unrecognized_message(unknown, _option_names(command), command.prog))
        return parsed

    def _is_unknown_option(self, arg: str) -> bool:
        if not arg.startswith("--") or arg == "--":
            return False
        name = arg.split("=", 1)[0]
        return not any(option.startswith(name) for option in self._option_string_actions)  # abbreviations too


def unrecognized_message(unknown: list[str], known_options: list[str], prog: str) -> str:
    """One line about the first unknown argument, with the option it most likely meant when there is one."""
    first = next((arg for arg in unknown if arg.startswith("-")), unknown[0]).split("=", 1)[0]
    if not first.startswith("-"):
        return f"unrecognized argument {first!r} (see {prog} --help)"
    suggestion = suggest_option(first, known_options)
    return f"unrecognized argument {first}: " + (
        f"did you mean {suggestion}?" if suggestion else f"see {prog} --help for the options"
    )


def suggest_option(name: str, known_options: list[str]) -> str | None:
    """The option of `known_options` that `name` most likely meant: a synonym from OPTION_SYNONYMS, else the
    closest spelling, else None."""
    synonyms = [option for option in OPTION_SYNONYMS.get(name.lower(), ()) if option in known_options]
    if synonyms:
        return synonyms[0]
    close = difflib.get_close_matches(name.lower(), known_options, n=1, cutoff=0.6)
    return close[0] if close else None


def _chosen_command(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> argparse.ArgumentParser:
    """The sub-command's parser that `parsed` ran (`parser` itself when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(getattr(parsed, action.dest, None), parser)
    return parser


def _option_names(parser: argparse.ArgumentParser) -> list[str]:
    return [name for action in parser._actions for name in action.option_strings if name.startswith("--")]
