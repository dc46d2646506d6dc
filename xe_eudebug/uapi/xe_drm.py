"""Xe driver uapi (``xe_drm.h``): device query, buffer objects, VMs, binds, exec queues, syncs."""

from __future__ import annotations

from ..ioctl import DRM_COMMAND_BASE, DRM_IOW, DRM_IOWR
from ._base import Struct, Union, register_requests, s64, u8, u16, u32, u64

# --- ioctl numbers ---------------------------------------------------------------------------

DRM_XE_DEVICE_QUERY = 0x00
DRM_XE_GEM_CREATE = 0x01
DRM_XE_GEM_MMAP_OFFSET = 0x02
DRM_XE_VM_CREATE = 0x03
DRM_XE_VM_DESTROY = 0x04
DRM_XE_VM_BIND = 0x05
DRM_XE_EXEC_QUEUE_CREATE = 0x06
DRM_XE_EXEC_QUEUE_DESTROY = 0x07
DRM_XE_EXEC = 0x09
DRM_XE_WAIT_USER_FENCE = 0x0A


# --- extensions ------------------------------------------------------------------------------

class drm_xe_user_extension(Struct):
    _fields_ = [
        ("next_extension", u64),
        ("name", u32),
        ("pad", u32),
    ]


class drm_xe_ext_set_property(Struct):
    _fields_ = [
        ("base", drm_xe_user_extension),
        ("property", u32),
        ("pad", u32),
        ("value", u64),
        ("reserved", u64 * 2),
    ]


# --- device query ------------------------------------------------------------------------------

DRM_XE_ENGINE_CLASS_RENDER = 0
DRM_XE_ENGINE_CLASS_COPY = 1
DRM_XE_ENGINE_CLASS_VIDEO_DECODE = 2
DRM_XE_ENGINE_CLASS_VIDEO_ENHANCE = 3
DRM_XE_ENGINE_CLASS_COMPUTE = 4
DRM_XE_ENGINE_CLASS_VM_BIND = 5


class drm_xe_engine_class_instance(Struct):
    _fields_ = [
        ("engine_class", u16),
        ("engine_instance", u16),
        ("gt_id", u16),
        ("pad", u16),
    ]


class drm_xe_engine(Struct):
    _fields_ = [
        ("instance", drm_xe_engine_class_instance),
        ("reserved", u64 * 3),
    ]


class drm_xe_query_engines(Struct):
    _fields_ = [
        ("num_engines", u32),
        ("pad", u32),
        ("engines", drm_xe_engine * 0),
    ]


DRM_XE_MEM_REGION_CLASS_SYSMEM = 0
DRM_XE_MEM_REGION_CLASS_VRAM = 1


class drm_xe_mem_region(Struct):
    _fields_ = [
        ("mem_class", u16),
        ("instance", u16),
        ("min_page_size", u32),
        ("total_size", u64),
        ("used", u64),
        ("cpu_visible_size", u64),
        ("cpu_visible_used", u64),
        ("reserved", u64 * 6),
    ]


class drm_xe_query_mem_regions(Struct):
    _fields_ = [
        ("num_mem_regions", u32),
        ("pad", u32),
        ("mem_regions", drm_xe_mem_region * 0),
    ]


DRM_XE_QUERY_CONFIG_REV_AND_DEVICE_ID = 0
DRM_XE_QUERY_CONFIG_FLAGS = 1
DRM_XE_QUERY_CONFIG_MIN_ALIGNMENT = 2
DRM_XE_QUERY_CONFIG_VA_BITS = 3
DRM_XE_QUERY_CONFIG_MAX_EXEC_QUEUE_PRIORITY = 4
#: bit of info[DRM_XE_QUERY_CONFIG_FLAGS]: the device has VRAM (a discrete device)
DRM_XE_QUERY_CONFIG_FLAG_HAS_VRAM = 1 << 0


class drm_xe_query_config(Struct):
    _fields_ = [
        ("num_params", u32),
        ("pad", u32),
        ("info", u64 * 0),
    ]


DRM_XE_QUERY_GT_TYPE_MAIN = 0
DRM_XE_QUERY_GT_TYPE_MEDIA = 1


class drm_xe_gt(Struct):
    _fields_ = [
        ("type", u16),
        ("tile_id", u16),
        ("gt_id", u16),
        ("pad", u16 * 3),
        ("reference_clock", u32),
        ("near_mem_regions", u64),
        ("far_mem_regions", u64),
        ("ip_ver_major", u16),
        ("ip_ver_minor", u16),
        ("ip_ver_rev", u16),
        ("pad2", u16),
        ("reserved", u64 * 7),
    ]


class drm_xe_query_gt_list(Struct):
    _fields_ = [
        ("num_gt", u32),
        ("pad", u32),
        ("gt_list", drm_xe_gt * 0),
    ]


