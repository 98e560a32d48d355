"""Property-based CLI test: any argument list given to a command's flags either parses into a valid
config or fails with a one-line user error (argparse's ``SystemExit(2)``, ``ConfigError`` /
``DhpcError``), never a traceback. 1,000 examples in total over the commands with a config."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusion_hpc.cli import CONFIGS, build_parser, command_config
from diffusion_hpc.errors import DhpcError

PARSER = build_parser()
SUBPARSERS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices

#: values a user might type (or mistype)
VALUES = ["0", "1", "-1", "2", "7", "64", "512", "1e999", "-1e999", "nan", "inf", "-inf", "0.5", "1.5", "3e-5",
          "64x64", "0x0", "64x", "x", "30,60", "60,30", "nan,1", "1,inf", "1,2,3", ",", "", " ", "auto", "cpu",
          "cuda:7", "T", "R", "D", "anny", "smpl", "true", "no", "builtin", "../../etc/passwd", "/nonexistent",
          "\x00", "é", "--", "-", "a" * 300]


def _accepted(action: argparse.Action) -> list[str]:
    """The :data:`VALUES` (or choices) that ``action``'s argparse type and choices accept."""
    if action.choices:
        return sorted(map(str, action.choices))
    def accepts(v: str) -> bool:
        try:
            action.type(v)
        except Exception:  # noqa: BLE001 - argparse turns any of these into exit code 2
            return False
        return True

    return [v for v in VALUES if action.type is None or accepts(v)]


def _flag(action: argparse.Action):
    """Tokens of one use of ``action``: the bare flag, or the flag and a value (its choices, typical
    values, or any text), now and then a stray or missing value."""
    flags = st.sampled_from(action.option_strings)
    if action.nargs == 0:
        return flags.map(lambda f: [f])
    typed = _accepted(action)
    value = st.sampled_from(VALUES) | st.text(max_size=12)
    if typed:  # mostly values that get past argparse's own type check into the config's checks
        value = st.integers(0, 4).flatmap(lambda i: value if i == 4 else st.sampled_from(typed))
    pair = st.tuples(flags, value).map(list)
    broken = st.one_of(flags.map(lambda f: [f]), st.sampled_from(VALUES).map(lambda v: [v]))
    return st.integers(0, 9).flatmap(lambda i: broken if i == 9 else pair)  # one use in ten is malformed


def _required(command: str) -> list[list[str]]:
    """A flag and a plausible value for each required field of the command's config, so that most
    examples get past "X is required" into the values' own checks."""
    actions = SUBPARSERS[command]._actions
    options = {s for a in actions for s in a.option_strings}
    fields = [n for n, f in CONFIGS[command].model_fields.items() if f.is_required()]
    flags = [f"--{n.replace('_', '-')}" for n in fields if f"--{n.replace('_', '-')}" in options]
    flags += [a.option_strings[-1] for a in actions if a.required and a.option_strings and a.option_strings[-1] not in flags]
    return [[f, "runs/fuzz.npz" if f == "--out" and command == "estimate" else f"runs/fuzz{f.replace('-', '_')}"]
            for f in flags]


def _argv(command: str):
    actions = [a for a in SUBPARSERS[command]._actions
               if a.option_strings and not {"-h", "--config"} & set(a.option_strings)]
    uses = st.lists(st.one_of(*[_flag(a) for a in actions]), max_size=6)
    required = st.sampled_from([_required(command), []])
    return st.tuples(required, uses).map(lambda ru: [command, *(t for g in ru[0] + ru[1] for t in g)])


COMMANDS = sorted(CONFIGS)
EXAMPLES = 1000 // len(COMMANDS) + 1


def _check(argv: list[str]) -> None:
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = PARSER.parse_args(argv)
        except SystemExit as exc:
            assert exc.code == 2, (argv, exc.code)
            return
        try:
            command_config(args)
        except DhpcError:  # ConfigError, InputError, MissingModelError: one line, exit code 2
            pass


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_flags_never_raise_a_traceback(command):
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_argv(command))
    def run(argv):
        _check(argv)

    run()


def test_check_catches_a_traceback(monkeypatch):
    import sys

    def boom(args):
        raise ValueError("a bug")

    monkeypatch.setattr(sys.modules[__name__], "command_config", boom)
    with pytest.raises(ValueError, match="a bug"):
        _check(["train", "--out", "runs/x"])
