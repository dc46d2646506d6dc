/*
 * A small DRM client in C for tests/test_preload.py: each mode exercises one part of the route
 * (xe-eudebug run / the preload library) the way an unmodified program would, and prints what
 * it observed.  Exit status 0 when every check in the mode held; a failed check prints
 * "FAIL <what>: <errno text>" and exits 1.
 *
 * Struct layouts and ioctl numbers: xe_uapi_min.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "xe_uapi_min.h"

#define EVENT_READ 1
#define EVENT_OPEN 2
#define EVENT_VM 3
#define EVENT_CREATE 1
#define DISCOVERY_WAIT_S 30  /* how long a debugger waits for discovery on a loaded machine */
#define BIND_ADDR 0x100000ull
#define BO_SIZE 4096

_Static_assert(sizeof(struct vm_bind) == 136, "drm_xe_vm_bind");
_Static_assert(sizeof(struct gem_create) == 56, "drm_xe_gem_create");

static void fail(const char *what)
{
	printf("FAIL %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(1);
}

static void check(int cond, const char *what)
{
	if (!cond) {
		errno = 0;
		fail(what);
	}
}

static int open_node(const char *path)
{
	int fd = open(path, O_RDWR);
	if (fd < 0)
		fail(path);
	return fd;
}

static const char *driver(int fd, char *name, size_t size)
{
	struct drm_version v = { 0 };
	v.name = name;
	v.name_len = size - 1;
	memset(name, 0, size);
	if (ioctl(fd, DRM_IOCTL_VERSION, &v))
		return NULL;
	return name;
}

static void node_stat(const char *path, int fd, unsigned minor)
{
	struct stat ps, fs;
	if (stat(path, &ps))
		fail("stat");
	if (fstat(fd, &fs))
		fail("fstat");
	check(S_ISCHR(ps.st_mode) && S_ISCHR(fs.st_mode), "character device");
	check(major(fs.st_rdev) == 226 && minor(fs.st_rdev) == minor, "st_rdev");
	check(ps.st_rdev == fs.st_rdev && ps.st_dev == fs.st_dev && ps.st_ino == fs.st_ino,
	      "stat and fstat agree");
	printf("%s %u:%u\n", path, major(fs.st_rdev), minor(fs.st_rdev));
}

#define VM_CREATE_FLAG_LR_MODE (1 << 1)  /* the debugger sees LR VMs only */

static uint32_t vm_create(int fd)
{
	struct vm_create c = { .flags = VM_CREATE_FLAG_LR_MODE };
	if (ioctl(fd, XE_VM_CREATE, &c))
		fail("DRM_IOCTL_XE_VM_CREATE");
	return c.vm_id;
}

static int vm_destroy(int fd, uint32_t id)
{
	struct vm_destroy d = { .vm_id = id };
	return ioctl(fd, XE_VM_DESTROY, &d) ? -errno : 0;
}

static int mode_nodes(void)
{
	char name[16];
	int card = open_node("/dev/dri/card0"), render = open_node("/dev/dri/renderD128");
	check(driver(card, name, sizeof(name)) && !strcmp(name, "xe"), "card0 is xe");
	check(driver(render, name, sizeof(name)) && !strcmp(name, "xe"), "renderD128 is xe");
	node_stat("/dev/dri/card0", card, 0);
	node_stat("/dev/dri/renderD128", render, 128);
	check(access("/dev/dri/card0", R_OK | W_OK) == 0, "access");
	errno = 0;
	check(open("/dev/dri/card9", O_RDWR) < 0 && errno == ENOENT, "card9 does not exist");
	printf("driver %s\n", name);
	return 0;
}

static int mode_dup(void)
{
	char name[16];
	int fd = open_node("/dev/dri/card0");
	int d = dup(fd);
	close(fd);
	check(driver(d, name, sizeof(name)) != NULL, "ioctl on a dup after close of the original");
	check(dup2(d, 50) == 50, "dup2");
	close(d);
	check(driver(50, name, sizeof(name)) != NULL, "ioctl on the dup2 target");
	close(50);
	errno = 0;
	check(driver(50, name, sizeof(name)) == NULL && errno == EBADF, "EBADF after the last close");
	printf("dup ok\n");
	return 0;
}

static int mode_reopen(void)
{
	char path[64], link[64];
	int fd = open_node("/dev/dri/renderD128");
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	check(n > 0, "readlink");
	link[n] = 0;
	printf("link %s\n", link);
	int again = open(path, O_RDWR);
	if (again < 0)
		fail("reopen through /proc/self/fd");
	node_stat("/dev/dri/renderD128", again, 128);
	uint32_t vm = vm_create(fd);
	printf("destroy on the reopened file: %d\n", vm_destroy(again, vm));  /* another DRM file */
	printf("destroy on the first file: %d\n", vm_destroy(fd, vm));
	return 0;
}

/* The child uses the inherited fd, then opens its own DRM file with an LR VM, which a debugger
 * attached to the child's pid must see (the child has its own identity); it waits for stdin. */
static int mode_fork(void)
{
	char name[16];
	int fd = open_node("/dev/dri/card0");
	pid_t pid = fork();
	if (pid == 0) {
		if (!driver(fd, name, sizeof(name)))
			_exit(2);
		int own = open("/dev/dri/card0", O_RDWR);
		if (own < 0)
			_exit(3);
		printf("child %d vm %u\n", getpid(), vm_create(own));
		fflush(stdout);
		char c;
		while (read(0, &c, 1) > 0)
			;
		_exit(0);
	}
	int status;
	check(waitpid(pid, &status, 0) == pid, "waitpid");
	printf("child status %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
	check(driver(fd, name, sizeof(name)) != NULL, "parent still uses its fd");
	return 0;
}

static int mode_sysfs(const char *value)
{
	char buf[8] = { 0 };
	struct stat st;
	int fd = open_node("/dev/dri/card0");
	if (fstat(fd, &st))
		fail("fstat");
	char path[64];
	snprintf(path, sizeof(path), "/sys/dev/char/%u:%u", major(st.st_rdev), minor(st.st_rdev));
	int sysfs = open(path, O_RDONLY);
	if (sysfs < 0)
		fail(path);
	int dev = openat(sysfs, "device", O_DIRECTORY | O_RDONLY);
	if (dev < 0)
		fail("device directory");
	int attr = openat(dev, "enable_eudebug", O_RDONLY);
	if (attr < 0 || read(attr, buf, sizeof(buf) - 1) <= 0)
		fail("read enable_eudebug");
	close(attr);
	printf("before %c\n", buf[0]);
	attr = openat(dev, "enable_eudebug", O_WRONLY);
	if (attr < 0 || write(attr, value, strlen(value)) != (ssize_t)strlen(value))
		fail("write enable_eudebug");
	close(attr);
	memset(buf, 0, sizeof(buf));
	attr = openat(dev, "enable_eudebug", O_RDONLY);
	if (attr < 0 || read(attr, buf, sizeof(buf) - 1) <= 0)
		fail("read enable_eudebug back");
	printf("after %c\n", buf[0]);
	return 0;
}

/* The engine-class directory of GT `gt` as IGT's xe_sysfs_engine_open finds it. */
static int engine_dir(int gt, const char *cls)
{
	struct stat st;
	char path[128];
	int fd = open_node("/dev/dri/card0");
	if (fstat(fd, &st))
		fail("fstat");
	snprintf(path, sizeof(path), "/sys/dev/char/%u:%u/device/tile%d/gt%d/engines/%s",
		 major(st.st_rdev), minor(st.st_rdev), gt, gt, cls);
	check(access(path, F_OK) == 0, "engine directory exists");
	int dir = open(path, O_RDONLY);
	if (dir < 0)
		fail(path);
	return dir;
}

static long read_attr(int dir, const char *name)
{
	char buf[32] = { 0 };
	int fd = openat(dir, name, O_RDONLY);
	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) <= 0)
		fail(name);
	close(fd);
	return strtol(buf, NULL, 0);
}

