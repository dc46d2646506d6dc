"""``xe-eudebug igt``: list and run the ported IGT subtests the way an IGT binary does.

Output and exit codes follow IGT's ``lib/igt_core.c``: ``Starting subtest: NAME``, then
``Subtest NAME: SUCCESS (0.105s)`` (or SKIP, FAIL); exit 0 when a subtest passed and none failed,
77 when all were skipped, 98 when one failed, 79 when ``--run-subtest`` matches nothing.
``--results FILE.json`` writes igt_runner's ``results.json`` shape, ``--junit FILE.xml`` JUnit.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Iterator
from xml.etree import ElementTree

from .registry import BINARIES, Skip, Subtest, select, shape_config, subtests

EXIT_SUCCESS = 0
EXIT_SKIP = 77
EXIT_INVALID = 79
EXIT_FAILURE = 98
EXIT_INTERRUPTED = 130
#: IGT's binary name, the middle of the runner's test names (``igt@xe_eudebug@basic-connect``);
#: ``--binary xe_eudebug_online`` selects the ports of the online tests.
BINARY = "xe_eudebug"
#: Lines of a failed subtest's captured output printed on the terminal (all of it goes to
#: ``--results``).
FAIL_TAIL_LINES = 40
#: Characters of a subtest's output kept in ``--results`` (the end of it).
RESULTS_OUTPUT_LIMIT = 1 << 20
RESULT_NAMES = {"SUCCESS": "pass", "SKIP": "skip", "FAIL": "fail"}


# ------------------------------------------------------------------------------------------------
# Fixtures: what a subtest's parameters receive


@contextlib.contextmanager
def device_fixture() -> Iterator[int]:
    """IGT's main fixture: the device with eudebug enabled, restored afterwards; skips the
    subtest when the device cannot be opened or eudebug cannot be enabled."""
    from . import clients as ic

    try:
        dev, key = ic.open_enabled_device()
    except OSError as exc:
        raise Skip(f"eudebug cannot be enabled on the device: {exc}") from None
    try:
        yield dev
    finally:
        ic.close_enabled_device(dev, key)


@contextlib.contextmanager
def sim_server_fixture() -> Iterator[Callable[..., object]]:
    """A factory of private simulator instances (``sim_server(devices=2)``), all stopped when the
    subtest ends."""
    from ..sim import start_server
    from ..sim.config import SimConfig

    handles: list[Any] = []

    def factory(*, kernel: str | None = None, verbose: bool = False, **fields: object) -> object:
        fields.setdefault("idle_exit", 0)
        handle = start_server(SimConfig(**fields), kernel=kernel, verbose=verbose)  # type: ignore[arg-type]
        handles.append(handle)
        return handle

    try:
        yield factory
    finally:
        for handle in handles:
            handle.stop()


def _shape_missing(shape: tuple[str, ...]) -> bool:
    """Whether the selected device is simulated and lacks ``shape`` (its tiles, its VRAM);
    False on hardware (the subtest's own checks skip) and when no device opens (the device
    fixture skips, saying why)."""
    from ..device import has_vram, is_simulated, open_device
    from . import clients as ic

    fields = shape_config(shape)
    try:
        fd = open_device()
    except (OSError, ValueError):
        return False
    try:
        if not is_simulated(fd):
            return False
        tiles = len({int(g.tile_id) for g in ic.gt_list(fd)})
        return tiles != fields.get("tiles", tiles) or bool(fields.get("discrete")) and not has_vram(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def device_shape_fixture(shape: tuple[str, ...]) -> Iterator[None]:
    """The device shape a subtest needs (`xe-eudebug run` options, ``--tiles 2``): on a
    simulated device without it, a private simulator instance of that shape (the rest of the
    configuration from ``XE_EUDEBUG_SIM_*``) is the subtest's device until it ends."""
    if not shape or not _shape_missing(shape):
        yield
        return
    from ..sim.config import SimConfig
    from ..sim.launch import selected_instance

    with selected_instance(SimConfig.from_env(**shape_config(shape), idle_exit=0)) as handle:
        print(f"Device shape {' '.join(shape)}: a private simulator instance (pid {handle.pid})")
        yield


FIXTURE_FACTORIES: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
    "fd": device_fixture,
    "sim_server": sim_server_fixture,
}


