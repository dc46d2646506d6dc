"""IGT's own xe_eudebug and xe_eudebug_online binaries as the simulator's conformance suite.

Every subtest of ``xe_eudebug`` runs in its own process through ``xe-eudebug run --devices 2``
(a private simulator with two devices, the preload library, umockdev for udev and sysfs), every
subtest of ``xe_eudebug_online`` (EU threads: breakpoints, attention, EU control) through
``xe-eudebug run``.  The list and the reason for every excluded subtest live in
``xe_eudebug.expected`` and ``xe_eudebug_online.expected`` beside this file; a subtest on an
expected-pass list that does not report SUCCESS fails.  IGT's own result line of every subtest is
printed at the end of the session (conftest.py beside this file).  The online binary's client
and debugger talk through SysV message queues sized 1 MiB: with a smaller
``/proc/sys/kernel/msgmnb`` its tests skip and say so (``.ci/run`` raises it when it runs as
root).

The binary comes from ``tools/build-igt.sh`` (``build/igt`` in the repository, or ``IGT_BUILD``);
without it, or without umockdev-run or a C compiler, the tests skip and say why.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from xe_eudebug.sim.config import SOCKET_ENV

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXPECTED = os.path.join(HERE, "xe_eudebug.expected")
ONLINE_EXPECTED = os.path.join(HERE, "xe_eudebug_online.expected")
MSGMNB = "/proc/sys/kernel/msgmnb"
MSGMNB_NEEDED = 1 << 20          # IGT's allocator queue: MAXQLEN requests (intel_allocator)
SUBTEST_TIMEOUT = 300  # seconds; the slowest subtest (basic-vm-bind-ufence-delay-ack) sleeps ~50 s
RESULT = re.compile(r"^Subtest (\S+): (SUCCESS|FAIL|SKIP|CRASH|TIMEOUT)\b.*$", re.M)

#: IGT's result line per subtest, printed by conftest.py at the end of the session
RESULTS: dict[str, str] = {}


def _load(path: str = EXPECTED) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("!"):
                name, _, reason = line[1:].partition(":")
                out.append((name.strip(), reason.strip() or "excluded"))
            else:
                out.append((line, None))
    return out


SUBTESTS = _load()
ONLINE_SUBTESTS = _load(ONLINE_EXPECTED)


def igt_binary(name: str = "xe_eudebug") -> str:
    build = os.environ.get("IGT_BUILD") or os.path.join(ROOT, "build", "igt")
    return os.path.join(build, "tests", name)


def _msgmnb() -> int | None:
    try:
        with open(MSGMNB) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _missing(name: str = "xe_eudebug") -> str | None:
    binary = igt_binary(name)
    if name == "xe_eudebug_online":
        size = _msgmnb()
        if size is not None and size < MSGMNB_NEEDED:
            return (f"{MSGMNB} is {size}: IGT's online tests need {MSGMNB_NEEDED} for their "
                    "allocator's message queue (sysctl -w kernel.msgmnb=1048576 as root)")
    if not os.access(binary, os.X_OK):
        return f"no IGT build at {binary} (tools/build-igt.sh builds it from IGT_SRC)"
    if shutil.which("umockdev-run") is None:
        return "umockdev-run not installed (Debian package umockdev): IGT's device scan needs udev"
    if shutil.which(os.environ.get("CC", "cc").split()[0]) is None:
        return "no C compiler to build the preload library"
    return None


def test_list_matches_the_binary() -> None:
    """The expected list names exactly the binary's subtests (a new or renamed one is noticed)."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    listed = subprocess.run([igt_binary(), "--list-subtests"], stdout=subprocess.PIPE, text=True,
                            timeout=60, check=True).stdout.split()
    assert sorted(listed) == sorted(name for name, _ in SUBTESTS)


@pytest.mark.timeout(SUBTEST_TIMEOUT + 60)
@pytest.mark.parametrize("name,excluded", SUBTESTS, ids=[name for name, _ in SUBTESTS])
def test_subtest(name: str, excluded: str | None) -> None:
    _run_subtest("xe_eudebug", ["--devices", "2"], name, excluded)