/* engine GT CLASS [VALUE]: job_timeout_ms (and its default), VALUE written first if given */
static int mode_engine(int gt, const char *cls, const char *value)
{
	int dir = engine_dir(gt, cls);
	if (value) {
		int fd = openat(dir, "job_timeout_ms", O_WRONLY);
		ssize_t n = fd < 0 ? -1 : write(fd, value, strlen(value));
		printf("write %s %s\n", value, n == (ssize_t)strlen(value) ? "ok" : strerror(errno));
		if (fd >= 0)
			close(fd);
	}
	printf("job_timeout_ms %ld\n", read_attr(dir, "job_timeout_ms"));
	printf("default %ld\n", read_attr(dir, ".defaults/job_timeout_ms"));
	return 0;
}

/* reset GT: IGT's xe_force_gt_reset_async path (igt_debugfs_mount's mount-point check, the
 * dri/<minor>/name lookup, the GT directory, force_reset) on /dev/dri/NODE. */
static int mode_reset(const char *node, int gt)
{
	struct stat st, dot, dotdot;
	char path[128];
	int fd = open_node(node);
	if (fstat(fd, &st))
		fail("fstat");
	check(stat("/sys/kernel/debug/.", &dot) == 0 && stat("/sys/kernel/debug/..", &dotdot) == 0 &&
	      S_ISDIR(dot.st_mode) && S_ISDIR(dotdot.st_mode), "debugfs directories");
	printf("mountpoint %d\n", dot.st_dev != dotdot.st_dev);
	snprintf(path, sizeof(path), "/sys/kernel/debug/dri/%u/name", minor(st.st_rdev));
	check(stat(path, &dot) == 0, "debugfs name");
	snprintf(path, sizeof(path), "/sys/kernel/debug/dri/%u/gt%d", minor(st.st_rdev), gt);
	int dir = open(path, O_RDONLY);
	if (dir < 0)
		fail(path);
	int attr = openat(dir, "force_reset", O_WRONLY);
	if (attr < 0)
		fail("force_reset");
	printf("reset %s\n", write(attr, "1", 1) == 1 ? "ok" : strerror(errno));
	return 0;
}