def call(st: Subtest, provided: dict[str, Any] | None = None) -> None:
    """Run ``st`` with its fixtures: those in ``provided`` (pytest's), the others from
    :data:`FIXTURE_FACTORIES`."""
    provided = provided or {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(device_shape_fixture(st.device_shape))
        kwargs = dict(st.args)
        for name in st.fixtures:
            kwargs[name] = provided[name] if name in provided else stack.enter_context(FIXTURE_FACTORIES[name]())
        st.func(**kwargs)


# ------------------------------------------------------------------------------------------------
# Running with captured output


@dataclasses.dataclass
class Outcome:
    name: str
    result: str          # SUCCESS, SKIP or FAIL
    seconds: float
    out: str = ""
    err: str = ""
    reason: str = ""     # a skip's reason or a failure's traceback


@contextlib.contextmanager
def _captured() -> Iterator[list[str]]:
    """Send fd 1 and fd 2 (this process and the clients it forks) to files; the list receives
    (out, err) when the block ends."""
    texts: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    try:
        os.dup2(files[0].fileno(), 1)
        os.dup2(files[1].fileno(), 2)
        # Python-level writers too (sys.stdout may not be fd 1, for example under pytest).
        with open(1, "w", closefd=False) as out, open(2, "w", closefd=False) as err, \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield texts
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        for f in files:
            f.seek(0)
            texts.append(f.read().decode(errors="replace"))
            f.close()


def run_one(st: Subtest, no_device: str | None = None) -> Outcome:
    """Run one subtest, print IGT's lines for it, and return its outcome."""
    print(f"Starting subtest: {st.name}", flush=True)
    start = time.monotonic()
    result, reason = "SUCCESS", ""
    with _captured() as texts:
        try:
            if no_device is not None:
                raise Skip(no_device)
            call(st)
        except Skip as exc:
            result, reason = "SKIP", str(exc)
        except Exception:  # noqa: BLE001 - any error fails the subtest, as an igt_assert does
            result, reason = "FAIL", traceback.format_exc()
    seconds = time.monotonic() - start
    out, err = texts
    outcome = Outcome(st.name, result, seconds, out, err, reason)
    if result == "SKIP":
        print(f"Test requirement not met: {reason}")
    elif result == "FAIL":
        print(reason, end="" if reason.endswith("\n") else "\n")
        lines = (out + err).splitlines()
        if lines:
            shown = lines[-FAIL_TAIL_LINES:]
            more = len(lines) - len(shown)
            print(f"Output of the subtest{f' (last {len(shown)} of {len(lines)} lines; --results keeps all)' if more else ''}:")
            print("\n".join(shown))
    print(f"Subtest {st.name}: {result} ({seconds:.3f}s)", flush=True)
    return outcome


def exit_code(outcomes: list[Outcome]) -> int:
    """IGT's exit status: a failure is 98; else a success is 0; else (all skipped) 77."""
    if any(o.result == "FAIL" for o in outcomes):
        return EXIT_FAILURE
    if any(o.result == "SUCCESS" for o in outcomes):
        return EXIT_SUCCESS
    return EXIT_SKIP


def device_problem() -> str | None:
    """Why no device can be opened (None when one can): every subtest then skips with it."""
    from ..device import open_device

    try:
        fd = open_device()
    except (OSError, ValueError) as exc:
        return f"no Xe device: {exc}"
    os.close(fd)
    return None


# ------------------------------------------------------------------------------------------------
# Result files


def _time(seconds: float, start: float = 0.0) -> dict[str, Any]:
    return {"__type__": "TimeAttribute", "start": start, "end": start + seconds}


def results_json(outcomes: list[Outcome], started: float, ended: float, argv: list[str],
                 binary: str = BINARY) -> dict[str, Any]:
    """igt_runner's results.json (results_version 10): one ``igt@xe_eudebug@NAME`` entry per
    subtest with result, time, out, err and dmesg, then totals and runtimes."""
    tests: dict[str, Any] = {}
    counts = dict.fromkeys(("crash", "pass", "dmesg-fail", "dmesg-warn", "skip", "incomplete", "abort",
                            "timeout", "notrun", "fail", "warn"), 0)
    for o in outcomes:
        result = RESULT_NAMES[o.result]
        counts[result] += 1
        out = (f"Starting subtest: {o.name}\n{o.out}"
               f"{'Test requirement not met: ' + o.reason + chr(10) if o.result == 'SKIP' else ''}"
               f"Subtest {o.name}: {o.result} ({o.seconds:.3f}s)\n")
        err = o.err + (o.reason if o.result == "FAIL" else "")
        tests[f"igt@{binary}@{o.name}"] = {
            "out": out[-RESULTS_OUTPUT_LIMIT:], "err": err[-RESULTS_OUTPUT_LIMIT:], "dmesg": "",
            "result": result, "time": _time(o.seconds),
        }
    total = sum(o.seconds for o in outcomes)
    return {
        "__type__": "TestrunResult", "results_version": 10, "name": "xe-eudebug igt",
        "uname": " ".join(platform.uname()[:4]), "cmdline": argv,
        "time_elapsed": {"__type__": "TimeAttribute", "start": started, "end": ended},
        "tests": tests,
        "totals": {"": dict(counts), "root": dict(counts), f"igt@{binary}": dict(counts)},
        "runtimes": {f"igt@{binary}": {"time": _time(total)}},
    }


def junit_xml(outcomes: list[Outcome], binary: str = BINARY) -> bytes:
    """JUnit XML: one testsuite ``xe_eudebug``, one testcase per subtest (failure/skipped
    elements with the traceback or the reason, system-out/system-err with the output)."""
    suite = ElementTree.Element("testsuite", {
        "name": binary, "tests": str(len(outcomes)),
        "failures": str(sum(o.result == "FAIL" for o in outcomes)),
        "skipped": str(sum(o.result == "SKIP" for o in outcomes)), "errors": "0",
        "time": f"{sum(o.seconds for o in outcomes):.3f}",
    })
    for o in outcomes:
        case = ElementTree.SubElement(suite, "testcase", {"classname": f"igt.{binary}", "name": o.name,
                                                          "time": f"{o.seconds:.3f}"})
        if o.result == "FAIL":
            failure = ElementTree.SubElement(case, "failure", {"message": o.reason.strip().splitlines()[-1]})
            failure.text = o.reason
        elif o.result == "SKIP":
            ElementTree.SubElement(case, "skipped", {"message": o.reason})
        ElementTree.SubElement(case, "system-out").text = o.out[-RESULTS_OUTPUT_LIMIT:]
        ElementTree.SubElement(case, "system-err").text = o.err[-RESULTS_OUTPUT_LIMIT:]
    root = ElementTree.Element("testsuites")
    root.append(suite)
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None, prog: str = "xe-eudebug igt") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=prog, description="List and run the ported IGT xe_eudebug subtests.")
    parser.add_argument("--binary", default=BINARY, choices=sorted(BINARIES),
                        help="the IGT binary whose ported subtests to list and run (default: %(default)s)")
    parser.add_argument("--list-subtests", action="store_true", help="print the subtest names (those --run-subtest selects)")
    parser.add_argument("--run-subtest", action="append", metavar="GLOB",
                        help="run the subtests GLOB matches (IGT's wildcards: *, ?, [...], a comma list, !NAME "
                             "excludes); repeatable: a subtest any of them matches runs")
    parser.add_argument("--device", metavar="DEV",
                        help="the device: a render node (/dev/dri/renderD128), 'sim' or 'sim:N' (sets XE_EUDEBUG_DEVICE)")
    parser.add_argument("--results", metavar="FILE.json", help="write igt_runner's results.json")
    parser.add_argument("--junit", metavar="FILE.xml", help="write JUnit XML")
    args = parser.parse_args(argv)
    if args.device:
        os.environ["XE_EUDEBUG_DEVICE"] = args.device
    chosen = select(args.run_subtest, args.binary)
    if args.run_subtest and not chosen:
        print(f"Unknown subtest: {','.join(args.run_subtest)}", file=sys.stderr)
        return EXIT_INVALID
    if args.list_subtests:
        for st in chosen:
            print(st.name)
        return EXIT_SUCCESS
    outcomes: list[Outcome] = []
    started = time.time()
    current = None
    try:
        no_device = device_problem()
        for st in chosen:
            current = st.name
            outcomes.append(run_one(st, no_device))
    except KeyboardInterrupt:
        sys.stdout.flush()
        print(f"Interrupted in subtest {current or '(none)'}: stopped after {len(outcomes)} of {len(chosen)} subtest(s)",
              file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        ended = time.time()
        if args.results:
            _write(args.results, json.dumps(results_json(outcomes, started, ended, [prog, *argv], args.binary), indent=2).encode())
        if args.junit:
            _write(args.junit, junit_xml(outcomes, args.binary))
    return exit_code(outcomes)
