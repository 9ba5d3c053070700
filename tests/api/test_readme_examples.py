"""The README's HTTP examples, pasted as a new user pastes them: every `$ curl` line
against localhost:8080 runs as written (but for the port) against a server on the default
model, and answers what the README shows under it. The Triton client example runs too.
Batch events, which need the sample files, are tests/test_scripts.py's."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.server import ROOT, ServerProcess

README = ROOT / "README.md"
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)
# Headers whose value differs from one request, or one machine, to the next: their form.
VARYING = {
    "ce-id": r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    "ce-time": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00",
    "ce-source": r"/warmstart/\S+",
}


@dataclass
class Example:
    line: int  # in README.md
    command: str
    shown: list[str]  # what the README prints under it

    def __str__(self) -> str:
        return f"README.md:{self.line}"


def blocks(language: str) -> list[tuple[int, str]]:
    """The README's code blocks in `language`: (the line of their first line, text)."""
    text = README.read_text()
    return [(text[: m.start()].count("\n") + 2, m.group(2)) for m in BLOCK.finditer(text) if m.group(1) == language]


def curl_examples() -> list[list[Example]]:
    """Per code block, its curl examples: a block's examples run in order (its feedback
    scores the predictions its first example asked for)."""
    found = []
    for first, text in blocks("sh"):
        examples = []
        lines = text.splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].startswith("$ "):
                i += 1
                continue
            start, command = i, lines[i][2:]
            while command.endswith("\\"):  # bash joins a line ending in a backslash to the next
                i += 1
                command = command[:-1].rstrip() + " " + lines[i].strip()
            i += 1
            shown = []
            while i < len(lines) and not lines[i].startswith("$ "):
                shown.append(lines[i])
                i += 1
            if command.startswith("curl ") and "localhost:8080" in command and "warmstart.batch.v1" not in command:
                examples.append(Example(first + start, command, shown))
        if examples:
            found.append(examples)
    return found


EXAMPLES = curl_examples()


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (Debian: apt-get install curl); the README's examples use it")
    proc = ServerProcess({"WORKERS": "2"}, log_dir=tmp_path_factory.mktemp("readme")).start()
    proc.wait_ready()
    yield proc
    proc.kill()


def same(got: Any, shown: Any, where: str = "") -> None:
    """JSON values equal, floats to 6 significant digits (the README rounds none, but a
    last bit may differ from one build of onnxruntime to another)."""
    if isinstance(shown, float) or isinstance(got, float):
        assert isinstance(got, (int, float)) and math.isclose(got, shown, rel_tol=1e-6, abs_tol=1e-9), where
    elif isinstance(shown, dict):
        assert isinstance(got, dict) and list(got) == list(shown), (where, list(got), list(shown))
        for key in shown:
            same(got[key], shown[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(got, list) and len(got) == len(shown), (where, got, shown)
        for i, (g, s) in enumerate(zip(got, shown)):
            same(g, s, f"{where}[{i}]")
    else:
        assert got == shown, (where, got, shown)


def check_headers(got: list[str], shown: list[str], example: Example) -> None:
    """Each header the README shows, with its value (or, for VARYING ones, its form)."""
    headers = {}
    for line in got:
        name, _, value = line.partition(": ")
        headers[name.lower()] = value
    for line in shown:
        name, _, value = line.partition(": ")
        assert name.lower() in headers, f"{example}: no {name} header in {got}"
        pattern = VARYING.get(name.lower())
        if pattern:
            assert re.fullmatch(pattern, headers[name.lower()]), f"{example}: {name}: {headers[name.lower()]}"
        else:
            assert headers[name.lower()] == value, f"{example}: {name}: {headers[name.lower()]!r}, shown {value!r}"


def test_the_readme_has_the_examples_this_checks():
    paths = [re.search(r"localhost:8080(\S*)", e.command).group(1) for block in EXAMPLES for e in block]
    for path in ("/predict", "/v1/models/breast-cancer-rf:predict", "/feedback", "/explain", "/", "/v2/models/"):
        assert any(p.startswith(path) for p in paths), path


@pytest.mark.parametrize("block", EXAMPLES, ids=lambda block: str(block[0]))
def test_each_curl_example_answers_what_the_readme_shows(readme_server, block):
    for example in block:
        answers_as_shown(readme_server, example)


def answers_as_shown(server: ServerProcess, example: Example) -> None:
    command = example.command.replace("localhost:8080", f"127.0.0.1:{server.port}")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (str(example), result.stderr)
    shown = [line for line in example.shown if line.strip()]
    out = result.stdout.replace("\r\n", "\n")
    if shown[0].startswith("HTTP/"):  # curl -si: the status line, headers, a blank line, the body
        head, _, body = out.partition("\n\n")
        status, *headers = head.splitlines()
        assert status == shown[0], f"{example}: {status}"
        check_headers(headers, shown[1:-1], example)
        same(json.loads(body), json.loads(shown[-1]), str(example))
    elif not shown[0].startswith(("{", "[")):  # header lines picked out with grep
        check_headers(out.splitlines(), shown, example)
    else:
        same(json.loads(out), json.loads("\n".join(shown)), str(example))


def test_the_triton_client_example_runs_as_written(readme_server):
    ((_, code),) = [(line, text) for line, text in blocks("python") if "tritonclient" in text]
    code = code.replace('"localhost:8080"', f'"127.0.0.1:{readme_server.port}"')
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    printed = [float(v) for v in re.findall(r"[-+\d.e]+", result.stdout)]
    assert len(printed) == 4 and all(0 <= v <= 1 for v in printed), result.stdout
    assert math.isclose(printed[0] + printed[1], 1, abs_tol=1e-5), result.stdout