DRM_XE_DEVICE_QUERY_ENGINES = 0
DRM_XE_DEVICE_QUERY_MEM_REGIONS = 1
DRM_XE_DEVICE_QUERY_CONFIG = 2
DRM_XE_DEVICE_QUERY_GT_LIST = 3
DRM_XE_DEVICE_QUERY_HWCONFIG = 4
DRM_XE_DEVICE_QUERY_GT_TOPOLOGY = 5

DRM_XE_TOPO_DSS_GEOMETRY = 1
DRM_XE_TOPO_DSS_COMPUTE = 2
DRM_XE_TOPO_L3_BANK = 3
DRM_XE_TOPO_EU_PER_DSS = 4
DRM_XE_TOPO_SIMD16_EU_PER_DSS = 5


class drm_xe_query_topology_mask(Struct):
    _fields_ = [
        ("gt_id", u16),
        ("type", u16),
        ("num_bytes", u32),
        ("mask", u8 * 0),
    ]


class drm_xe_device_query(Struct):
    _fields_ = [
        ("extensions", u64),
        ("query", u32),
        ("size", u32),
        ("data", u64),
        ("reserved", u64 * 2),
    ]


# --- buffer objects ------------------------------------------------------------------------------

DRM_XE_GEM_CREATE_EXTENSION_SET_PROPERTY = 0
DRM_XE_GEM_CREATE_FLAG_DEFER_BACKING = 1 << 0
DRM_XE_GEM_CREATE_FLAG_SCANOUT = 1 << 1
DRM_XE_GEM_CREATE_FLAG_NEEDS_VISIBLE_VRAM = 1 << 2
DRM_XE_GEM_CPU_CACHING_WB = 1
DRM_XE_GEM_CPU_CACHING_WC = 2


class drm_xe_gem_create(Struct):
    _fields_ = [
        ("extensions", u64),
        ("size", u64),
        ("placement", u32),
        ("flags", u32),
        ("vm_id", u32),
        ("handle", u32),
        ("cpu_caching", u16),
        ("pad", u16 * 3),
        ("reserved", u64 * 2),
    ]


DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER = 1 << 0


class drm_xe_gem_mmap_offset(Struct):
    _fields_ = [
        ("extensions", u64),
        ("handle", u32),
        ("flags", u32),
        ("offset", u64),
        ("reserved", u64 * 2),
    ]


# --- VMs and binds ---------------------------------------------------------------------------

DRM_XE_VM_CREATE_FLAG_SCRATCH_PAGE = 1 << 0
DRM_XE_VM_CREATE_FLAG_LR_MODE = 1 << 1
DRM_XE_VM_CREATE_FLAG_FAULT_MODE = 1 << 2


class drm_xe_vm_create(Struct):
    _fields_ = [
        ("extensions", u64),
        ("flags", u32),
        ("vm_id", u32),
        ("reserved", u64 * 2),
    ]


class drm_xe_vm_destroy(Struct):
    _fields_ = [
        ("vm_id", u32),
        ("pad", u32),
        ("reserved", u64 * 2),
    ]


DRM_XE_VM_BIND_OP_MAP = 0x0
DRM_XE_VM_BIND_OP_UNMAP = 0x1
DRM_XE_VM_BIND_OP_MAP_USERPTR = 0x2
DRM_XE_VM_BIND_OP_UNMAP_ALL = 0x3
DRM_XE_VM_BIND_OP_PREFETCH = 0x4

DRM_XE_VM_BIND_FLAG_READONLY = 1 << 0
DRM_XE_VM_BIND_FLAG_IMMEDIATE = 1 << 1
DRM_XE_VM_BIND_FLAG_NULL = 1 << 2
DRM_XE_VM_BIND_FLAG_DUMPABLE = 1 << 3
DRM_XE_VM_BIND_FLAG_CPU_ADDR_MIRROR = 1 << 5


class _drm_xe_vm_bind_op_offset(Union):
    _fields_ = [
        ("obj_offset", u64),
        ("userptr", u64),
        ("cpu_addr_mirror_offset", u64),
    ]


class drm_xe_vm_bind_op(Struct):
    _anonymous_ = ("_u",)
    _fields_ = [
        ("extensions", u64),
        ("obj", u32),
        ("pat_index", u16),
        ("pad", u16),
        ("_u", _drm_xe_vm_bind_op_offset),
        ("range", u64),
        ("addr", u64),
        ("op", u32),
        ("flags", u32),
        ("prefetch_mem_region_instance", u32),
        ("pad2", u32),
        ("reserved", u64 * 3),
    ]


class _drm_xe_vm_bind_binds(Union):
    _fields_ = [
        ("bind", drm_xe_vm_bind_op),
        ("vector_of_binds", u64),
    ]


class drm_xe_vm_bind(Struct):
    _anonymous_ = ("_u",)
    _fields_ = [
        ("extensions", u64),
        ("vm_id", u32),
        ("exec_queue_id", u32),
        ("pad", u32),
        ("num_binds", u32),
        ("_u", _drm_xe_vm_bind_binds),
        ("pad2", u32),
        ("num_syncs", u32),
        ("syncs", u64),
        ("reserved", u64 * 2),
    ]


