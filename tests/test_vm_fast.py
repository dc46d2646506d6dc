"""VM-fd read grants: the preload library's fast pread of a VM fd (docs/simulator.md, "VM-fd read
grants"; sim/kernel/xe_eudebug_vm.py).

A C debugger (tests/data/vm_read_probe.c, compiled here, run through ``xe-eudebug run``) attaches
to this test process, which is the client: it creates the VM, BOs and binds through the Python
port and fills BOs through their CPU mappings.  The debugger's preads go through the preload
library; after the first pread inside a BO mapping it holds a grant (a mapping of that BO, which
the probe counts in /proc/self/maps) and serves further preads there itself.  Every answer must
be what the server's path gives at that moment.  Without a C compiler the tests skip.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest

from xe_eudebug import uapi as U
from xe_eudebug.sim import port
from xe_eudebug.sim.config import SOCKET_ENV

from kbhelpers import Actions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "tests", "data", "vm_read_probe.c")
CC = os.environ.get("CC", "cc").split()
ADDR = 0x100000
SIZE = 8192

pytestmark = pytest.mark.skipif(shutil.which(CC[0]) is None, reason=f"no C compiler ({CC[0]}) for the C debugger")


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("vmprobe") / "vm_read_probe")
    subprocess.run(CC + ["-O1", "-Wall", "-I", os.path.dirname(SOURCE), "-o", out, SOURCE], check=True, timeout=120)
    return out


class Probe:
    """The C debugger: one command line in, one answer line out."""

    def __init__(self, server, exe: str, env: dict[str, str] | None = None) -> None:
        self.handles = ""  # "CLIENT VM" of the attached client's VM
        full = dict(os.environ)
        full[SOCKET_ENV] = server.socket
        full["PYTHONPATH"] = ROOT + (os.pathsep + full["PYTHONPATH"] if full.get("PYTHONPATH") else "")
        full.update(env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "xe_eudebug", "run", "--no-umockdev", "--", exe],
                                     env=full, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.stderr = ""

    def cmd(self, line: str) -> list[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().split()
        assert answer, f"{line}: the probe ended (status {self.proc.poll()})"
        return answer

    def read(self, fd: int, va: int, n: int, fork: bool = False) -> bytes | int:
        """The bytes a pread returned, or its errno."""
        answer = self.cmd(f"{'forkread' if fork else 'read'} {fd} {va:x} {n}")
        if answer[0] == "err":
            return int(answer[1])
        assert answer[0] == "ok", answer
        return bytes.fromhex(answer[1]) if len(answer) > 1 else b""

    def grants(self) -> int:
        """Mappings of simulated BOs the probe holds (its read grants)."""
        return int(self.cmd("res")[3])

    def close(self) -> None:
        self.stderr = self.proc.communicate(timeout=30)[1]  # closes its stdin: the probe ends


class Client:
    """This process as the debugged client: a device file, an LR VM and BOs."""

    def __init__(self, server) -> None:
        self.a = Actions()
        self.fd = port.open_device(0, socket_path=server.socket)
        ret, self.vm = self.a.vm_create(self.fd)
        assert ret == 0

    def bo(self, fill: bytes) -> int:
        ret, handle = self.a.bo_create(self.fd, SIZE)
        assert ret == 0
        self.a.bo_write(self.fd, handle, SIZE, 0, fill)
        return handle

    def bind(self, handle: int, addr: int = ADDR) -> None:
        assert self.a.bind(self.fd, self.vm, [dict(obj=handle, addr=addr, range=SIZE)]) == 0

    def unbind(self, addr: int = ADDR) -> None:
        assert self.a.bind(self.fd, self.vm, [dict(op=U.DRM_XE_VM_BIND_OP_UNMAP, addr=addr, range=SIZE)]) == 0

    def close(self) -> None:
        self.a.keep.clear()
        os.close(self.fd)


def pattern(seed: int) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(SIZE))


@pytest.fixture(params=["on", "verify"])
def session(request, sim_server, probe):
    """(client, probe, VM fd in the probe) on a private simulator; with grants on, and with every
    pread served from a grant checked against a call (XE_EUDEBUG_VM_FAST=verify), which must
    report no difference."""
    server = sim_server(devices=1, enable_default=True, read_event_timeout=0.5)
    client = Client(server)
    p = Probe(server, probe, {"XE_EUDEBUG_VM_FAST": "1" if request.param == "on" else "verify"})
    try:
        answer = p.cmd(f"attach {os.getpid()}")
        assert answer[0] == "vm", answer
        p.handles = f"{answer[1]} {answer[2]}"
        fd = p.cmd(f"open {p.handles}")
        assert fd[0] == "fd", fd
        yield client, p, int(fd[1])
    finally:
        p.close()
        client.close()
        server.stop()
    assert "differs" not in p.stderr, p.stderr


def test_fast_preads_return_the_bytes_the_server_path_returns(session) -> None:
    client, p, fd = session
    data = pattern(1)
    bo = client.bo(data)
    client.bind(bo)
    user = client.a.alloc("user", SIZE, pattern(9))
    assert user
    assert client.a.bind(client.fd, client.vm, [dict(op=U.DRM_XE_VM_BIND_OP_MAP_USERPTR, userptr_key="user",
                                                     addr=ADDR + 0x10000, range=SIZE)]) == 0
    assert p.grants() == 0
    assert p.read(fd, ADDR, 4) == data[:4]                     # the call, which grants the mapping
    assert p.grants() == 1
    for off, n in [(0, 4), (4, 4), (0x123, 17), (SIZE - 4, 4), (0, SIZE // 2), (SIZE // 2, SIZE // 2)]:
        assert p.read(fd, ADDR + off, n) == data[off:off + n], (off, n)
    client.a.bo_write(client.fd, bo, SIZE, 0x40, b"\xaa" * 8)  # the client's CPU write is seen at once
    assert p.read(fd, ADDR + 0x40, 8) == b"\xaa" * 8
    # outside the grant: the server's answers (short count, hole, userptr memory)
    assert p.read(fd, ADDR + SIZE - 4, 8) == data[SIZE - 4:]
    assert p.read(fd, ADDR + SIZE, 4) == errno.EINVAL
    assert p.read(fd, ADDR + 0x10000 + 8, 8) == pattern(9)[8:16]
    assert p.grants() == 1                                     # userptr memory is never granted
    # through a dup, and in a forked child (the same open file)
    dup = p.cmd(f"dup {fd}")
    assert p.read(int(dup[1]), ADDR + 8, 8) == data[8:16]
    assert p.read(fd, ADDR + 16, 8, fork=True) == data[16:24]


def test_rebinding_another_bo_at_the_address_is_seen_at_once(session) -> None:
    client, p, fd = session
    first, second = pattern(1), pattern(2)
    client.bind(client.bo(first))
    assert p.read(fd, ADDR + 8, 8) == first[8:16]
    assert p.read(fd, ADDR + 8, 8) == first[8:16]              # from the grant
    assert p.grants() == 1
    client.bind(client.bo(second))                             # MAP over the old mapping
    assert p.read(fd, ADDR + 8, 8, fork=True) == second[8:16]  # a forked child drops the stale grant too
    assert p.read(fd, ADDR + 8, 8) == second[8:16]
    client.unbind()
    assert p.read(fd, ADDR + 8, 8) == errno.EINVAL
    client.bind(client.bo(first))
    assert p.read(fd, ADDR + 8, 8) == first[8:16]


def test_preads_after_detach_and_vm_destroy_answer_as_the_server_path(session) -> None:
    client, p, fd = session
    data = pattern(3)
    client.bind(client.bo(data))
    assert p.read(fd, ADDR, 8) == data[:8]
    assert p.read(fd, ADDR, 8) == data[:8]
    assert p.cmd("detach") == ["detached"]
    # the VM fd outlives its debugger connection (kernel-behaviour §6.2) ...
    assert p.read(fd, ADDR + 8, 8) == data[8:16]
    # ... until its VM goes: EINVAL, as the server path answers
    assert client.a.vm_destroy(client.fd, client.vm) == 0
    assert p.read(fd, ADDR + 8, 8) == errno.EINVAL
    assert p.read(fd, ADDR + 8, 8, fork=True) == errno.EINVAL


def test_no_fd_or_mapping_left_after_many_vm_fd_cycles(session) -> None:
    client, p, fd = session
    data = pattern(4)
    client.bind(client.bo(data))
    answer = p.cmd("res")
    base_fds, base_maps = int(answer[1]), int(answer[2])
    for i in range(60):  # more VM files than the grants a process may hold at once
        answer = p.cmd(f"open {p.handles}")
        assert answer[0] == "fd", answer
        new = int(answer[1])
        assert p.read(new, ADDR + 4 * i, 4) == data[4 * i:4 * i + 4]
        assert p.read(new, ADDR + 4 * i, 4) == data[4 * i:4 * i + 4]
        assert p.cmd(f"close {new}") == ["closed"]
    assert p.read(fd, ADDR, 4) == data[:4]
    assert p.cmd(f"close {fd}") == ["closed"]
    answer = p.cmd("res")
    assert int(answer[1]) == base_fds - 1                      # the first VM fd is closed too
    assert int(answer[2]) == base_maps + 1                     # the generation counters' page only
    assert int(answer[3]) == 0
