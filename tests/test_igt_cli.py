"""``xe-eudebug igt``: the subtest list, IGT's wildcard selection, output lines, exit codes and the
results.json / JUnit files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any, Iterator
from xml.etree import ElementTree

import pytest

from xe_eudebug.igt import registry
from xe_eudebug.igt.registry import IGT_ORDER, wildmat
from xe_eudebug.igt.runner import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _igt(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "xe_eudebug", "igt", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def test_list_subtests_is_igts_list_in_igts_order() -> None:
    proc = _igt("--list-subtests")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == list(IGT_ORDER)


@pytest.mark.parametrize("pattern,expected", [
    ("basic-connect", ["basic-connect"]),
    ("basic-c*", ["basic-connect", "basic-close", "basic-client", "basic-client-th"]),
    ("basic-c*,!basic-client-th", ["basic-connect", "basic-close", "basic-client"]),
    ("*-faultable,!*parameters*", ["basic-vm-access-faultable", "basic-vm-access-userptr-faultable",
                                   "vma-ufence-faultable", "vm-bind-clear-faultable"]),
    ("discovery-race-??????", ["discovery-race-vmbind", "discovery-race-sigint"]),
    ("multigpu-basic-client[-]*", ["multigpu-basic-client-many"]),
])
def test_run_subtest_selects_with_igts_wildcards(pattern: str, expected: list[str]) -> None:
    assert [name for name in IGT_ORDER if wildmat(name, pattern)] == expected
    proc = _igt("--list-subtests", "--run-subtest", pattern)
    assert proc.stdout.splitlines() == expected


def test_repeated_run_subtest_selects_the_union_in_igts_order() -> None:
    proc = _igt("--list-subtests", "--run-subtest", "basic-vms", "--run-subtest", "sysfs-toggle")
    assert proc.stdout.splitlines() == ["sysfs-toggle", "basic-vms"]


def test_unknown_subtest_is_igts_invalid_exit() -> None:
    proc = _igt("--run-subtest", "no-such-subtest")
    assert proc.returncode == 79
    assert "Unknown subtest: no-such-subtest" in proc.stderr


def test_passing_subtests_print_igts_lines_and_exit_0(tmp_path: Any) -> None:
    results, junit = tmp_path / "r.json", tmp_path / "r.xml"
    proc = _igt("--run-subtest", "basic-connect,basic-close", "--results", str(results), "--junit", str(junit))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "Starting subtest: basic-connect"
    assert re.fullmatch(r"Subtest basic-connect: SUCCESS \(\d+\.\d{3}s\)", lines[1]), lines
    assert lines[2] == "Starting subtest: basic-close"
    assert re.fullmatch(r"Subtest basic-close: SUCCESS \(\d+\.\d{3}s\)", lines[3]), lines

    data = json.loads(results.read_text())
    assert data["__type__"] == "TestrunResult" and data["results_version"] == 10
    assert set(data["tests"]) == {"igt@xe_eudebug@basic-connect", "igt@xe_eudebug@basic-close"}
    entry = data["tests"]["igt@xe_eudebug@basic-connect"]
    assert set(entry) == {"out", "err", "dmesg", "result", "time"}
    assert entry["result"] == "pass"
    assert entry["time"]["__type__"] == "TimeAttribute" and entry["time"]["start"] == 0.0
    assert entry["time"]["end"] > 0
    assert entry["out"].startswith("Starting subtest: basic-connect\n")
    assert re.search(r"Subtest basic-connect: SUCCESS \(\d+\.\d{3}s\)\n$", entry["out"])
    assert data["totals"][""]["pass"] == 2 and data["totals"]["igt@xe_eudebug"]["fail"] == 0

    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "0"
    assert [c.get("name") for c in suite.findall("testcase")] == ["basic-connect", "basic-close"]


def test_missing_device_is_a_skip_with_the_reason(tmp_path: Any) -> None:
    results = tmp_path / "r.json"
    node = str(tmp_path / "renderD200")
    proc = _igt("--device", node, "--run-subtest", "basic-connect", "--results", str(results))
    assert proc.returncode == 77, proc.stdout + proc.stderr
    assert "Test requirement not met: no Xe device: " in proc.stdout and node in proc.stdout
    assert re.search(r"^Subtest basic-connect: SKIP \(\d+\.\d{3}s\)$", proc.stdout, re.M)
    assert json.loads(results.read_text())["tests"]["igt@xe_eudebug@basic-connect"]["result"] == "skip"


@pytest.fixture
def extra_subtest() -> Iterator[Any]:
    """Register subtests for one test (``extra_subtest(name)(func)``), removed afterwards."""
    names: list[str] = []

    def register(name: str) -> Any:
        names.append(name)
        return registry.subtest(name)

    yield register
    for name in names:
        registry._REGISTRY.pop((registry.DEFAULT_BINARY, name), None)


def test_failing_subtest_prints_one_traceback_and_bounded_output(extra_subtest: Any, capfd: Any,
                                                                 tmp_path: Any) -> None:
    @extra_subtest("zz-failing-subtest")
    def failing() -> None:
        for i in range(1000):
            print(f"client output line {i}")
        assert 1 + 1 == 3, "the check that fails"

    results, junit = tmp_path / "r.json", tmp_path / "r.xml"
    code = main(["--run-subtest", "zz-failing-*", "--results", str(results), "--junit", str(junit)])
    out = capfd.readouterr().out
    assert code == 98
    assert out.count("Traceback (most recent call last)") == 1
    assert "AssertionError: the check that fails" in out
    assert "client output line 999" in out and "client output line 0\n" not in out
    assert len(out.splitlines()) < 100
    assert re.search(r"^Subtest zz-failing-subtest: FAIL \(\d+\.\d{3}s\)$", out, re.M)
    entry = json.loads(results.read_text())["tests"]["igt@xe_eudebug@zz-failing-subtest"]
    assert entry["result"] == "fail"
    assert entry["out"].count("client output line") == 1000       # the file keeps everything
    assert "AssertionError: the check that fails" in entry["err"]
    case = ElementTree.parse(junit).getroot().find("testsuite/testcase")
    assert case is not None and case.find("failure") is not None


def test_failure_beats_success_and_skip_in_the_exit_code(extra_subtest: Any, capfd: Any) -> None:
    from xe_eudebug.igt.registry import skip

    extra_subtest("zz-a-pass")(lambda: None)
    extra_subtest("zz-b-skip")(lambda: skip("not here"))
    assert main(["--run-subtest", "zz-a-pass,zz-b-skip"]) == 0
    assert main(["--run-subtest", "zz-b-skip"]) == 77
    out = capfd.readouterr().out
    assert "Test requirement not met: not here" in out


def test_ctrl_c_stops_the_run_with_one_line(extra_subtest: Any, capfd: Any) -> None:
    ran: list[str] = []

    @extra_subtest("zz-interrupted")
    def interrupted() -> None:
        ran.append("interrupted")
        raise KeyboardInterrupt

    @extra_subtest("zz-not-reached")
    def not_reached() -> None:
        ran.append("not reached")

    code = main(["--run-subtest", "zz-interrupted,zz-not-reached"])
    captured = capfd.readouterr()
    assert code == 130 and ran == ["interrupted"]
    assert captured.err.strip().splitlines() == [
        "Interrupted in subtest zz-interrupted: stopped after 0 of 2 subtest(s)"]
    assert "Traceback" not in captured.out + captured.err


def test_device_shape_gives_a_subtest_a_simulator_of_that_shape(capfd: Any) -> None:
    """A subtest registered with ``device_shape=("--tiles", "2")`` runs, on the simulator, on a
    device of two tiles (a private instance the runner starts and stops); ``--discrete`` gives
    it VRAM; a subtest without a shape sees the run's device; a malformed shape is refused at
    registration."""
    from xe_eudebug.device import has_vram, open_device
    from xe_eudebug.igt import clients as ic
    from xe_eudebug.igt.runner import call

    seen: dict[str, Any] = {}

    def look(fd: int, key: str) -> None:
        seen[key] = (len(ic.gt_list(fd)), has_vram(fd))

    try:
        registry.subtest("zz-two-tiles", device_shape=("--tiles", "2"), key="tiles")(look)
        registry.subtest("zz-discrete", device_shape=("--discrete",), key="discrete")(look)
        registry.subtest("zz-plain", key="plain")(look)
        for name in ("zz-two-tiles", "zz-discrete", "zz-plain"):
            call(registry._REGISTRY[(registry.DEFAULT_BINARY, name)])
    finally:
        for name in ("zz-two-tiles", "zz-discrete", "zz-plain"):
            registry._REGISTRY.pop((registry.DEFAULT_BINARY, name), None)
    assert seen == {"tiles": (2, False), "discrete": (1, True), "plain": (1, False)}
    assert "Device shape --tiles 2: a private simulator instance" in capfd.readouterr().out
    fd = open_device()
    try:
        assert len(ic.gt_list(fd)) == 1                 # the environment is the run's again
    finally:
        os.close(fd)
    with pytest.raises(ValueError, match="--tiles N"):
        registry.subtest("zz-bad-shape", device_shape=("--tiles",))(look)