def test_online_list_matches_the_binary() -> None:
    """xe_eudebug_online.expected names exactly the online binary's subtests."""
    reason = _missing("xe_eudebug_online")
    if reason:
        pytest.skip(reason)
    listed = subprocess.run([igt_binary("xe_eudebug_online"), "--list-subtests"],
                            stdout=subprocess.PIPE, text=True, timeout=60, check=True).stdout.split()
    assert sorted(listed) == sorted(name for name, _ in ONLINE_SUBTESTS)


@pytest.mark.timeout(SUBTEST_TIMEOUT + 60)
@pytest.mark.parametrize("name,excluded", ONLINE_SUBTESTS, ids=[name for name, _ in ONLINE_SUBTESTS])
def test_online_subtest(name: str, excluded: str | None) -> None:
    _run_subtest("xe_eudebug_online", [], name, excluded)


ALLOCATOR_KEY = "/tmp/igt.allocator.key"     # IGT's ftok() file for its allocator's SysV queue
_isolation: list[list[str]] = []


def _private_allocator_key() -> list[str]:
    """A command prefix that gives the IGT process its own allocator queue.  IGT keys that queue
    with ftok() on a fixed file and removes any queue it finds under the key at start, so two
    IGT programs running at once on a machine break each other (EIDRM in the first one's
    allocator).  In a private mount namespace a bind mount of a file of our own over the key
    file gives another inode, hence another key.  Without unshare(1) or the privilege to mount
    (the check runs once), the prefix is empty and runs are only safe one at a time."""
    if not _isolation:
        prefix: list[str] = []
        unshare = shutil.which("unshare")
        if unshare:
            try:
                open(ALLOCATOR_KEY, "a").close()
                where = tempfile.mkdtemp(prefix="igt-key-")
                atexit.register(shutil.rmtree, where, True)
                key = os.path.join(where, "allocator.key")
                open(key, "w").close()
                script = f'mount --bind "{key}" "{ALLOCATOR_KEY}" && exec "$@"'
                probe = subprocess.run([unshare, "-m", "--propagation", "private", "sh", "-c",
                                        script, "sh", "true"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, timeout=30)
                if probe.returncode == 0:
                    prefix = [unshare, "-m", "--propagation", "private", "sh", "-c", script, "sh"]
            except (OSError, subprocess.SubprocessError):
                prefix = []
        _isolation.append(prefix)
    return _isolation[0]


def _run_subtest(binary: str, run_args: list[str], name: str, excluded: str | None) -> None:
    reason = _missing(binary)
    if reason:
        pytest.skip(reason)
    if excluded and excluded.startswith("not run:"):
        pytest.skip(f"{binary} {name}: {excluded}")
    env = dict(os.environ)
    env.pop(SOCKET_ENV, None)  # a private simulator instance per subtest, not the session's
    env.pop("XE_EUDEBUG_DEVICE", None)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "xe_eudebug", "run", *run_args, "--",
           *_private_allocator_key(), igt_binary(binary), "--run-subtest", name]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace", timeout=SUBTEST_TIMEOUT)
        output, status = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        output = out.decode(errors="replace") if isinstance(out, bytes) else out
        status = None
    found = [m for m in RESULT.finditer(output) if m.group(1) == name]
    line = found[-1].group(0) if found else \
        f"Subtest {name}: no result (exit status {status if status is not None else 'timeout'})"
    RESULTS[name if binary == "xe_eudebug" else f"{binary}/{name}"] = \
        line + (f"   [excluded: {excluded}]" if excluded else "")
    success = bool(found) and found[-1].group(2) == "SUCCESS" and status == 0
    if excluded:
        if not success:
            pytest.xfail(f"{line} (excluded: {excluded})")
        return  # now passes: it can move to the expected-pass list
    assert success, f"{line}\n--- output of {' '.join(cmd)}:\n{output[-6000:]}"
