"""The README documents every setting and every error code the code knows, and docs/security.md names only tests
that exist (no drift)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.mutants import MUTANTS
from workers.errors import ACTIONS
from workers.retries import action_of
from workers.settings import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [name for name in Settings.model_fields if f"B24Q_{name.upper()}" not in README]
    assert not missing, f"document these settings in README.md: {missing}"


def test_every_error_code_and_its_action_is_in_the_readme() -> None:
    missing = [code for code, (cls, _) in ACTIONS.items() if f"| `{code}` | {action_of(cls).value} |" not in README]
    assert not missing, f"document these codes in README.md's retry policy: {missing}"


def test_the_readme_carries_exactly_the_two_setup_commands() -> None:
    block = README.split("## Two commands on a fresh machine")[1].split("```sh")[1].split("```")[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]


def test_every_test_the_threat_model_names_exists() -> None:
    """docs/security.md names, for each row, the test that shows it holds: each one must be there, or the row
    claims a proof it does not have. `::name` right after `path::other` is a test of the same file; a mutant
    named in a row is one `make mutants` knows."""
    root = Path(__file__).parent.parent
    text = (root / "docs" / "security.md").read_text()
    missing = []
    for row in (line for line in text.splitlines() if line.startswith("|")):
        current = ""
        for path, name in re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?[^`]*`", row):
            if path:
                current = path
                if not (root / path).is_file():
                    missing.append(path)
            if name and current and f"def {name}(" not in (root / current).read_text():
                missing.append(f"{current}::{name}")
        for mutant in re.findall(r"mutant `([\w-]+)`", row):
            if mutant not in {m.name for m in MUTANTS}:
                missing.append(f"mutant {mutant}")
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"


def test_every_mutant_still_applies() -> None:
    """Each mutant edits one place that exists once, and names a test that exists: code that moves (a split, a
    rename) takes its mutants with it, or `make mutants` would mutate nothing and prove nothing."""
    root = Path(__file__).parent.parent
    stale = []
    for m in MUTANTS:
        path = root / m.path
        if not path.is_file() or path.read_text().count(m.old) != 1:
            stale.append(f"{m.name}: {m.path}")
        test_path, _, test_name = m.test.partition("::")
        name = test_name.split("[")[0]
        if not (root / test_path).is_file() or (name and f"def {name}(" not in (root / test_path).read_text()):
            stale.append(f"{m.name}: {m.test}")
    assert not stale, f"these mutants no longer apply: {stale}"
