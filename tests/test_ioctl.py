"""The _IOC encoders and decoders and the error paths of the system-call seam."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from xe_eudebug import ioctl as sc
import xe_eudebug.uapi as uapi


@pytest.mark.parametrize("dir_", [sc._IOC_NONE, sc._IOC_READ, sc._IOC_WRITE, sc._IOC_READ | sc._IOC_WRITE])
@pytest.mark.parametrize("type_", [0, ord("d"), ord("j"), 0xFF])
@pytest.mark.parametrize("nr", [0, 1, 0x4E, 0xFF])
@pytest.mark.parametrize("size", [0, 8, 136, (1 << 14) - 1])
def test_ioc_round_trip(dir_, type_, nr, size):
    req = sc._IOC(dir_, type_, nr, size)
    assert (sc._IOC_DIR(req), sc._IOC_TYPE(req), sc._IOC_NR(req), sc._IOC_SIZE(req)) == (dir_, type_, nr, size)


def test_encoders_match_linux_values():
    # values of well-known Linux requests
    assert sc._IOR("E", 0x01, ctypes.c_int) == 0x80044501  # EVIOCGVERSION
    assert sc._IO("j", 0) == 0x6A00
    assert sc._IOW("j", 4, 16) == 0x40106A04
    assert sc._IOWR("j", 2, uapi.drm_xe_eudebug_eu_control) == 0xC0386A02
    assert sc.DRM_IOWR(0x00, uapi.drm_version) == uapi.DRM_IOCTL_VERSION == 0xC0406400
    assert sc.DRM_IO(0x01) == 0x6401
    assert sc.DRM_IOR(0x01, 4) == 0x80046401


@pytest.mark.parametrize("bad", [(4, 0, 0, 0), (0, 256, 0, 0), (0, 0, 256, 0), (0, 0, 0, 1 << 14), (0, 0, -1, 0)])
def test_ioc_rejects_out_of_range_fields(bad):
    with pytest.raises(ValueError):
        sc._IOC(*bad)


def test_ioctl_on_regular_file_names_the_request(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDWR)
    try:
        arg = uapi.drm_xe_vm_create()
        with pytest.raises(OSError) as info:
            sc.ioctl(fd, uapi.DRM_IOCTL_XE_VM_CREATE, arg)
        assert info.value.errno == errno.ENOTTY
        assert "DRM_IOCTL_XE_VM_CREATE" in str(info.value)
        assert sc.try_ioctl(fd, uapi.DRM_IOCTL_XE_VM_CREATE, arg) == -errno.ENOTTY
    finally:
        os.close(fd)


def test_ioctl_on_pipe_returns_enotty_and_unknown_request_is_named_by_hex():
    r, w = os.pipe()
    try:
        assert sc.try_ioctl(r, uapi.DRM_XE_EUDEBUG_IOCTL_READ_EVENT, 0) == -errno.ENOTTY
        with pytest.raises(OSError) as info:
            sc.ioctl(r, 0xC0DE6499, None)
        assert info.value.errno == errno.ENOTTY
        assert "0xc0de6499" in str(info.value)
    finally:
        os.close(r)
        os.close(w)


def test_ioctl_on_closed_fd_is_ebadf():
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    assert sc.try_ioctl(r, uapi.DRM_IOCTL_VERSION, uapi.drm_version()) == -errno.EBADF


def test_address_of_accepts_ctypes_objects_ints_and_none():
    s = uapi.drm_xe_vm_create()
    assert sc.address_of(s) == ctypes.addressof(s)
    assert sc.address_of(0x1000) == 0x1000
    assert sc.address_of(None) == 0
    with pytest.raises(TypeError):
        sc.address_of("not an address")


def test_file_calls_on_regular_file(tmp_path):
    path = tmp_path / "g"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDWR)
    try:
        assert sc.pread(fd, 4, 2) == b"2345"
        assert sc.pwrite(fd, b"ab", 8) == 2
        assert sc.lseek(fd, 3, os.SEEK_SET) == 3
        assert sc.read(fd, 2) == b"34"
        sc.fsync(fd)
        m = sc.mmap(fd, 10, 0)
        assert m[8:10] == b"ab"
        m.close()
        with pytest.raises(OSError) as info:
            sc.pread(fd, 1, -1)
        assert info.value.errno == errno.EINVAL and "pread" in str(info.value)
    finally:
        os.close(fd)


def test_poll_reports_readiness_of_plain_fds():
    import select

    r, w = os.pipe()
    try:
        assert sc.poll([(r, select.POLLIN)], 0) == []
        os.write(w, b"x")
        assert sc.poll([(r, select.POLLIN)], 100) == [(r, select.POLLIN)]
    finally:
        os.close(r)
        os.close(w)


class _FakeBackend:
    """Claims one fd and records the calls it serves."""

    def __init__(self, fd):
        self.fd = fd
        self.calls = []

    def claims(self, fd, st):
        return fd == self.fd

    def ioctl(self, fd, request, addr):
        self.calls.append(("ioctl", request, addr))
        if request == 1:
            raise OSError(errno.EINVAL, "bad")
        return 7

    def read(self, fd, size):
        raise OSError(errno.EINVAL, "no read")

    def pread(self, fd, size, offset):
        return b"z" * size

    def pwrite(self, fd, data, offset):
        return len(data)

    def lseek(self, fd, offset, whence):
        return offset

    def fsync(self, fd):
        self.calls.append(("fsync",))

    def mmap(self, fd, length, offset):
        return bytearray(length)

    def poll_mask(self, fd):
        return 0


def test_backend_routing_and_error_naming():
    r, w = os.pipe()
    backend = _FakeBackend(r)
    sc.register_backend(backend)
    try:
        arg = uapi.drm_xe_vm_destroy()
        assert sc.ioctl(r, uapi.DRM_IOCTL_XE_VM_DESTROY, arg) == 7
        assert backend.calls[-1] == ("ioctl", uapi.DRM_IOCTL_XE_VM_DESTROY, ctypes.addressof(arg))
        assert sc.try_ioctl(r, 1, None) == -errno.EINVAL
        with pytest.raises(OSError) as info:
            sc.read(r, 4)
        assert info.value.errno == errno.EINVAL and str(info.value).startswith("[Errno 22] read:")
        assert sc.pread(r, 3, 0) == b"zzz"
        # an fd the backend does not claim takes the real path
        assert sc.try_ioctl(w, uapi.DRM_IOCTL_XE_VM_DESTROY, arg) == -errno.ENOTTY
    finally:
        sc.unregister_backend(backend)
        os.close(r)
        os.close(w)
