"""Debug metadata (the eudebug driver's xe_debug_metadata.c): DEBUG_METADATA_CREATE/DESTROY."""

from __future__ import annotations

import errno as E
from typing import TYPE_CHECKING

from ... import uapi as _uapi
from .xe_device_types import MAX_METADATA_LEN, METADATA_NUM, _access_ok, _fail, _lowest_free

_MD_CREATE = _uapi.layout(_uapi.drm_xe_debug_metadata_create, "extensions", "type", "user_addr", "len")
_MD_CREATE_ID = _uapi.layout(_uapi.drm_xe_debug_metadata_create, "metadata_id")
_MD_DESTROY = _uapi.layout(_uapi.drm_xe_debug_metadata_destroy, "extensions", "metadata_id")

if TYPE_CHECKING:
    from .xe_device_types import Caller, DeviceFile


class Metadata:
    def __init__(self, file: DeviceFile, md_id: int, md_type: int, data: bytes) -> None:
        self.file = file
        self.id = md_id
        self.type = md_type
        self.data = data
        self.alive = True


class XeDebugMetadataMixin:
    """The `Kernel` methods of xe_debug_metadata.py (mixed into `Kernel` in xe_device.py)."""

    # -- debug metadata ----------------------------------------------------------------------------
    def _metadata_create(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, md_type, user_addr, length = _MD_CREATE.unpack_from(k)
        dev = file.device
        with self._reading(dev):                   # the discovery gate comes first
            pass
        if ext:
            raise _fail(E.EINVAL, "DEBUG_METADATA_CREATE: extensions")
        if md_type >= METADATA_NUM:
            raise _fail(E.EINVAL, "DEBUG_METADATA_CREATE: type")
        if not user_addr or not length:
            raise _fail(E.EINVAL, "DEBUG_METADATA_CREATE: user_addr/len")
        if not _access_ok(user_addr, length):
            raise _fail(E.EFAULT, "DEBUG_METADATA_CREATE: user range")
        if length >= MAX_METADATA_LEN:
            raise _fail(E.ENOMEM, "DEBUG_METADATA_CREATE: len")
        data = caller.read(user_addr, length)
        with self._reading(dev):
            md_id = _lowest_free(file.metadata)
            md = Metadata(file, md_id, md_type, data)
            file.metadata[md_id] = md
            _MD_CREATE_ID.pack_into(k, _MD_CREATE_ID.offset, md_id)
            conn = self._conn_for(file)
            if conn is not None:
                self._metadata_event(conn, md, True)
        return 0

    def _metadata_destroy(self, file: DeviceFile, caller: Caller, k: bytearray) -> int:
        ext, md_id = _MD_DESTROY.unpack_from(k)
        dev = file.device
        with self._reading(dev):
            if ext:
                raise _fail(E.EINVAL, "DEBUG_METADATA_DESTROY: extensions")
            md = file.metadata.get(md_id)
            if md is None:
                raise _fail(E.ENOENT, "DEBUG_METADATA_DESTROY: metadata_id")
            conn = self._conn_for(file)
            if conn is not None:
                self._metadata_event(conn, md, False)
            del file.metadata[md_id]
            md.alive = False
        return 0
