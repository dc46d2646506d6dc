/*
 * xe_eudebug simulator preload library: unmodified, dynamically linked C programs see the
 * simulated Xe devices as /dev/dri/cardN and /dev/dri/renderD(128+N).
 *
 * Built and loaded by `xe-eudebug run` (xe_eudebug/sim/run.py).  It speaks the simulator's wire
 * protocol (docs/architecture.md, "Wire protocol"; Python side: xe_eudebug/sim/port.py) to the
 * server named by XE_EUDEBUG_SIM_SOCKET.  A simulated file is the caller's end of a socketpair
 * whose other end the server holds; this library recognises such sockets by their peer (the
 * server's pid) and turns the system calls a DRM client makes on them into calls to the server.
 * poll()/select() need no help: a debugger fd's readiness is a byte in its receive queue, and
 * close()/dup() work on the socket itself (the server sees the last close as end of file).
 *
 * Signal policy: every signal is blocked while a call is in flight on the control connection and
 * delivered when it returns, so a handler can never re-enter the connection halfway through a
 * message.  A simulated blocking call is therefore never interrupted (no EINTR); each has its own
 * timeout in the kernel model.
 *
 * VM-fd read grants: a pread of a VM fd is answered by the server, which may also grant the BO
 * mapping the read started in (docs/simulator.md, "VM-fd read grants"; the model's side is
 * sim/kernel/xe_eudebug_vm.py).  Later preads inside a granted window are then a copy from this
 * process's read-only mapping of that BO, checked against the VM's generation counter (a page the
 * server shares read-only) before and after the copy: a changed counter drops the grant and the
 * read becomes a call again.  Everything else (userptr and NULL mappings, ranges leaving the
 * window, errors, read(), pwrite, fsync) stays a call.  XE_EUDEBUG_VM_FAST=0 turns grants off.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* ---- wire format (see docs/architecture.md) ---------------------------------------------- */
struct wire_header {
	uint32_t len;
	uint16_t kind;
	uint16_t flags;
	uint64_t a, b, c;
};
_Static_assert(sizeof(struct wire_header) == 32, "wire header is 32 bytes");

enum {
	OP_OPEN = 1, OP_IOCTL = 2, OP_READ = 3, OP_PREAD = 4, OP_PWRITE = 5, OP_LSEEK = 6,
	OP_FSYNC = 7, OP_MMAP = 8, OP_POLL = 9, OP_GET_ENABLED = 10, OP_SET_ENABLED = 11,
	OP_CLONE = 12, OP_INFO = 13, OP_FILE_INFO = 14, OP_DEVICE_ENABLED = 15, OP_SYSFS = 16,
	OP_VM_GENS = 17,
	M_DATA = 32, M_DONE = 33,
	R_REPLY = 64, R_MEMREAD = 65, R_MEMWRITE = 66,
};
#define F_FD 1
#define F_CLOEXEC 2
#define F_GRANT 4
#define PREAD_GRANT 1
#define KIND_DEVICE 1
#define IOCTL_ARG_UNREADABLE 1
#define MAX_PAYLOAD (1u << 28)
#define MAX_RW (MAX_PAYLOAD - 4096)
#define DRM_MAJOR 226
#define MAX_DEVICES 64
#define SO_COOKIE_OPT 57

#define COMMA ,

/* ---- the next definitions of what we wrap ------------------------------------------------- */
#define NEXT(name) static __typeof__(name) *next_##name
#define RESOLVE(name) ((void)resolve((void **)&next_##name, #name), next_##name)
static void **resolve(void **slot, const char *name)
{
	if (!*slot)
		*slot = dlsym(RTLD_NEXT, name);
	return slot;
}

/* ---- state ----------------------------------------------------------------------------------- */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static int have_path = -1;          /* -1 unknown, 0 no simulator configured, 1 yes */
static int master = -1;             /* this process's connection (its identity for the server) */
static pid_t server_pid = -1;
static int ndevices = -1;           /* from OP_INFO */
static __thread int tconn = -1;     /* this thread's connection, cloned over master */
static __thread char *tbuf;         /* reply payload buffer */
static __thread size_t tbuf_size;
static pthread_key_t thread_key;    /* its destructor closes an exiting thread's connection */

struct minor_slot { uint64_t cookie; int minor; };
#define MINOR_SLOTS 1024
static struct minor_slot minors[MINOR_SLOTS];  /* which node a simulated device file was opened as */

#define SYSFS_FDS 1024
static int sysfs_dev[SYSFS_FDS];    /* fd -> 1 + device index of an open sysfs attribute */
#define SYSFS_PATH 96
/* fd -> the attribute's path below the device's directory ("" for enable_eudebug) */
static char sysfs_attr[SYSFS_FDS][SYSFS_PATH];

static void die_msg(const char *msg)
{
	ssize_t r = syscall(SYS_write, 2, msg, strlen(msg));
	(void)r;
}

static int config_path(void)
{
	if (have_path >= 0)
		return have_path;
	const char *p = getenv("XE_EUDEBUG_SIM_SOCKET");
	if (p && *p && strlen(p) < sizeof(sock_path)) {
		strcpy(sock_path, p);
		have_path = 1;
	} else {
		have_path = 0;
	}
	return have_path;
}

/* ---- raw I/O on control connections ------------------------------------------------------- */
/* All of n bytes in one direction (send when `out`), retrying EINTR; end of file is ECONNRESET. */
static int xfer_all(int s, void *buf, size_t n, int out)
{
	char *p = buf;
	while (n) {
		ssize_t r = out ? send(s, p, n, MSG_NOSIGNAL) : recv(s, p, n, 0);
		if (r == 0) {
			errno = ECONNRESET;
			return -1;
		}
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += r;
		n -= r;
	}
	return 0;
}

static int send_msg(int s, uint16_t kind, uint64_t a, uint64_t b, uint64_t c,
		    const void *payload, uint32_t len, int fd)
{
	struct wire_header h = { len, kind, 0, a, b, c };
	struct iovec iov[2] = { { &h, sizeof(h) }, { (void *)payload, len } };
	union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } ctl;
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };
	if (fd >= 0) {
		memset(&ctl, 0, sizeof(ctl));
		m.msg_control = ctl.buf;
		m.msg_controllen = sizeof(ctl.buf);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	}
	ssize_t r;
	do
		r = sendmsg(s, &m, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -1;
	size_t total = sizeof(h) + len;
	if ((size_t)r < total) {  /* rest without the fd */
		size_t done = r;
		if (done < sizeof(h)) {
			if (xfer_all(s, (char *)&h + done, sizeof(h) - done, 1))
				return -1;
			done = sizeof(h);
		}
		if (xfer_all(s, (char *)payload + (done - sizeof(h)), total - done, 1))
			return -1;
	}
	return 0;
}

/* One message: header (with any fd passed on its first byte) and payload into tbuf. */
static int recv_msg(int s, struct wire_header *h, int *fd_out)
{
	union { char buf[CMSG_SPACE(4 * sizeof(int))]; struct cmsghdr align; } ctl;
	struct iovec iov = { h, sizeof(*h) };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
			    .msg_controllen = sizeof(ctl.buf) };
	ssize_t r;
	*fd_out = -1;
	do
		r = recvmsg(s, &m, MSG_CMSG_CLOEXEC);
	while (r < 0 && errno == EINTR);
	if (r <= 0) {
		if (r == 0)
			errno = ECONNRESET;
		return -1;
	}
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
			int n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			int fds[4];
			memcpy(fds, CMSG_DATA(cm), n * sizeof(int));
			for (int i = 0; i < n; i++) {
				if (*fd_out < 0)
					*fd_out = fds[i];
				else
					close(fds[i]);
			}
		}
	}
	if ((size_t)r < sizeof(*h) && xfer_all(s, (char *)h + r, sizeof(*h) - r, 0))
		goto fail;
	if (h->len > MAX_PAYLOAD) {
		errno = EPROTO;
		goto fail;
	}
	if (h->len > tbuf_size) {
		char *nb = realloc(tbuf, h->len);
		if (!nb) {
			errno = ENOMEM;
			goto fail;
		}
		tbuf = nb;
		tbuf_size = h->len;
	}
	if (h->len && xfer_all(s, tbuf, h->len, 0))
		goto fail;
	return 0;
