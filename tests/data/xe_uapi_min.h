/*
 * The few uapi structs and ioctl numbers the C test programs (tests/data/preload_probe.c,
 * tests/data/vm_read_probe.c) and the benchmarks (bench/preload_ioctl.c, bench/vm_pread.py) use,
 * spelled out from drm.h, xe_drm.h and xe_drm_eudebug.h so that they build without kernel headers.
 */
#ifndef XE_UAPI_MIN_H
#define XE_UAPI_MIN_H
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>

struct drm_version {
	int major, minor, patchlevel;
	size_t name_len;
	char *name;
	size_t date_len;
	char *date;
	size_t desc_len;
	char *desc;
};
struct vm_create { uint64_t extensions; uint32_t flags, vm_id; uint64_t reserved[2]; };
struct vm_destroy { uint32_t vm_id, pad; uint64_t reserved[2]; };
struct gem_create {
	uint64_t extensions, size;
	uint32_t placement, flags, vm_id, handle;
	uint16_t cpu_caching, pad[3];
	uint64_t reserved[2];
};
struct gem_mmap_offset { uint64_t extensions; uint32_t handle, flags; uint64_t offset, reserved[2]; };
struct vm_bind_op {
	uint64_t extensions;
	uint32_t obj;
	uint16_t pat_index, pad;
	uint64_t obj_offset, range, addr;
	uint32_t op, flags, prefetch_mem_region_instance, pad2;
	uint64_t reserved[3];
};
struct vm_bind {
	uint64_t extensions;
	uint32_t vm_id, exec_queue_id, pad, num_binds;
	struct vm_bind_op bind;
	uint32_t pad2, num_syncs;
	uint64_t syncs, reserved[2];
};
struct eudebug_connect { uint64_t extensions, pid; uint32_t flags, version; };
struct eudebug_event { uint32_t len; uint16_t type, flags; uint64_t seqno, reserved; };
struct eudebug_vm_open { uint64_t extensions, client_handle, vm_handle, flags, timeout_ns; };

struct device_query { uint64_t extensions; uint32_t query, size; uint64_t data, reserved[2]; };
struct mem_region {
	uint16_t mem_class, instance;
	uint32_t min_page_size;
	uint64_t total_size, used, cpu_visible_size, cpu_visible_used, reserved[6];
};
#define QUERY_MEM_REGIONS 1
#define QUERY_CONFIG 2
#define MEM_CLASS_VRAM 1
#define DRM_IOCTL_VERSION _IOWR('d', 0x00, struct drm_version)
#define XE_DEVICE_QUERY _IOWR('d', 0x40, struct device_query)
#define XE_VM_CREATE _IOWR('d', 0x43, struct vm_create)
#define XE_VM_DESTROY _IOW('d', 0x44, struct vm_destroy)
#define XE_GEM_CREATE _IOWR('d', 0x41, struct gem_create)
#define XE_GEM_MMAP_OFFSET _IOWR('d', 0x42, struct gem_mmap_offset)
#define XE_VM_BIND _IOW('d', 0x45, struct vm_bind)
#define XE_EUDEBUG_CONNECT _IOWR('d', 0x4e, struct eudebug_connect)
#define EUDEBUG_READ_EVENT _IO('j', 0x0)
#define EUDEBUG_VM_OPEN _IOW('j', 0x1, struct eudebug_vm_open)
#endif
