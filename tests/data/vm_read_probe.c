/*
 * A debugger in C that reads a client's VM through VM fds, driven line by line on stdin, for
 * tests/test_vm_fast.py and bench/vm_pread.py (run through `xe-eudebug run`, so its preads go
 * through the preload library and its read grants).  Each command prints one line:
 *
 *   attach PID             -> "vm CLIENT VM" of the first VM event of the client PID
 *   open CLIENT VM         -> "fd N" (DRM_XE_EUDEBUG_IOCTL_VM_OPEN)
 *   read FD VA N           -> "ok HEX" (pread of N bytes at VA; HEX the bytes read) or "err ERRNO"
 *   forkread FD VA N       -> the same answer, from a forked child's pread
 *   loop FD VA N COUNT     -> "loop NS" (COUNT preads of N bytes at VA, VA + N, ... wrapping in a
 *                             4 KiB page; NS per pread) or "err ERRNO"
 *   dup FD                 -> "fd N"
 *   close FD               -> "closed"
 *   detach                 -> "detached" (closes the debugger fd)
 *   res                    -> "res FDS MAPS BOS" (open fds, lines of /proc/self/maps, and those of
 *                             them that map a simulated BO's memfd: the read grants held)
 *
 * Struct layouts and ioctl numbers: xe_uapi_min.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "xe_uapi_min.h"

#define EVENT_READ 1
#define EVENT_VM 3
#define EVENT_CREATE 1

static int dbg = -1;

static void reply_read(ssize_t r, const unsigned char *buf)
{
	if (r < 0) {
		printf("err %d\n", errno);
		return;
	}
	printf("ok ");
	for (ssize_t i = 0; i < r; i++)
		printf("%02x", buf[i]);
	printf("\n");
}

static void cmd_attach(unsigned long long pid)
{
	int fd = open("/dev/dri/card0", O_RDWR);
	struct eudebug_connect c = { .pid = pid };
	dbg = fd < 0 ? -1 : ioctl(fd, XE_EUDEBUG_CONNECT, &c);
	if (dbg < 0) {
		printf("err %d\n", errno);
		return;
	}
	for (int tries = 0; tries < 1000; tries++) {
		uint64_t buf[64] = { 0 };
		struct eudebug_event *e = (void *)buf;
		e->len = sizeof(buf);
		e->type = EVENT_READ;
		if (ioctl(dbg, EUDEBUG_READ_EVENT, e)) {
			if (errno == EAGAIN || errno == EINTR || errno == ETIMEDOUT || errno == ENOENT)
				continue;
			printf("err %d\n", errno);
			return;
		}
		if (e->type == EVENT_VM && e->flags & EVENT_CREATE) {
			printf("vm %llu %llu\n", (unsigned long long)buf[3], (unsigned long long)buf[4]);
			return;
		}
	}
	printf("err %d\n", ETIMEDOUT);
}

static double now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

static int count_fds(void)
{
	int n = 0;
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	while (readdir(d))
		n++;
	closedir(d);
	return n - 3;  /* ".", ".." and the directory's own fd */
}

static void count_maps(int *maps, int *bos)
{
	char line[512];
	FILE *f = fopen("/proc/self/maps", "r");
	*maps = *bos = 0;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		*maps += 1;
		*bos += strstr(line, "memfd:xe-bo-") != NULL;
	}
	fclose(f);
}

int main(void)
{
	char line[256];
	setvbuf(stdout, NULL, _IOLBF, 0);
	while (fgets(line, sizeof(line), stdin)) {
		unsigned long long a = 0, b = 0, c = 0, d = 0;
		char cmd[16];
		unsigned char buf[4096];
		int n = sscanf(line, "%15s %llu %llx %llu %llu", cmd, &a, &b, &c, &d);
		if (n < 1)
			continue;
		if (!strcmp(cmd, "attach")) {
			cmd_attach(strtoull(line + 7, NULL, 10));
		} else if (!strcmp(cmd, "open")) {
			unsigned long long ch = 0, vh = 0;
			sscanf(line + 5, "%llu %llu", &ch, &vh);
			struct eudebug_vm_open o = { .client_handle = ch, .vm_handle = vh };
			int fd = ioctl(dbg, EUDEBUG_VM_OPEN, &o);
			if (fd < 0)
				printf("err %d\n", errno);
			else
				printf("fd %d\n", fd);
		} else if (!strcmp(cmd, "read") && n >= 4 && c <= sizeof(buf)) {
			reply_read(pread((int)a, buf, c, (off_t)b), buf);
		} else if (!strcmp(cmd, "forkread") && n >= 4 && c <= sizeof(buf)) {
			pid_t pid = fork();
			if (pid == 0) {
				reply_read(pread((int)a, buf, c, (off_t)b), buf);
				fflush(stdout);
				_exit(0);
			}
			int status;
			waitpid(pid, &status, 0);
		} else if (!strcmp(cmd, "loop") && n >= 5 && c <= sizeof(buf) && c) {
			double t0 = now_ns();
			ssize_t r = 0;
			for (unsigned long long i = 0; i < d && r >= 0; i++)
				r = pread((int)a, buf, c, (off_t)(b + (i * c) % 4096));
			double t1 = now_ns();
			if (r < 0)
				printf("err %d\n", errno);
			else
				printf("loop %.0f\n", (t1 - t0) / (d ? d : 1));
		} else if (!strcmp(cmd, "dup")) {
			int fd = dup((int)a);
			printf("fd %d\n", fd);
		} else if (!strcmp(cmd, "close")) {
			close((int)a);
			printf("closed\n");
		} else if (!strcmp(cmd, "detach")) {
			close(dbg);
			dbg = -1;
			printf("detached\n");
		} else if (!strcmp(cmd, "res")) {
			int maps, bos;
			count_maps(&maps, &bos);
			printf("res %d %d %d\n", count_fds(), maps, bos);
		} else {
			printf("err %d\n", EINVAL);
		}
	}
	return 0;
}
