"""The write-back PAT index the vm_bind wrappers use, checked against IGT's table.

IGT's ``intel_get_pat_idx_wb`` (lib/intel_pat.c) picks the index from the platform's graphics
version (lib/intel_device_info.c) and, for Meteor Lake/Arrow Lake and Ponte Vecchio, from the
platform itself (lib/pciids.h).  The port derives it from the graphics IP version the kernel
reports in the GT list (0.0 on platforms that predate the GMD_ID register).
"""

from __future__ import annotations

import os

import pytest

from xe_eudebug.client import PVC_DEVICE_IDS, pat_index_wb, wb_pat_index
from xe_eudebug.device import device_id, graphics_version, open_device

# (platform, PCI device ids from IGT's lib/pciids.h, a graphics IP the kernel reports for them, IGT's wb)
IGT_TABLE = [
    ("Tiger Lake", [0x9A40, 0x9A49, 0x9A60], (0, 0), 0),
    ("DG2", [0x5690, 0x56A0, 0x56B0], (0, 0), 0),
    ("ATS-M", [0x56C0, 0x56C1, 0x56C2], (0, 0), 0),
    ("Ponte Vecchio", [0x0B69, 0x0B6E, 0x0BD4, 0x0BD5, 0x0BD6, 0x0BD7, 0x0BD8, 0x0BD9, 0x0BDA, 0x0BDB,
                       0x0BE0, 0x0BE1, 0x0BE5], (0, 0), 3),
    # (IGT gives every MTL and ARL id Meteor Lake's info; their GMD_ID reads 12.70, 12.71 or 12.74)
    ("Meteor Lake", [0x7D40, 0x7D45, 0x7D55, 0x7D60, 0x7DD5], (12, 70), 3),
    ("Meteor Lake 12.71", [0x7D40, 0x7D45, 0x7D55, 0x7D60, 0x7DD5], (12, 71), 3),
    ("Arrow Lake", [0x7D51, 0x7DD1, 0x7D41, 0x7D67, 0xB640], (12, 74), 3),
    ("Arrow Lake 12.70", [0x7D41, 0x7D67, 0xB640], (12, 70), 3),
    ("Lunar Lake", [0x6420, 0x64A0, 0x64B0], (20, 4), 2),
    ("Battlemage", [0xE202, 0xE209, 0xE20B, 0xE20C, 0xE20D, 0xE210, 0xE211, 0xE212, 0xE216,
                    0xE220, 0xE221, 0xE222, 0xE223], (20, 1), 2),
    ("Panther Lake", [0xB080, 0xB081, 0xB082, 0xB083, 0xB084, 0xB085, 0xB086, 0xB087, 0xB08F,
                      0xB090, 0xB0A0, 0xB0B0, 0xFD80, 0xFD81], (30, 0), 2),
]


@pytest.mark.parametrize("platform,devids,ip,expected", IGT_TABLE, ids=[row[0] for row in IGT_TABLE])
def test_pat_index_wb_matches_igt(platform: str, devids: list[int], ip: tuple[int, int], expected: int) -> None:
    for devid in devids:
        assert pat_index_wb(ip[0], ip[1], devid) == expected, f"{platform} {devid:#06x} (IP {ip[0]}.{ip[1]:02d})"


def test_pvc_ids_are_igts() -> None:
    assert {0x0B69, 0x0B6E, 0x0BE0, 0x0BE1, 0x0BE5} <= PVC_DEVICE_IDS
    assert all(0x0B00 <= d <= 0x0BFF for d in PVC_DEVICE_IDS)


def test_unknown_graphics_version_uses_zero_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert pat_index_wb(35, 0, 0x1234) == 0
    assert "no PAT settings for graphics IP 35.00" in caplog.text


def test_device_reports_its_graphics_version_and_the_wrappers_use_it() -> None:
    fd = open_device()
    try:
        major, minor, _rev = graphics_version(fd)
        if not os.environ.get("XE_EUDEBUG_DEVICE", "").startswith("/"):
            # the simulator models Lunar Lake 0x64A0, graphics IP 20.04
            assert (device_id(fd), major, minor) == (0x64A0, 20, 4)
        assert wb_pat_index(fd) == pat_index_wb(major, minor, device_id(fd))
    finally:
        os.close(fd)