/* The memory regions and the config flags the device reports. */
static int mode_regions(void)
{
	int fd = open_node("/dev/dri/card0");
	struct device_query q = { .query = QUERY_MEM_REGIONS };
	if (ioctl(fd, XE_DEVICE_QUERY, &q))
		fail("DEVICE_QUERY size");
	char *buf = calloc(1, q.size);
	q.data = (uintptr_t)buf;
	if (ioctl(fd, XE_DEVICE_QUERY, &q))
		fail("DEVICE_QUERY MEM_REGIONS");
	uint32_t n = *(uint32_t *)buf;
	struct mem_region *r = (struct mem_region *)(buf + 8);
	for (uint32_t i = 0; i < n; i++)
		printf("region %u class %u size %llu visible %llu\n", r[i].instance, r[i].mem_class,
		       (unsigned long long)r[i].total_size, (unsigned long long)r[i].cpu_visible_size);
	free(buf);
	uint64_t cfg[8] = { 0 };
	struct device_query c = { .query = QUERY_CONFIG, .size = 8 + 5 * 8, .data = (uintptr_t)cfg };
	if (ioctl(fd, XE_DEVICE_QUERY, &c))
		fail("DEVICE_QUERY CONFIG");
	printf("devid %#llx flags %llu\n", (unsigned long long)(cfg[1] & 0xffff), (unsigned long long)cfg[2]);
	return 0;
}