# --- exec queues -----------------------------------------------------------------------------

DRM_XE_EXEC_QUEUE_EXTENSION_SET_PROPERTY = 0
DRM_XE_EXEC_QUEUE_SET_PROPERTY_PRIORITY = 0
DRM_XE_EXEC_QUEUE_SET_PROPERTY_TIMESLICE = 1


class drm_xe_exec_queue_create(Struct):
    _fields_ = [
        ("extensions", u64),
        ("width", u16),
        ("num_placements", u16),
        ("vm_id", u32),
        ("flags", u32),
        ("exec_queue_id", u32),
        ("instances", u64),
        ("reserved", u64 * 2),
    ]


class drm_xe_exec_queue_destroy(Struct):
    _fields_ = [
        ("exec_queue_id", u32),
        ("pad", u32),
        ("reserved", u64 * 2),
    ]


# --- syncs, exec, user fences ------------------------------------------------------------------

DRM_XE_SYNC_TYPE_SYNCOBJ = 0x0
DRM_XE_SYNC_TYPE_TIMELINE_SYNCOBJ = 0x1
DRM_XE_SYNC_TYPE_USER_FENCE = 0x2
DRM_XE_SYNC_FLAG_SIGNAL = 1 << 0


class _drm_xe_sync_target(Union):
    _fields_ = [
        ("handle", u32),
        ("addr", u64),
    ]


class drm_xe_sync(Struct):
    _anonymous_ = ("_u",)
    _fields_ = [
        ("extensions", u64),
        ("type", u32),
        ("flags", u32),
        ("_u", _drm_xe_sync_target),
        ("timeline_value", u64),
        ("reserved", u64 * 2),
    ]


class drm_xe_exec(Struct):
    _fields_ = [
        ("extensions", u64),
        ("exec_queue_id", u32),
        ("num_syncs", u32),
        ("syncs", u64),
        ("address", u64),
        ("num_batch_buffer", u16),
        ("pad", u16 * 3),
        ("reserved", u64 * 2),
    ]


DRM_XE_UFENCE_WAIT_OP_EQ = 0x0
DRM_XE_UFENCE_WAIT_OP_NEQ = 0x1
DRM_XE_UFENCE_WAIT_OP_GT = 0x2
DRM_XE_UFENCE_WAIT_OP_GTE = 0x3
DRM_XE_UFENCE_WAIT_OP_LT = 0x4
DRM_XE_UFENCE_WAIT_OP_LTE = 0x5
DRM_XE_UFENCE_WAIT_FLAG_ABSTIME = 1 << 0


class drm_xe_wait_user_fence(Struct):
    _fields_ = [
        ("extensions", u64),
        ("addr", u64),
        ("op", u16),
        ("flags", u16),
        ("pad", u32),
        ("value", u64),
        ("mask", u64),
        ("timeout", s64),
        ("exec_queue_id", u32),
        ("pad2", u32),
        ("reserved", u64 * 2),
    ]


# --- requests --------------------------------------------------------------------------------

DRM_IOCTL_XE_DEVICE_QUERY = DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_DEVICE_QUERY, drm_xe_device_query)
DRM_IOCTL_XE_GEM_CREATE = DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_GEM_CREATE, drm_xe_gem_create)
DRM_IOCTL_XE_GEM_MMAP_OFFSET = DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_GEM_MMAP_OFFSET, drm_xe_gem_mmap_offset)
DRM_IOCTL_XE_VM_CREATE = DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_VM_CREATE, drm_xe_vm_create)
DRM_IOCTL_XE_VM_DESTROY = DRM_IOW(DRM_COMMAND_BASE + DRM_XE_VM_DESTROY, drm_xe_vm_destroy)
DRM_IOCTL_XE_VM_BIND = DRM_IOW(DRM_COMMAND_BASE + DRM_XE_VM_BIND, drm_xe_vm_bind)
DRM_IOCTL_XE_EXEC_QUEUE_CREATE = DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_EXEC_QUEUE_CREATE, drm_xe_exec_queue_create)
DRM_IOCTL_XE_EXEC_QUEUE_DESTROY = DRM_IOW(DRM_COMMAND_BASE + DRM_XE_EXEC_QUEUE_DESTROY, drm_xe_exec_queue_destroy)
DRM_IOCTL_XE_EXEC = DRM_IOW(DRM_COMMAND_BASE + DRM_XE_EXEC, drm_xe_exec)
DRM_IOCTL_XE_WAIT_USER_FENCE = DRM_IOWR(DRM_COMMAND_BASE + DRM_XE_WAIT_USER_FENCE, drm_xe_wait_user_fence)

register_requests(globals())

__all__ = [n for n in dir() if n.startswith(("drm_", "DRM_", "XE_", "WORK_IN_PROGRESS_"))]