fail:
	if (*fd_out >= 0)
		close(*fd_out);
	*fd_out = -1;
	return -1;
}

/* ---- this process's memory, with EFAULT instead of a crash -------------------------------- */
static int self_read(void *dst, uint64_t addr, size_t n)
{
	struct iovec l = { dst, n }, r = { (void *)(uintptr_t)addr, n };
	if (!n)
		return 0;
	return process_vm_readv(getpid(), &l, 1, &r, 1, 0) == (ssize_t)n ? 0 : -1;
}

static int self_write(uint64_t addr, const void *src, size_t n)
{
	struct iovec l = { (void *)src, n }, r = { (void *)(uintptr_t)addr, n };
	if (!n)
		return 0;
	if (process_vm_writev(getpid(), &l, 1, &r, 1, 0) == (ssize_t)n)
		return 0;
	errno = EFAULT;
	return -1;
}

/* ---- connections --------------------------------------------------------------------------- */
static int path_connect(void)
{
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct ucred cred;
	socklen_t len = sizeof(cred);
	if (s < 0)
		return -1;
	strcpy(sa.sun_path, sock_path);
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) ||
	    getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len)) {
		int e = errno;
		close(s);
		errno = e;
		return -1;
	}
	if (server_pid > 0 && cred.pid != server_pid) {
		close(s);
		errno = ECONNRESET;  /* another simulator: the files we know belong to the old one */
		return -1;
	}
	server_pid = cred.pid;
	prctl(PR_SET_PTRACER, (unsigned long)server_pid, 0, 0, 0);
	return s;
}

/* Caller holds `lock`. */
static int ensure_master(void)
{
	if (master >= 0)
		return 0;
	if (!config_path()) {
		errno = ENOENT;
		return -1;
	}
	master = path_connect();
	return master >= 0 ? 0 : -1;
}

static int thread_conn(void)
{
	struct wire_header h;
	int fd = -1;
	if (tconn >= 0)
		return tconn;
	pthread_mutex_lock(&lock);
	if (ensure_master() == 0 && send_msg(master, OP_CLONE, 0, 0, 0, NULL, 0, -1) == 0 &&
	    recv_msg(master, &h, &fd) == 0 && h.kind == R_REPLY && !h.b && fd >= 0) {
		tconn = fd;
		pthread_setspecific(thread_key, (void *)1);
	} else {
		if (fd >= 0)
			close(fd);
		if (master >= 0)
			close(master);
		master = -1;
		errno = ECONNRESET;
	}
	pthread_mutex_unlock(&lock);
	return tconn;
}

static void drop_thread_conn(void)
{
	if (tconn >= 0)
		close(tconn);
	tconn = -1;
}

struct reply {
	uint64_t a, err, c;
	uint16_t flags;
	uint32_t len;   /* payload in tbuf */
	int fd;
};

/* One call; serves the server's memory requests meanwhile.  -1 with errno on a transport error. */
static int call(uint16_t op, int fd, uint64_t a, uint64_t b, uint64_t c, const void *payload,
		uint32_t len, struct reply *rep)
{
	sigset_t all, old;
	int ret = -1, err = 0;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int s = thread_conn();
	if (s < 0) {
		err = ECONNRESET;
		goto out;
	}
	if (send_msg(s, op, a, b, c, payload, len, fd)) {
		err = errno;
		drop_thread_conn();
		goto out;
	}
	for (;;) {
		struct wire_header h;
		int rfd;
		if (recv_msg(s, &h, &rfd)) {
			err = errno;
			drop_thread_conn();
			goto out;
		}
		if (h.kind == R_REPLY) {
			rep->a = h.a;
			rep->err = h.b;
			rep->c = h.c;
			rep->flags = h.flags;
			rep->len = h.len;
			rep->fd = rfd;
			ret = 0;
			goto out;
		}
		if (rfd >= 0)
			close(rfd);
		int bad;
		if (h.kind == R_MEMREAD) {
			char *tmp = h.b <= MAX_PAYLOAD ? malloc(h.b ? h.b : 1) : NULL;
			bad = !tmp || self_read(tmp, h.a, h.b);
			bad = send_msg(s, M_DATA, bad ? EFAULT : 0, 0, 0, tmp, bad ? 0 : h.b, -1);
			free(tmp);
		} else if (h.kind == R_MEMWRITE) {
			bad = self_write(h.a, tbuf, h.len);
			bad = send_msg(s, M_DONE, bad ? EFAULT : 0, 0, 0, NULL, 0, -1);
		} else {
			errno = EPROTO;
			bad = 1;
		}
		if (bad) {
			err = errno;
			drop_thread_conn();
			goto out;
		}
	}
out:
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret)
		errno = err ? err : ECONNRESET;
	return ret;
}

/* A simple call: -1 with errno on failure (transport or the server's errno). */
static int call_ok(uint16_t op, int fd, uint64_t a, uint64_t b, uint64_t c, const void *payload,
		   uint32_t len, struct reply *rep)
{
	if (call(op, fd, a, b, c, payload, len, rep))
		return -1;
	if (rep->err) {
		if (rep->fd >= 0)
			close(rep->fd);
		errno = (int)rep->err;
		return -1;
	}
	return 0;
}

static void drain(int fd, uint64_t count)
{
	char buf[64];
	if (count > 0 && count <= sizeof(buf))
		recv(fd, buf, count, MSG_DONTWAIT);
}

/* ---- recognising simulated fds ------------------------------------------------------------ */
static uint64_t cookie_of(int fd)
{
	uint64_t v = 0;
	socklen_t len = sizeof(v);
	if (getsockopt(fd, SOL_SOCKET, SO_COOKIE_OPT, &v, &len))
		return 0;
	return v;
}

/* Whether fd is a simulated file: a socket whose peer is the simulator. */
static int is_sim(int fd)
{
	struct stat st;
	struct ucred cred;
	socklen_t len = sizeof(cred);
	if (fd < 0 || syscall(SYS_fstat, fd, &st) || !S_ISSOCK(st.st_mode))
		return 0;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) || cred.pid <= 0)
		return 0;
	if (server_pid <= 0) {
		if (!config_path())
			return 0;
		pthread_mutex_lock(&lock);
		ensure_master();
		pthread_mutex_unlock(&lock);
	}
	return cred.pid == server_pid && fd != master && fd != tconn;
}

static void remember_minor(int fd, int minor)
{
	uint64_t ck = cookie_of(fd);
	if (!ck)
		return;
	pthread_mutex_lock(&lock);
	struct minor_slot *slot = &minors[ck % MINOR_SLOTS];
	slot->cookie = ck;
	slot->minor = minor;
	pthread_mutex_unlock(&lock);
}