/* A client with a BO bound at BIND_ADDR and filled through a CPU mapping; waits for stdin. */
static int mode_client(void)
{
	int fd = open_node("/dev/dri/card0");
	uint32_t vm = vm_create(fd);
	struct gem_create gc = { .size = BO_SIZE, .placement = 1, .cpu_caching = 1 };
	if (ioctl(fd, XE_GEM_CREATE, &gc))
		fail("DRM_IOCTL_XE_GEM_CREATE");
	struct gem_mmap_offset mo = { .handle = gc.handle };
	if (ioctl(fd, XE_GEM_MMAP_OFFSET, &mo))
		fail("DRM_IOCTL_XE_GEM_MMAP_OFFSET");
	/* write-only, as a client filling a buffer may map it */
	unsigned char *map = mmap(NULL, BO_SIZE, PROT_WRITE, MAP_SHARED, fd, mo.offset);
	if (map == MAP_FAILED)
		fail("mmap");
	for (int i = 0; i < BO_SIZE; i++)
		map[i] = (unsigned char)(i * 7 + 1);
	struct vm_bind b = { .vm_id = vm, .num_binds = 1 };
	b.bind.obj = gc.handle;
	b.bind.pat_index = 2;  /* Xe2's write-back, coherent index: the BO is WB-cached */
	b.bind.range = BO_SIZE;
	b.bind.addr = BIND_ADDR;
	/* the bind's argument itself lives in another write-only BO mapping, which the kernel's
	 * copy_from_user reads */
	struct gem_create ac = { .size = BO_SIZE, .placement = 1, .cpu_caching = 1 };
	if (ioctl(fd, XE_GEM_CREATE, &ac))
		fail("DRM_IOCTL_XE_GEM_CREATE");
	struct gem_mmap_offset amo = { .handle = ac.handle };
	if (ioctl(fd, XE_GEM_MMAP_OFFSET, &amo))
		fail("DRM_IOCTL_XE_GEM_MMAP_OFFSET");
	void *args = mmap(NULL, BO_SIZE, PROT_WRITE, MAP_SHARED, fd, amo.offset);
	if (args == MAP_FAILED)
		fail("mmap");
	memcpy(args, &b, sizeof(b));
	if (ioctl(fd, XE_VM_BIND, args))
		fail("DRM_IOCTL_XE_VM_BIND");
	printf("ready %d vm %u\n", getpid(), vm);
	fflush(stdout);
	char c;
	while (read(0, &c, 1) > 0)
		;
	return 0;
}

/* A debugger: CONNECT to pid, print the events of discovery (type, flags, VM handles) up to
 * the first VM create.  A blocking READ_EVENT gives up (ENOENT) after the read timeout, which
 * can pass before discovery (a worker of its own) starts: read again, up to DISCOVERY_WAIT_S. */
static int mode_debugger(const char *pid)
{
	int fd = open_node("/dev/dri/card0");
	struct eudebug_connect c = { .pid = strtoull(pid, NULL, 10) };
	int dbg = ioctl(fd, XE_EUDEBUG_CONNECT, &c);
	if (dbg < 0)
		fail("DRM_IOCTL_XE_EUDEBUG_CONNECT");
	printf("connected\n");
	time_t deadline = time(NULL) + DISCOVERY_WAIT_S;
	for (;;) {
		uint64_t buf[64] = { 0 };
		struct eudebug_event *e = (void *)buf;
		e->len = sizeof(buf);
		e->type = EVENT_READ;
		if (ioctl(dbg, EUDEBUG_READ_EVENT, e)) {
			if ((errno == EAGAIN || errno == EINTR || errno == ENOENT) && time(NULL) < deadline)
				continue;
			printf("read_event: %s\n", strerror(errno));
			break;
		}
		if (e->type == EVENT_VM)
			printf("event %u flags %u client %llu vm %llu\n", e->type, e->flags,
			       (unsigned long long)buf[3], (unsigned long long)buf[4]);
		else
			printf("event %u flags %u\n", e->type, e->flags);
		fflush(stdout);
		if (e->type == EVENT_VM && e->flags & EVENT_CREATE)
			break;
	}
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2)
		return 2;
	if (!strcmp(argv[1], "nodes"))
		return mode_nodes();
	if (!strcmp(argv[1], "dup"))
		return mode_dup();
	if (!strcmp(argv[1], "reopen"))
		return mode_reopen();
	if (!strcmp(argv[1], "fork"))
		return mode_fork();
	if (!strcmp(argv[1], "sysfs") && argc > 2)
		return mode_sysfs(argv[2]);
	if (!strcmp(argv[1], "client"))
		return mode_client();
	if (!strcmp(argv[1], "engine") && argc > 3)
		return mode_engine(atoi(argv[2]), argv[3], argc > 4 ? argv[4] : NULL);
	if (!strcmp(argv[1], "regions"))
		return mode_regions();
	if (!strcmp(argv[1], "reset") && argc > 3)
		return mode_reset(argv[2], atoi(argv[3]));
	if (!strcmp(argv[1], "debugger") && argc > 2)
		return mode_debugger(argv[2]);
	if (!strcmp(argv[1], "exit") && argc > 2)
		return atoi(argv[2]);
	if (!strcmp(argv[1], "signal") && argc > 2)
		return raise(atoi(argv[2]));
	return 2;
}
