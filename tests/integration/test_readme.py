"""The README's code blocks run as written: every Python, shell (curl included) and Node block against a live
`b24q demo --keep` (the lines it prints to paste come first, as a reader pastes them), in the README's order;
"Running the pieces yourself" on its own, in a shell of its own. A block preceded by
`<!-- snippet: skip (why) -->` is not run (a real portal, a production host, a command that runs until
stopped): the test prints which and why, and there are only a few. JSON blocks must parse, and so must the
`--json '…'` arguments of the skipped ones."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent
README = ROOT / "README.md"
PIECES = "## Running the pieces yourself"
SKIP = re.compile(r"<!-- snippet: skip \((.+)\) -->")
#: a skipped block says why; more than this many means the README stopped being runnable
MOST_SKIPPED = 8


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int
    section: str
    skip: str | None

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang}, {self.section})"


def blocks(text: str) -> list[Block]:
    found: list[Block] = []
    lines = text.splitlines()
    section, previous, i = "", "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line
        if line.startswith("```") and len(line) > 3:
            start, body = i + 1, []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            skip = SKIP.fullmatch(previous.strip())
            found.append(Block(line[3:].strip(), "\n".join(body) + "\n", start, section, skip and skip.group(1)))
        elif line.strip():
            previous = line
        i += 1
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """The environment of a new shell: none of this machine's b24q settings; the venv's commands first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("B24Q_", "FLOWER_")) and k != "REDIS_URL"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def _stop_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> None:
    """End a process started in its own session, and whatever it started in the background."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(15)
    # background children outlive the shell: wait until the group is empty
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@dataclass
class Demo:
    paste: str  # the lines `b24q demo --keep` prints to paste
    http_url: str
    log: Path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`b24q demo --keep` with a few jobs, on free ports; Ctrl-C (SIGINT) stops it and its stack."""
    work = tmp_path_factory.mktemp("demo")
    log = work / "demo.log"
    command = ["b24q", "demo", "--jobs", "300", "--keep", "--http-port", "0", "--flower-port", "0"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=work, env=_clean_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 240
        while "export B24Q_HTTP_URL=" not in log.read_text(errors="replace"):
            assert process.poll() is None, f"the demo exited: {log.read_text(errors='replace')}"
            assert time.monotonic() < deadline, f"the demo printed no lines to paste: {log.read_text()}"
            time.sleep(0.2)
        output = log.read_text(errors="replace")
        tail = output[output.index("To use it from another shell, paste:") :].splitlines()[1:]
        paste = "\n".join(line for line in tail if line.strip())
        http_url = re.search(r"^export B24Q_HTTP_URL=(\S+)$", paste, re.M)
        assert http_url, paste
        yield Demo(paste, http_url.group(1), log)
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C to the demo alone: it stops its stack itself
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(60)
        _stop_group(process)


def _run(block: Block, script: str, cwd: Path, timeout: float = 60) -> str | None:
    """Run one block's script with bash -e; None if it succeeded, else what it printed."""
    try:
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=cwd,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:  # (subprocess.run has killed it)
        return f"{block} did not finish in {timeout:g}s (a command that runs until stopped? mark it):\n{exc.output}"
    if done.returncode == 0:
        return None
    return f"{block} exited {done.returncode}:\n{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


def _output(demo: Demo, command: str, cwd: Path) -> str:
    """What `command` prints in a shell where the demo's lines were pasted."""
    done = subprocess.run(
        ["bash", "-e", "-c", f"{demo.paste}\n{command}"],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_every_readme_block_runs_against_the_demo(demo: Demo, tmp_path: Path) -> None:
    docs_port = "127.0.0.1:8024"  # the README's examples name the HTTP app's default address
    demo_port = demo.http_url.removeprefix("http://")
    failures: list[str] = []
    ran: list[Block] = []
    for block in blocks(README.read_text()):
        if block.skip or block.section == PIECES:
            continue
        text = block.text.replace(docs_port, demo_port)
        if block.lang == "json":
            try:
                json.loads(text)
            except json.JSONDecodeError as exc:
                failures.append(f"{block}: not JSON: {exc}")
            continue
        if block.lang == "python":
            (tmp_path / "produce.py").write_text(text)  # the name the README gives it
            script = f"{demo.paste}\npython produce.py\n"
        elif block.lang == "js":
            (tmp_path / "post-job.mjs").write_text(text)  # the name the README gives it
            script = f"{demo.paste}\nnode post-job.mjs\n"
        elif block.lang == "sh":
            script = f"{demo.paste}\n{text}"
        else:
            failures.append(f"{block}: no way to run a {block.lang!r} block; mark it or teach this test")
            continue
        ran.append(block)
        failure = _run(block, script, tmp_path)
        if failure:
            failures.append(failure)
    assert not failures, "\n\n".join(failures)
    assert {b.lang for b in ran} >= {"python", "sh", "js"}, ran
    # what the examples enqueued reaches the portal: once the queue is empty, no dead letter but the demo's own
    # (its retired SMS provider, which the README's dead-letter example replays)
    deadline = time.monotonic() + 60
    while True:
        status = json.loads(_output(demo, "b24q status --json --timeout 0.5", tmp_path))
        if status["queues"][0]["depth"] == 0 and status["unacked"] == 0:
            break
        assert time.monotonic() < deadline, f"the examples' jobs did not finish: {status}"
        time.sleep(0.5)
    letters = json.loads(_output(demo, "b24q dead list --json", tmp_path))
    assert {letter["code"] for letter in letters} <= {"ERROR_SENDER_NOT_FOUND"}, letters
    print(f"ran {len(ran)} README blocks against the demo: {', '.join(map(str, ran))}")


def test_only_a_few_blocks_are_skipped_each_with_its_reason() -> None:
    found = blocks(README.read_text())
    skipped = [b for b in found if b.skip]
    for block in skipped:
        print(f"skipped {block}: {block.skip}")
    assert len(skipped) <= MOST_SKIPPED, [str(b) for b in skipped]
    # a marker that does not sit right before a block is a typo that would run the block
    markers = len(SKIP.findall(README.read_text()))
    assert markers == len(skipped), "a <!-- snippet: skip (…) --> marker is not right before a code block"
    # the JSON a skipped block passes is still JSON
    for block in skipped:
        for argument in re.findall(r"--json\s+('[^']*')", block.text):
            json.loads(shlex.split(argument)[0])


def test_running_the_pieces_yourself_runs_as_written(tmp_path: Path) -> None:
    [block] = [b for b in blocks(README.read_text()) if b.section == PIECES and b.lang == "sh"]
    text = block.text
    ports = {port: _free_port() for port in ("6390", "8765", "8024", "5555")}
    for documented, free in ports.items():  # never the documented ports: another engineer's run may hold them
        assert documented in text, f"{block} no longer uses port {documented}"
        text = re.sub(rf"\b{documented}\b", str(free), text)
    log = tmp_path / "pieces.log"
    with log.open("wb") as out:
        shell = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", "-c", text],
            cwd=tmp_path,
            env=_clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the shell and its background pieces: `_stop_group` ends them all
        )
    try:
        try:
            code = shell.wait(180)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{block} did not finish: {log.read_text(errors='replace')}")
        output = log.read_text(errors="replace")
        assert code == 0, output
        assert re.search(r"\S+\s+acme\.bitrix24\.test\s+oauth\s+active\s+standard", output), output
        ids = re.search(r'\{"ids":\["([^"]+)"\]\}', output)
        assert ids, output
        env = {**_clean_env(), "B24Q_REDIS_URL": f"redis://127.0.0.1:{ports['6390']}/0"}
        deadline = time.monotonic() + 60
        state = ""
        while state != "applied":
            shown = subprocess.run(
                ["b24q", "job", "show", ids.group(1), "--json"], env=env, capture_output=True, text=True, timeout=30
            )
            state = json.loads(shown.stdout)["state"] if shown.returncode == 0 else shown.stderr
            assert time.monotonic() < deadline, f"the job did not apply: {state}\n{log.read_text(errors='replace')}"
            time.sleep(0.2)
        while True:  # Flower listens where the block says
            try:
                socket.create_connection(("127.0.0.1", ports["5555"]), timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"Flower does not listen: {log.read_text(errors='replace')}"
                time.sleep(0.2)
    finally:
        _stop_group(shell)