/* The minor a simulated device fd was opened as; -1 if fd is no simulated device file. */
static int sim_minor(int fd)
{
	struct reply rep;
	if (!is_sim(fd))
		return -1;
	uint64_t ck = cookie_of(fd);
	int minor = -1;
	pthread_mutex_lock(&lock);
	if (ck && minors[ck % MINOR_SLOTS].cookie == ck)
		minor = minors[ck % MINOR_SLOTS].minor;
	pthread_mutex_unlock(&lock);
	if (minor >= 0)
		return minor;
	/* inherited across exec: ask the server, and call it the card node */
	if (call_ok(OP_FILE_INFO, fd, 0, 0, 0, NULL, 0, &rep) || rep.c != KIND_DEVICE)
		return -1;
	return (int)rep.a;
}

static int device_count(void)
{
	struct reply rep;
	if (ndevices >= 0)
		return ndevices;
	if (!config_path() || call_ok(OP_INFO, -1, 0, 0, 0, NULL, 0, &rep))
		return 0;
	char *p = memmem(tbuf, rep.len, "\"devices\":", 10);
	ndevices = p ? atoi(p + 10) : 0;
	if (ndevices > MAX_DEVICES)
		ndevices = MAX_DEVICES;
	return ndevices;
}

/* ---- paths ------------------------------------------------------------------------------- */
/* The minor of a simulated device node path, or -1. */
static int node_minor(const char *path)
{
	unsigned n;
	char tail;
	if (!path || strncmp(path, "/dev/dri/", 9) || !config_path())
		return -1;
	if (sscanf(path + 9, "card%u%c", &n, &tail) == 1 && strspn(path + 13, "0123456789") == strlen(path + 13)) {
		if ((int)n < device_count())
			return n;
	} else if (sscanf(path + 9, "renderD%u%c", &n, &tail) == 1 &&
		   strspn(path + 16, "0123456789") == strlen(path + 16)) {
		if (n >= 128 && (int)(n - 128) < device_count())
			return n;
	}
	return -1;
}

static int minor_index(int minor)
{
	return minor >= 128 ? minor - 128 : minor;
}

/* "/proc/self/fd/N" or "/proc/<our pid>/fd/N" naming a simulated fd: N, else -1. */
static int proc_fd(const char *path)
{
	int n, pos = 0;
	if (!path)
		return -1;
	if (sscanf(path, "/proc/self/fd/%d%n", &n, &pos) != 1 || path[pos]) {
		int pid;
		pos = 0;
		if (sscanf(path, "/proc/%d/fd/%d%n", &pid, &n, &pos) != 2 || path[pos] || pid != getpid())
			return -1;
	}
	return n >= 0 && is_sim(n) ? n : -1;
}

static void node_name(int minor, char *buf, size_t size)
{
	if (minor >= 128)
		snprintf(buf, size, "/dev/dri/renderD%d", minor);
	else
		snprintf(buf, size, "/dev/dri/card%d", minor);
}

/* ---- debugfs ------------------------------------------------------------------------------
 * `xe-eudebug run` builds the device's debugfs directories (dri/<minor>/name, gtN/force_reset)
 * in a directory named by XE_EUDEBUG_DEBUGFS; paths below /sys/kernel/debug go there, and
 * /sys/kernel/debug/.. to /proc, so that the directory looks like the debugfs mount point IGT's
 * igt_debugfs_mount() checks for (another file system than its parent). */
#define DEBUGFS "/sys/kernel/debug"
static const char *debugfs_root(void)
{
	static const char *root;
	static int done;
	if (!done) {
		const char *r = getenv("XE_EUDEBUG_DEBUGFS");
		root = r && *r == '/' && strlen(r) < PATH_MAX / 2 ? r : NULL;
		done = 1;
	}
	return root;
}

/* `path`, or where it is mapped to (in buf) when it names the simulated debugfs. */
static const char *debugfs_map(const char *path, char *buf)
{
	const char *root = debugfs_root();
	size_t n = sizeof(DEBUGFS) - 1;
	if (!root || !path || strncmp(path, DEBUGFS, n) || (path[n] && path[n] != '/'))
		return path;
	if (!strcmp(path + n, "/..") || !strcmp(path + n, "/../"))
		return "/proc";
	if (strlen(root) + strlen(path + n) >= PATH_MAX)
		return path;
	strcpy(buf, root);
	strcat(buf, path + n);
	return buf;
}

/* The device whose debugfs directory (dri/<minor>) holds directory `real`: 1 + index, or 0;
 * *rest is what follows dri/<minor> ("" or "/gt0"). */
static int debugfs_device_of_dir(const char *real, const char **rest)
{
	const char *root = debugfs_root();
	int minor, pos = 0;
	size_t n = root ? strlen(root) : 0;
	if (!root || strncmp(real, root, n) || sscanf(real + n, "/dri/%d%n", &minor, &pos) != 1)
		return 0;
	*rest = real + n + pos;
	if (**rest && **rest != '/')
		return 0;
	if (minor_index(minor) < 0 || minor_index(minor) >= device_count())
		return 0;
	return 1 + minor_index(minor);
}

/* The device of a sysfs directory in or below our PCI device: 1 + index, or 0; *rest is what
 * follows the device's directory ("" or "/tile0/gt0/..."). */
static int sysfs_device_of_dir(const char *dir, const char **rest)
{
	unsigned bus;
	const char *p = strstr(dir, "/sys/devices/pci0000:00/0000:");
	if (!p || sscanf(p + 29, "%x:00.0", &bus) != 1 || strlen(p + 29) < 7)
		return 0;
	*rest = p + 29 + 7;
	if (**rest && **rest != '/')
		return 0;
	if (bus < 0x10 || (int)(bus - 0x10) >= device_count())
		return 0;
	return 1 + (bus - 0x10);
}

/* Whether the simulator serves attribute `attr` of device `dev` (1 + index). */
static int sysfs_served(int dev, const char *attr)
{
	struct reply rep;
	if (call_ok(OP_SYSFS, -1, dev - 1, 0, 0, attr, strlen(attr), &rep))
		return 0;
	if (rep.fd >= 0)
		close(rep.fd);
	return 1;
}

/* The device of directory `real` if `base` in it is one of its simulated attributes; the
 * attribute's path below the device's directory goes to attr ("" for enable_eudebug). */
static int sysfs_match(const char *real, const char *base, char *attr)
{
	const char *rest;
	int dev = sysfs_device_of_dir(real, &rest);
	if (!dev) {
		/* debugfs files: "debugfs/gtN/force_reset" for the simulator */
		if (!(dev = debugfs_device_of_dir(real, &rest)) || strncmp(rest, "/gt", 3))
			return 0;
		if ((size_t)snprintf(attr, SYSFS_PATH, "debugfs%s/%s", rest, base) >= SYSFS_PATH)
			return 0;
		return sysfs_served(dev, attr) ? dev : 0;
	}
	if (!*rest) {
		if (strcmp(base, "enable_eudebug"))
			return 0;
		attr[0] = 0;
		return dev;
	}
	if (strncmp(rest, "/tile", 5))
		return 0;
	if ((size_t)snprintf(attr, SYSFS_PATH, "%s/%s", rest + 1, base) >= SYSFS_PATH)
		return 0;
	return sysfs_served(dev, attr) ? dev : 0;
}

