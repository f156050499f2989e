"""The README documents every setting and every error code the code knows (no drift)."""

from __future__ import annotations

from pathlib import Path

from workers.errors import ACTIONS
from workers.settings import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [name for name in Settings.model_fields if f"B24Q_{name.upper()}" not in README]
    assert not missing, f"document these settings in README.md: {missing}"


def test_every_error_code_and_its_action_is_in_the_readme() -> None:
    missing = [code for code, (cls, _) in ACTIONS.items() if f"| `{code}` | {cls.action.value} |" not in README]
    assert not missing, f"document these codes in README.md's retry policy: {missing}"


def test_the_readme_carries_exactly_the_two_setup_commands() -> None:
    block = README.split("## Two commands on a fresh machine")[1].split("```sh")[1].split("```")[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]
