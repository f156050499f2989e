"""Every `b24q` command and option says what it is for in `--help`."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from edges.cli import build_parser


def _parsers(parser: argparse.ArgumentParser, path: str = "b24q") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _undocumented() -> list[str]:
    missing = []
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                # each command's one line in its parent's --help
                documented = {choice.dest for choice in action._choices_actions if choice.help}
                missing += [f"{path} {name}" for name in action.choices if name not in documented]
                continue
            if not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_command_and_option_has_help() -> None:
    missing = _undocumented()
    assert not missing, "give these help text: " + ", ".join(missing)


def test_the_walk_sees_every_command() -> None:
    # the test above walks the whole tree, down to the options of nested commands
    paths = [path for path, _ in _parsers(build_parser())]
    assert {"b24q enqueue", "b24q portal auth", "b24q dead replay", "b24q job show", "b24q demo"} <= set(paths)