static int sysfs_target(int dirfd, const char *path, char *attr)
{
	char dir[PATH_MAX], link[64];
	const char *slash = strrchr(path, '/');
	const char *base = slash ? slash + 1 : path;
	if (!*base || !config_path())
		return 0;
	/* other attributes: an absolute path through /sys or the debugfs directory, or a name in a
	 * directory fd */
	if (strcmp(base, "enable_eudebug") &&
	    (path[0] == '/' ? !strstr(path, "/sys/") && !(debugfs_root() && !strncmp(path, debugfs_root(), strlen(debugfs_root())))
			    : dirfd == AT_FDCWD))
		return 0;
	if (path[0] == '/' || dirfd == AT_FDCWD) {
		size_t n = slash ? (size_t)(slash - path) : 0;
		if (n >= sizeof(dir))
			return 0;
		memcpy(dir, path, n);
		dir[n] = 0;
		char real[PATH_MAX];
		if (!realpath(n ? dir : ".", real))
			return 0;
		return sysfs_match(real, base, attr);
	}
	snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
	ssize_t n = syscall(SYS_readlinkat, AT_FDCWD, link, dir, sizeof(dir) - 1);
	if (n <= 0)
		return 0;
	dir[n] = 0;
	if (slash) {
		size_t len = strlen(dir), sub = slash - path;
		if (len + 1 + sub >= sizeof(dir))
			return 0;
		dir[len] = '/';
		memcpy(dir + len + 1, path, sub);
		dir[len + 1 + sub] = 0;
		char real[PATH_MAX];
		if (!realpath(dir, real))
			return 0;
		return sysfs_match(real, base, attr);
	}
	return sysfs_match(dir, base, attr);
}

/* ---- opening ------------------------------------------------------------------------------ */
static int finish_open(struct reply *rep, int flags)
{
	if (!(rep->flags & F_FD) || rep->fd < 0) {
		errno = EPROTO;
		return -1;
	}
	int fd = rep->fd;
	if (!(flags & O_CLOEXEC))
		fcntl(fd, F_SETFD, 0);
	if (flags & O_NONBLOCK)
		fcntl(fd, F_SETFL, O_NONBLOCK);
	return fd;
}

static int open_node(int minor, int flags)
{
	struct reply rep;
	if (call_ok(OP_OPEN, -1, minor_index(minor), 0, 0, NULL, 0, &rep))
		return -1;
	int fd = finish_open(&rep, flags);
	if (fd >= 0)
		remember_minor(fd, minor);
	return fd;
}

static ssize_t sysfs_contents(int fd, char *text, size_t size);

static int open_sysfs(int dev, const char *attr, int flags)
{
	int fd = memfd_create("xe-sysfs", (flags & O_CLOEXEC) ? MFD_CLOEXEC : 0);
	if (fd < 0)
		return -1;
	if (fd >= SYSFS_FDS) {
		close(fd);
		errno = EMFILE;
		return -1;
	}
	sysfs_dev[fd] = dev;
	strcpy(sysfs_attr[fd], attr);
	/* the contents at open are in the memfd too: stdio (fdopen + fscanf) reads it with its own
	 * read system calls, which the read() wrappers below do not see */
	char text[64];
	ssize_t len = sysfs_contents(fd, text, sizeof(text));
	if (len < 0 || syscall(SYS_pwrite64, fd, text, (size_t)len, (off_t)0) != len) {
		int err = len < 0 ? errno : EIO;
		sysfs_dev[fd] = 0;
		close(fd);
		errno = err;
		return -1;
	}
	return fd;
}

/* Handles the open if it is ours: returns 1 with *fd set, else 0. */
static int sim_open(int dirfd, const char *path, int flags, int *fd)
{
	int minor, src, dev;
	char attr[SYSFS_PATH], mapped[PATH_MAX];
	if (!path)
		return 0;
	path = debugfs_map(path, mapped);
	if ((minor = node_minor(path)) >= 0) {
		*fd = open_node(minor, flags);
		return 1;
	}
	if (!strncmp(path, "/proc/", 6) && (src = proc_fd(path)) >= 0) {
		minor = sim_minor(src);
		if (minor < 0)
			return 0;
		*fd = open_node(minor, flags);
		return 1;
	}
	if ((dev = sysfs_target(dirfd, path, attr))) {
		*fd = open_sysfs(dev, attr, flags);
		return 1;
	}
	return 0;
}

static int mode_arg(int flags, va_list ap)
{
	return (flags & O_CREAT) || (flags & __O_TMPFILE) == __O_TMPFILE ? va_arg(ap, int) : 0;
}

int __open_2(const char *, int);
int __open64_2(const char *, int);
int __openat_2(int, const char *, int);
int __openat64_2(int, const char *, int);
NEXT(open); NEXT(open64); NEXT(openat); NEXT(openat64); NEXT(__open_2); NEXT(__open64_2);
NEXT(__openat_2); NEXT(__openat64_2);

/* open(path, flags, mode) and openat(dirfd, path, flags, mode) forms */
#define OPEN_VARIADIC(fn, DIRFD_PARAM, DIRFD, DIRFD_ARG)                               \
	EXPORT int fn(DIRFD_PARAM const char *path, int flags, ...)                    \
	{                                                                              \
		va_list ap;                                                            \
		va_start(ap, flags);                                                   \
		int mode = mode_arg(flags, ap), fd;                                    \
		va_end(ap);                                                            \
		char mapped_[PATH_MAX];                                                \
		if (sim_open(DIRFD, path, flags, &fd))                                 \
			return fd;                                                     \
		return RESOLVE(fn)(DIRFD_ARG debugfs_map(path, mapped_), flags, mode); \
	}
OPEN_VARIADIC(open, , AT_FDCWD, )
OPEN_VARIADIC(open64, , AT_FDCWD, )
OPEN_VARIADIC(openat, int dirfd COMMA, dirfd, dirfd COMMA)
OPEN_VARIADIC(openat64, int dirfd COMMA, dirfd, dirfd COMMA)

/* the fortified __open_2(path, flags) and __openat_2(dirfd, path, flags) forms */
#define OPEN_FORTIFIED(fn, DIRFD_PARAM, DIRFD, DIRFD_ARG)                              \
	EXPORT int fn(DIRFD_PARAM const char *path, int flags)                         \
	{                                                                              \
		int fd;                                                                \
		char mapped_[PATH_MAX];                                                \
		if (sim_open(DIRFD, path, flags, &fd))                                 \
			return fd;                                                     \
		return RESOLVE(fn)(DIRFD_ARG debugfs_map(path, mapped_), flags);       \
	}
OPEN_FORTIFIED(__open_2, , AT_FDCWD, )
OPEN_FORTIFIED(__open64_2, , AT_FDCWD, )
OPEN_FORTIFIED(__openat_2, int dirfd COMMA, dirfd, dirfd COMMA)
OPEN_FORTIFIED(__openat64_2, int dirfd COMMA, dirfd, dirfd COMMA)

/* ---- stat ------------------------------------------------------------------------------- */
/* A device node as devtmpfs shows it; path and fd answers agree (st_dev, st_ino, st_rdev). */
static void fake_stat(int minor, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_dev = makedev(0, 5);
	st->st_ino = 0x7e000 + minor;
	st->st_mode = S_IFCHR | 0666;
	st->st_nlink = 1;
	st->st_rdev = makedev(DRM_MAJOR, minor);
	st->st_blksize = 4096;
}

/* minor of the node a path (relative to dirfd) or an fd names, or -1 */
static int stat_minor(int dirfd, const char *path, int at_flags)
{
	if (path && !*path && (at_flags & AT_EMPTY_PATH))
		return sim_minor(dirfd);
	if (!path)
		return -1;
	int m = node_minor(path);
	if (m >= 0)
		return m;
	if (!strncmp(path, "/proc/", 6) && !(at_flags & AT_SYMLINK_NOFOLLOW)) {
		int src = proc_fd(path);
		if (src >= 0)
			return sim_minor(src);
	}
	return -1;
}

