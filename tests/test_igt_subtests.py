"""IGT's ported xe_eudebug subtests (``xe_eudebug/igt/``) through pytest: one test per registered
subtest, its id the IGT name (``pytest -k basic-connect``); a subtest's ``Skip`` is a pytest skip.

They run on the run's private simulator or on real hardware (``XE_EUDEBUG_DEVICE=/dev/dri/renderD*``);
``docs/subtests.md`` maps every subtest.  Below them, checks of the ports' own helpers.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

from xe_eudebug.device import open_device
from xe_eudebug.igt import clients as ic
from xe_eudebug.igt.iface import _switch_user, _users, igt_exec_queue_values
from xe_eudebug.igt.registry import Skip, Subtest, subtests
from xe_eudebug.igt.runner import call

SUBTESTS = subtests()

#: pytest-timeout for the subtests whose run time grows with the machine's load past the suite's
#: default (pyproject: 180 s): every CONNECT of the discovery races waits for the other
#: connections' discoveries on the device (43-221 s measured at load average 20 on 2 cores).  They
#: fail by themselves when one of their steps is stuck (discovery.RACE_STALL_S).
LOAD_BOUND_S = {"discovery-race": 900, "discovery-race-vmbind": 900, "discovery-race-sigint": 900}


def _param(st: Subtest) -> Any:
    marks = [pytest.mark.timeout(LOAD_BOUND_S[st.name])] if st.name in LOAD_BOUND_S else []
    return pytest.param(st, id=st.name, marks=marks)


@pytest.fixture
def fd() -> Any:
    """The device with eudebug enabled, for the helper checks below (the subtests get theirs
    from the registry's runner)."""
    from xe_eudebug.igt.runner import device_fixture

    try:
        with device_fixture() as dev:
            yield dev
    except Skip as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("st", [_param(st) for st in SUBTESTS])
def test_igt(st: Subtest, request: pytest.FixtureRequest) -> None:
    """Run the registered subtest; the session's ``sim_server`` factory serves its extra
    simulator instances."""
    provided = {name: request.getfixturevalue(name) for name in st.fixtures if name == "sim_server"}
    try:
        call(st, provided)
    except Skip as exc:
        pytest.skip(str(exc))


# ------------------------------------------------------------------------------------------------
# Checks of the ports themselves

def test_private_simulator_is_closed_to_other_users(fd: int) -> None:
    """The counterpart on the simulator: a private instance (socket 0600 in a 0700 directory)
    refuses a process that dropped to user lp, even over the connection its parent made, as a
    node that is root's only would (open(2) checks the caller's credentials at the time)."""
    if os.environ.get("XE_EUDEBUG_DEVICE", "").startswith("/"):
        pytest.skip("a property of the simulator's private instance")
    lp, video = _users()

    def child() -> None:
        _switch_user(lp.pw_uid, lp.pw_gid, video)
        with pytest.raises(OSError) as info:
            open_device()
        assert info.value.errno == errno.EACCES, info.value

    ic.run_forked(child, 30).join()


def test_igt_exec_queue_values_include_the_sign_extended_shift() -> None:
    values = igt_exec_queue_values()
    assert len(values) == 65 and values[32] == 0xFFFFFFFF80000000 and values[64] == 0xFFFFFFFF80000000
    assert values[1:32] == [1 << n for n in range(31)] and values[33:64] == values[1:32]
