"""IGT's ported xe_exec_sip_eudebug subtests (``xe_eudebug/igt/sip.py``) through pytest, on a
private simulator whose job timeout is scaled to 1 s (served as the engines' job_timeout_ms),
with IGT's INTEL_SIMULATION=1 allowance, as the conformance run gives IGT's own binary
(tests/igt/test_igt_conformance.py, SIP_ENV)."""

from __future__ import annotations

import os

import pytest

from xe_eudebug.device import engine_job_timeout_ms, open_device
from xe_eudebug.igt import sip
from xe_eudebug.igt.registry import Skip, Subtest, subtests
from xe_eudebug.igt.runner import call
from xe_eudebug.sim.config import SOCKET_ENV

SUBTESTS = subtests(sip.BINARY)
JOB_TIMEOUT_MS = 1000


@pytest.fixture(scope="module")
def sip_server(sim_server):
    return sim_server(job_timeout_ms=JOB_TIMEOUT_MS)


@pytest.fixture
def on_sip_server(sip_server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SOCKET_ENV, sip_server.socket)
    monkeypatch.setenv("XE_EUDEBUG_DEVICE", "sim")
    monkeypatch.setenv("INTEL_SIMULATION", "1")


def test_every_subtest_of_the_binary_is_ported() -> None:
    assert [st.name for st in SUBTESTS] == list(sip.PORTED)


def test_engines_serve_the_scaled_job_timeout(on_sip_server: None) -> None:
    """What the subtests read as their allowance: the simulator's job timeout, per engine class
    and GT, through the sysfs attribute."""
    fd = open_device()
    try:
        from xe_eudebug.client import eudebug_engines

        for hwe in eudebug_engines(fd):
            assert engine_job_timeout_ms(fd, hwe.gt_id, hwe.engine_class) == JOB_TIMEOUT_MS
    finally:
        os.close(fd)


@pytest.mark.parametrize("st", SUBTESTS, ids=[st.name for st in SUBTESTS])
def test_sip(st: Subtest, on_sip_server: None) -> None:
    try:
        call(st)
    except Skip as exc:
        pytest.skip(str(exc))