NEXT(stat); NEXT(stat64); NEXT(lstat); NEXT(lstat64); NEXT(fstat); NEXT(fstat64);
NEXT(fstatat); NEXT(fstatat64);

#define STAT_PATH(fn, type, nofollow)                                                  \
	EXPORT int fn(const char *path, struct type *st)                               \
	{                                                                              \
		int m = stat_minor(AT_FDCWD, path, nofollow);                          \
		if (m >= 0) {                                                          \
			fake_stat(m, (struct stat *)st);                               \
			return 0;                                                      \
		}                                                                      \
		char mapped_[PATH_MAX];                                                \
		return RESOLVE(fn)(debugfs_map(path, mapped_), st);                    \
	}
STAT_PATH(stat, stat, 0)
STAT_PATH(stat64, stat64, 0)
STAT_PATH(lstat, stat, AT_SYMLINK_NOFOLLOW)
STAT_PATH(lstat64, stat64, AT_SYMLINK_NOFOLLOW)

#define STAT_FD(fn, type)                                                              \
	EXPORT int fn(int fd, struct type *st)                                         \
	{                                                                              \
		int m = sim_minor(fd);                                                 \
		if (m >= 0) {                                                          \
			fake_stat(m, (struct stat *)st);                               \
			return 0;                                                      \
		}                                                                      \
		return RESOLVE(fn)(fd, st);                                            \
	}
STAT_FD(fstat, stat)
STAT_FD(fstat64, stat64)

#define STAT_AT(fn, type)                                                              \
	EXPORT int fn(int dirfd, const char *path, struct type *st, int flags)         \
	{                                                                              \
		int m = stat_minor(dirfd, path, flags);                                \
		if (m >= 0) {                                                          \
			fake_stat(m, (struct stat *)st);                               \
			return 0;                                                      \
		}                                                                      \
		char mapped_[PATH_MAX];                                                \
		return RESOLVE(fn)(dirfd, debugfs_map(path, mapped_), st, flags);      \
	}
STAT_AT(fstatat, stat)
STAT_AT(fstatat64, stat64)

/* glibc before 2.33 exported the stat family as __xstat & co with a version argument;
 * LOOKUP gives the minor of what `arg` names, or -1. */
#define VERSIONED_STAT(fn, type, ARG_T, LOOKUP, MAP)                                   \
	NEXT(fn);                                                                      \
	EXPORT int fn(int ver, ARG_T arg, struct type *st)                             \
	{                                                                              \
		char mapped_[PATH_MAX];                                                \
		int m = LOOKUP;                                                        \
		if (m >= 0) {                                                          \
			fake_stat(m, (struct stat *)st);                               \
			return 0;                                                      \
		}                                                                      \
		if (!RESOLVE(fn)) {                                                    \
			errno = ENOSYS;                                                \
			return -1;                                                     \
		}                                                                      \
		return next_##fn(ver, MAP, st);                                        \
	}
int __xstat(int, const char *, struct stat *);
int __xstat64(int, const char *, struct stat64 *);
int __lxstat(int, const char *, struct stat *);
int __lxstat64(int, const char *, struct stat64 *);
int __fxstat(int, int, struct stat *);
int __fxstat64(int, int, struct stat64 *);
VERSIONED_STAT(__xstat, stat, const char *, stat_minor(AT_FDCWD, arg, 0), debugfs_map(arg, mapped_))
VERSIONED_STAT(__xstat64, stat64, const char *, stat_minor(AT_FDCWD, arg, 0), debugfs_map(arg, mapped_))
VERSIONED_STAT(__lxstat, stat, const char *, stat_minor(AT_FDCWD, arg, AT_SYMLINK_NOFOLLOW),
	       debugfs_map(arg, mapped_))
VERSIONED_STAT(__lxstat64, stat64, const char *, stat_minor(AT_FDCWD, arg, AT_SYMLINK_NOFOLLOW),
	       debugfs_map(arg, mapped_))
VERSIONED_STAT(__fxstat, stat, int, sim_minor(arg), ((void)mapped_, arg))
VERSIONED_STAT(__fxstat64, stat64, int, sim_minor(arg), ((void)mapped_, arg))

NEXT(statx);
EXPORT int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *stx)
{
	int m = stat_minor(dirfd, path, flags);
	if (m >= 0) {
		struct stat st;
		fake_stat(m, &st);
		memset(stx, 0, sizeof(*stx));
		stx->stx_mask = STATX_BASIC_STATS;
		stx->stx_blksize = st.st_blksize;
		stx->stx_nlink = st.st_nlink;
		stx->stx_mode = st.st_mode;
		stx->stx_ino = st.st_ino;
		stx->stx_rdev_major = major(st.st_rdev);
		stx->stx_rdev_minor = minor(st.st_rdev);
		stx->stx_dev_major = major(st.st_dev);
		stx->stx_dev_minor = minor(st.st_dev);
		return 0;
	}
	char mapped[PATH_MAX];
	return RESOLVE(statx)(dirfd, debugfs_map(path, mapped), flags, mask, stx);
}

NEXT(access); NEXT(faccessat);
EXPORT int access(const char *path, int mode)
{
	char mapped[PATH_MAX];
	if (stat_minor(AT_FDCWD, path, 0) >= 0)
		return 0;
	return RESOLVE(access)(debugfs_map(path, mapped), mode);
}

EXPORT int faccessat(int dirfd, const char *path, int mode, int flags)
{
	char mapped[PATH_MAX];
	if (stat_minor(dirfd, path, flags) >= 0)
		return 0;
	return RESOLVE(faccessat)(dirfd, debugfs_map(path, mapped), mode, flags);
}

/* ---- readlink ------------------------------------------------------------------------------ */
static ssize_t link_answer(const char *path, char *buf, size_t size)
{
	char name[64];
	int src = (path && !strncmp(path, "/proc/", 6)) ? proc_fd(path) : -1;
	if (src < 0)
		return -2;
	int m = sim_minor(src);
	if (m < 0)
		return -2;
	node_name(m, name, sizeof(name));
	size_t n = strlen(name);
	if (n > size)
		n = size;
	memcpy(buf, name, n);
	return n;
}

NEXT(readlink); NEXT(readlinkat);
EXPORT ssize_t readlink(const char *path, char *buf, size_t size)
{
	ssize_t r = link_answer(path, buf, size);
	return r != -2 ? r : RESOLVE(readlink)(path, buf, size);
}

EXPORT ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t size)
{
	ssize_t r = link_answer(path, buf, size);
	return r != -2 ? r : RESOLVE(readlinkat)(dirfd, path, buf, size);
}

/* ---- ioctl --------------------------------------------------------------------------------- */
NEXT(ioctl);
EXPORT int ioctl(int fd, unsigned long request, ...)
{
	va_list ap;
	va_start(ap, request);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	if (!is_sim(fd))
		return RESOLVE(ioctl)(fd, request, arg);
	uint32_t req = (uint32_t)request;
	uint32_t size = (req >> 16) & 0x3fff, dir = req >> 30;
	uint64_t addr = (uintptr_t)arg;
	char stackbuf[512];
	char *in = size <= sizeof(stackbuf) ? stackbuf : malloc(size);
	uint64_t unreadable = 0;
	uint32_t len = 0;
	struct reply rep;
	if (!in) {
		errno = ENOMEM;
		return -1;
	}
	if (size && (dir & 1)) {
		if (self_read(in, addr, size))
			unreadable = IOCTL_ARG_UNREADABLE;
		else
			len = size;
	}
	int r = call(OP_IOCTL, fd, req, addr, unreadable, in, len, &rep);
	if (in != stackbuf)
		free(in);
	if (r)
		return -1;
	drain(fd, rep.c);
	int err = (int)rep.err;
	if (rep.len && self_write(addr, tbuf, rep.len) && !err)
		err = EFAULT;  /* written back even when the call failed, as DRM does */
	if (err) {
		if (rep.fd >= 0)
			close(rep.fd);
		errno = err;
		return -1;
	}
	if (rep.flags & F_FD) {
		if (!(rep.flags & F_CLOEXEC))
			fcntl(rep.fd, F_SETFD, 0);
		return rep.fd;
	}
	if (rep.fd >= 0)
		close(rep.fd);
	return (int)(int64_t)rep.a;
}

/* ---- VM-fd read grants ---------------------------------------------------------------------- */
struct grant_record {   /* the end of an F_GRANT reply (wire.GRANT) */
	uint64_t start, end, offset, slot, gen;
};
_Static_assert(sizeof(struct grant_record) == 40, "grant record is 40 bytes");

struct grant {
	uint64_t cookie;        /* the VM file's socket cookie; 0: a free entry */
	uint64_t start, end;    /* the GPU VA window granted */
	const char *map;        /* [start, end) of the BO, mapped read-only */
	uint64_t slot, gen;     /* the VM's generation counter and its value when granted */
	uint64_t used;          /* last use, for eviction */
};
#define GRANTS 32               /* mappings held at most (least recently used go first) */
#define GRANT_MAX (1ull << 30)  /* largest window taken (the server grants at most 64 MiB) */
#define GRANT_HINTS 4096        /* fds below this that received a grant are marked */
static pthread_mutex_t grant_lock = PTHREAD_MUTEX_INITIALIZER;
static struct grant grants[GRANTS];
static int ngrants;                        /* live entries (read without the lock as a hint) */
static uint64_t grant_tick;
static unsigned char grant_hint[GRANT_HINTS];  /* fd may have grants: only those pay a cookie look-up */
static const volatile uint64_t *gens;      /* the server's VM generation counters, read-only */
static uint64_t gens_slots;
static int fast_state = -1;                /* -1 not set up, 0 off, 1 on */
static int fast_verify;                    /* XE_EUDEBUG_VM_FAST=verify */

NEXT(close); NEXT(munmap); NEXT(mmap);
static void grant_drop(struct grant *g)
{
	RESOLVE(munmap)((void *)g->map, g->end - g->start);
	g->cookie = 0;
	__atomic_store_n(&ngrants, ngrants - 1, __ATOMIC_RELAXED);
}

/* Whether preads may take grants: maps the generation counters on first use (not under
 * grant_lock: the call may clone a connection, which takes `lock`). */
static int fast_ready(void)
{
	struct reply rep;
	int state = __atomic_load_n(&fast_state, __ATOMIC_ACQUIRE);
	if (state >= 0)
		return state;
	const char *env = getenv("XE_EUDEBUG_VM_FAST");
	void *p = MAP_FAILED;
	fast_verify = env && !strcmp(env, "verify");
	if (!(env && !strcmp(env, "0")) && !call_ok(OP_VM_GENS, -1, 0, 0, 0, NULL, 0, &rep) && rep.fd >= 0) {
		if (rep.a >= 8)
			p = RESOLVE(mmap)(NULL, rep.a, PROT_READ, MAP_SHARED, rep.fd, 0);
		RESOLVE(close)(rep.fd);
	}  /* else: turned off, or a kernel model without grants */
	pthread_mutex_lock(&grant_lock);
	if (fast_state < 0) {
		if (p != MAP_FAILED) {
			gens = p;
			gens_slots = rep.a / 8;
			p = MAP_FAILED;
		}
		__atomic_store_n(&fast_state, gens ? 1 : 0, __ATOMIC_RELEASE);
	}
	state = fast_state;
	pthread_mutex_unlock(&grant_lock);
	if (p != MAP_FAILED)  /* another thread set up first */
		RESOLVE(munmap)(p, rep.a);
	return state;
}

/* Takes the grant of a pread's reply: maps [start, end) of the BO (memfd bo) for fd's file. */
static void grant_add(int fd, int bo, const struct grant_record *rec)
{
	uint64_t ck = cookie_of(fd);
	uint64_t len = rec->end - rec->start;
	if (!ck || rec->end <= rec->start || len > GRANT_MAX || rec->offset & 4095 || rec->start & 4095)
		return;
	pthread_mutex_lock(&grant_lock);
	if (fast_state != 1 || rec->slot >= gens_slots) {
		pthread_mutex_unlock(&grant_lock);
		return;
	}
	void *p = RESOLVE(mmap)(NULL, len, PROT_READ, MAP_SHARED, bo, (off_t)rec->offset);
	if (p == MAP_FAILED) {
		pthread_mutex_unlock(&grant_lock);
		return;
	}
	struct grant *slot = NULL;
	for (int i = 0; i < GRANTS; i++) {
		struct grant *g = &grants[i];
		if (!g->cookie) {
			slot = slot ? slot : g;
			continue;
		}
		/* void ones, and the file's grants overlapping the new window, go now */
		if (gens[g->slot] != g->gen || (g->cookie == ck && g->start < rec->end && rec->start < g->end)) {
			grant_drop(g);
			slot = slot ? slot : g;
		}
	}
	if (!slot) {  /* full: the least recently used goes */
		slot = &grants[0];
		for (int i = 1; i < GRANTS; i++)
			if (grants[i].used < slot->used)
				slot = &grants[i];
		grant_drop(slot);
	}
	*slot = (struct grant){ ck, rec->start, rec->end, p, rec->slot, rec->gen, ++grant_tick };
	__atomic_store_n(&ngrants, ngrants + 1, __ATOMIC_RELAXED);
	if (fd < GRANT_HINTS)
		grant_hint[fd] = 1;
	pthread_mutex_unlock(&grant_lock);
}

static int grant_hinted(int fd)
{
	return __atomic_load_n(&ngrants, __ATOMIC_RELAXED) && fd >= 0 && (fd >= GRANT_HINTS || grant_hint[fd]);
}

/* A pread served from a grant: 1 with *out set (the count, or -1 with errno EFAULT for a buffer
 * the kernel could not write either), or 0: make the call. */
static int fast_pread(int fd, void *buf, size_t n, off_t off, ssize_t *out)
{
	if (!grant_hinted(fd) || !n || off < 0 || n > MAX_RW)
		return 0;
	int saved = errno;
	uint64_t ck = cookie_of(fd);
	int served = 0;
	errno = saved;
	if (!ck)
		return 0;
	uint64_t va = (uint64_t)off;
	pthread_mutex_lock(&grant_lock);
	for (int i = 0; i < GRANTS; i++) {
		struct grant *g = &grants[i];
		if (g->cookie != ck || va < g->start || va >= g->end || n > g->end - va)
			continue;
		/* seqlock-style: the counter unchanged before and after the copy */
		if (__atomic_load_n(&gens[g->slot], __ATOMIC_ACQUIRE) != g->gen) {
			grant_drop(g);
			break;
		}
		struct iovec l = { (void *)(g->map + (va - g->start)), n }, r = { buf, n };
		ssize_t w = process_vm_writev(getpid(), &l, 1, &r, 1, 0);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&gens[g->slot], __ATOMIC_RELAXED) != g->gen) {
			grant_drop(g);
			break;
		}
		g->used = ++grant_tick;
		served = 1;
		if (w == (ssize_t)n) {
			*out = n;
		} else {
			*out = -1;
			errno = EFAULT;
		}
		break;
	}
	pthread_mutex_unlock(&grant_lock);
	return served;
}

/* XE_EUDEBUG_VM_FAST=verify: a pread served from a grant (result r) is made as a call too; a
 * difference is reported on stderr, and the call's answer is the result. */
static ssize_t fast_verified(int fd, void *buf, size_t n, off_t off, ssize_t r)
{
	struct reply rep;
	char msg[160];
	if (!fast_verify)
		return r;
	int e = errno;
	if (call(OP_PREAD, fd, n, (uint64_t)off, 0, NULL, 0, &rep))
		return r;  /* no answer to compare with */
	drain(fd, rep.c);
	if (rep.fd >= 0)
		RESOLVE(close)(rep.fd);
	ssize_t want = rep.err ? -1 : (ssize_t)rep.len;
	if (want == r && (r < 0 ? (uint64_t)e == rep.err : !memcmp(buf, tbuf, r))) {
		errno = e;
		return r;
	}
	snprintf(msg, sizeof(msg), "xe_eudebug preload: VM fd pread of %zu bytes at %#llx: the grant's "
		 "answer differs from the server's (%zd, errno %llu)\n", n, (unsigned long long)off, want,
		 (unsigned long long)rep.err);
	die_msg(msg);
	if (rep.err) {
		errno = (int)rep.err;
		return -1;
	}
	if (self_write((uintptr_t)buf, tbuf, rep.len))
		return -1;
	return rep.len;
}

/* Drops the grants of fd's file (fd about to be closed). */
static void grant_forget(int fd)
{
	if (!grant_hinted(fd))
		return;
	int saved = errno;
	uint64_t ck = cookie_of(fd);
	errno = saved;
	if (!ck)
		return;
	pthread_mutex_lock(&grant_lock);
	for (int i = 0; i < GRANTS; i++)
		if (grants[i].cookie == ck)
			grant_drop(&grants[i]);
	pthread_mutex_unlock(&grant_lock);
}

/* ---- data calls ---------------------------------------------------------------------------- */
static ssize_t sim_data(uint16_t op, int fd, void *buf, size_t n, off_t off)
{
	struct reply rep;
	if (n > MAX_RW)
		n = MAX_RW;
	if (call_ok(op, fd, n, (uint64_t)off, 0, NULL, 0, &rep))
		return -1;
	if (rep.fd >= 0)
		close(rep.fd);
	drain(fd, rep.c);
	if (self_write((uintptr_t)buf, tbuf, rep.len))
		return -1;
	return rep.len;
}

/* pread of a simulated file: the call asks for a read grant when grants are on. */
static ssize_t sim_pread(int fd, void *buf, size_t n, off_t off)
{
	struct reply rep;
	if (n > MAX_RW)
		n = MAX_RW;
	int want = fast_ready();
	if (call_ok(OP_PREAD, fd, n, (uint64_t)off, want ? PREAD_GRANT : 0, NULL, 0, &rep))
		return -1;
	drain(fd, rep.c);
	uint32_t len = rep.len;
	if (rep.flags & F_GRANT) {
		struct grant_record rec;
		if (rep.fd < 0 || len < sizeof(rec)) {
			if (rep.fd >= 0)
				RESOLVE(close)(rep.fd);
			errno = EPROTO;
			return -1;
		}
		len -= sizeof(rec);
		memcpy(&rec, tbuf + len, sizeof(rec));
		grant_add(fd, rep.fd, &rec);
	}
	if (rep.fd >= 0)
		RESOLVE(close)(rep.fd);
	if (self_write((uintptr_t)buf, tbuf, len))
		return -1;
	return len;
}

static ssize_t sim_pwrite(int fd, const void *buf, size_t n, off_t off)
{
	struct reply rep;
	if (n > MAX_RW)
		n = MAX_RW;
	char *tmp = malloc(n ? n : 1);
	if (!tmp) {
		errno = ENOMEM;
		return -1;
	}
	if (self_read(tmp, (uintptr_t)buf, n)) {
		free(tmp);
		errno = EFAULT;
		return -1;
	}
	int r = call_ok(OP_PWRITE, fd, 0, (uint64_t)off, 0, tmp, n, &rep);
	free(tmp);
	if (r)
		return -1;
	if (rep.fd >= 0)
		close(rep.fd);
	return (ssize_t)rep.a;
}

static off_t sim_lseek(int fd, off_t off, int whence)
{
	struct reply rep;
	if (call_ok(OP_LSEEK, fd, (uint64_t)off, (uint64_t)whence, 0, NULL, 0, &rep))
		return -1;
	if (rep.fd >= 0)
		close(rep.fd);
	return (off_t)rep.a;
}

static int sysfs_of(int fd)
{
	return fd >= 0 && fd < SYSFS_FDS ? sysfs_dev[fd] : 0;
}

/* enable_eudebug: reads give the simulator's value, writes set it (kstrtobool words). */
static int device_enabled(int dev, int set, int value)
{
	struct reply rep;
	if (call_ok(OP_DEVICE_ENABLED, -1, dev - 1, set, value, NULL, 0, &rep))
		return -1;
	return (int)rep.a;
}

NEXT(read); NEXT(pread); NEXT(pread64); NEXT(write); NEXT(pwrite); NEXT(pwrite64);

/* An attribute's contents (at most size bytes): its length, or -1 with errno. */
static ssize_t sysfs_contents(int fd, char *text, size_t size)
{
	struct reply rep;
	const char *attr = sysfs_attr[fd];
	if (!*attr) {
		int v = device_enabled(sysfs_of(fd), 0, 0);
		if (v < 0)
			return -1;
		text[0] = v ? '1' : '0';
		text[1] = '\n';
		return 2;
	}
	if (call_ok(OP_SYSFS, -1, sysfs_of(fd) - 1, 0, 0, attr, strlen(attr), &rep))
		return -1;
	if (rep.fd >= 0)
		close(rep.fd);
	size_t len = rep.len < size ? rep.len : size;
	memcpy(text, tbuf, len);
	return len;
}

static ssize_t sysfs_read(int fd, void *buf, size_t n, off_t off, int use_off)
{
	char text[64];
	ssize_t len = sysfs_contents(fd, text, sizeof(text));
	if (len < 0)
		return -1;
	if (!use_off)
		off = lseek(fd, 0, SEEK_CUR);
	if (off < 0)
		return -1;
	size_t got = off >= len ? 0 : len - off;
	if (got > n)
		got = n;
	memcpy(buf, text + off, got);
	if (!use_off)
		lseek(fd, off + got, SEEK_SET);
	return got;
}

static ssize_t sysfs_write(int fd, const void *buf, size_t n)
{
	if (*sysfs_attr[fd]) {
		/* the attribute's path, a NUL, then the data (a sysfs store sees at most a page) */
		char msg[SYSFS_PATH + 4096];
		size_t plen = strlen(sysfs_attr[fd]), dlen = n < 4096 ? n : 4096;
		struct reply rep;
		memcpy(msg, sysfs_attr[fd], plen + 1);
		memcpy(msg + plen + 1, buf, dlen);
		if (call_ok(OP_SYSFS, -1, sysfs_of(fd) - 1, 1, 0, msg, plen + 1 + dlen, &rep))
			return -1;
		if (rep.fd >= 0)
			close(rep.fd);
		return (ssize_t)rep.a;
	}
	char text[8] = { 0 };
	memcpy(text, buf, n < sizeof(text) - 1 ? n : sizeof(text) - 1);
	int value;
	switch (text[0]) {
	case '1': case 'y': case 'Y': case 't': case 'T': value = 1; break;
	case '0': case 'n': case 'N': case 'f': case 'F': value = 0; break;
	case 'o': case 'O':
		if (text[1] == 'n' || text[1] == 'N') { value = 1; break; }
		if (text[1] == 'f' || text[1] == 'F') { value = 0; break; }
		/* fall through */
	default:
		errno = EINVAL;
		return -1;
	}
	if (device_enabled(sysfs_of(fd), 1, value) < 0)
		return -1;
	return n;
}

EXPORT ssize_t read(int fd, void *buf, size_t n)
{
	if (sysfs_of(fd))
		return sysfs_read(fd, buf, n, 0, 0);
	if (is_sim(fd))
		return sim_data(OP_READ, fd, buf, n, 0);
	return RESOLVE(read)(fd, buf, n);
}

EXPORT ssize_t pread(int fd, void *buf, size_t n, off_t off)
{
	ssize_t r;
	if (sysfs_of(fd))
		return sysfs_read(fd, buf, n, off, 1);
	if (fast_pread(fd, buf, n, off, &r))
		return fast_verified(fd, buf, n, off, r);
	if (is_sim(fd))
		return sim_pread(fd, buf, n, off);
	return RESOLVE(pread)(fd, buf, n, off);
}

EXPORT ssize_t pread64(int fd, void *buf, size_t n, off64_t off)
{
	ssize_t r;
	if (sysfs_of(fd))
		return sysfs_read(fd, buf, n, off, 1);
	if (fast_pread(fd, buf, n, off, &r))
		return fast_verified(fd, buf, n, off, r);
	if (is_sim(fd))
		return sim_pread(fd, buf, n, off);
	return RESOLVE(pread64)(fd, buf, n, off);
}

EXPORT ssize_t write(int fd, const void *buf, size_t n)
{
	if (sysfs_of(fd))
		return sysfs_write(fd, buf, n);
	if (is_sim(fd)) {
		/* a VM file's write(): at the file position, which then advances */
		off_t pos = sim_lseek(fd, 0, SEEK_CUR);
		if (pos < 0)
			return -1;
		ssize_t r = sim_pwrite(fd, buf, n, pos);
		if (r > 0)
			sim_lseek(fd, pos + r, SEEK_SET);
		return r;
	}
	return RESOLVE(write)(fd, buf, n);
}

EXPORT ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
	if (is_sim(fd))
		return sim_pwrite(fd, buf, n, off);
	return RESOLVE(pwrite)(fd, buf, n, off);
}

EXPORT ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
	if (is_sim(fd))
		return sim_pwrite(fd, buf, n, off);
	return RESOLVE(pwrite64)(fd, buf, n, off);
}

NEXT(lseek); NEXT(lseek64); NEXT(fsync); NEXT(dup2); NEXT(dup3);
EXPORT off_t lseek(int fd, off_t off, int whence)
{
	if (!sysfs_of(fd) && is_sim(fd))
		return sim_lseek(fd, off, whence);
	return RESOLVE(lseek)(fd, off, whence);
}

EXPORT off64_t lseek64(int fd, off64_t off, int whence)
{
	if (!sysfs_of(fd) && is_sim(fd))
		return sim_lseek(fd, off, whence);
	return RESOLVE(lseek64)(fd, off, whence);
}

EXPORT int fsync(int fd)
{
	struct reply rep;
	if (is_sim(fd)) {
		if (call_ok(OP_FSYNC, fd, 0, 0, 0, NULL, 0, &rep))
			return -1;
		if (rep.fd >= 0)
			close(rep.fd);
		return 0;
	}
	return RESOLVE(fsync)(fd);
}

EXPORT int close(int fd)
{
	if (fd >= 0 && fd < SYSFS_FDS)
		sysfs_dev[fd] = 0;
	grant_forget(fd);
	return RESOLVE(close)(fd);
}

EXPORT int dup2(int old, int new)
{
	int r = RESOLVE(dup2)(old, new);
	if (r >= 0 && r < SYSFS_FDS && r != old) {
		sysfs_dev[r] = sysfs_of(old);
		if (sysfs_of(old))
			memmove(sysfs_attr[r], sysfs_attr[old], SYSFS_PATH);
	}
	return r;
}

EXPORT int dup3(int old, int new, int flags)
{
	int r = RESOLVE(dup3)(old, new, flags);
	if (r >= 0 && r < SYSFS_FDS) {
		sysfs_dev[r] = sysfs_of(old);
		if (sysfs_of(old))
			memmove(sysfs_attr[r], sysfs_attr[old], SYSFS_PATH);
	}
	return r;
}

/* ---- mmap ---------------------------------------------------------------------------------- */
NEXT(mmap64);
static void *sim_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	struct reply rep;
	if (!len) {
		errno = EINVAL;
		return MAP_FAILED;
	}
	if (call_ok(OP_MMAP, fd, len, (uint64_t)off, 0, NULL, 0, &rep))
		return MAP_FAILED;
	if (!(rep.flags & F_FD) || rep.fd < 0) {
		errno = EPROTO;
		return MAP_FAILED;
	}
	/* A write-only mapping stays readable: the server copies from it as the kernel would. */
	if (prot & PROT_WRITE)
		prot |= PROT_READ;
	void *p = RESOLVE(mmap)(addr, len, prot, flags, rep.fd, (off_t)rep.a);
	int e = errno;
	RESOLVE(close)(rep.fd);
	errno = e;
	return p;
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	if (!(flags & MAP_ANONYMOUS) && is_sim(fd))
		return sim_mmap(addr, len, prot, flags, fd, off);
	return RESOLVE(mmap)(addr, len, prot, flags, fd, off);
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off)
{
	if (!(flags & MAP_ANONYMOUS) && is_sim(fd))
		return sim_mmap(addr, len, prot, flags, fd, off);
	return RESOLVE(mmap64)(addr, len, prot, flags, fd, off);
}

/* ---- fork ------------------------------------------------------------------------------------ */
/* The child's calls need its own identity: drop the parent's connections and connect at once,
 * before the child can drop privileges (setuid) that connecting needs. */
static void atfork_prepare(void)
{
	pthread_mutex_lock(&lock);
	pthread_mutex_lock(&grant_lock);
}
static void atfork_parent(void)
{
	pthread_mutex_unlock(&grant_lock);
	pthread_mutex_unlock(&lock);
}
/* A child keeps its parent's grants: its mappings are the same shared memory, its fds the same
 * open VM files, and the generation counters the same page, so they stay exactly as valid. */
static void atfork_child(void)
{
	pthread_mutex_init(&grant_lock, NULL);
	pthread_mutex_init(&lock, NULL);
	if (tconn >= 0)
		RESOLVE(close)(tconn);
	tconn = -1;
	if (master >= 0) {
		RESOLVE(close)(master);
		master = -1;
		master = path_connect();
	}
}

static void thread_exit(void *unused)
{
	(void)unused;
	if (tconn >= 0)
		RESOLVE(close)(tconn);
	tconn = -1;
	free(tbuf);
	tbuf = NULL;
	tbuf_size = 0;
}

__attribute__((constructor)) static void preload_init(void)
{
	pthread_key_create(&thread_key, thread_exit);
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
	if (getenv("XE_EUDEBUG_PRELOAD_CHECK"))
		die_msg("xe_eudebug preload: loaded\n");
}
