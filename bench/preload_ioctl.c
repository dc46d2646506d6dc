/*
 * Per-call cost of an ioctl, timed in C: DRM_IOCTL_VERSION on /dev/dri/card0 (through the
 * preload library and the simulator when run under `xe-eudebug run`) and ioctl(TCGETS) on a pty
 * (a real ioctl on a real fd).  Prints "<name> <calls> <ns per call>" for each, interleaved
 * rounds so load affects both alike.  Driven by bench/preload_overhead.py.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "xe_uapi_min.h"  /* tests/data: struct drm_version, DRM_IOCTL_VERSION */

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv)
{
	int calls = argc > 1 ? atoi(argv[1]) : 2000, rounds = argc > 2 ? atoi(argv[2]) : 5;
	int drm = open("/dev/dri/card0", O_RDWR);
	int pty = posix_openpt(O_RDWR | O_NOCTTY);
	char name[16];
	struct drm_version v = { .name = name, .name_len = sizeof(name) };
	struct termios tio;
	if (drm < 0 || pty < 0) {
		perror("open");
		return 1;
	}
	for (int r = 0; r < rounds; r++) {
		double t0 = now();
		for (int i = 0; i < calls; i++)
			if (ioctl(drm, DRM_IOCTL_VERSION, &v)) {
				perror("DRM_IOCTL_VERSION");
				return 1;
			}
		double t1 = now();
		for (int i = 0; i < calls * 100; i++)
			if (ioctl(pty, TCGETS, &tio)) {
				perror("TCGETS");
				return 1;
			}
		double t2 = now();
		printf("drm_version %d %.0f\ntcgets %d %.1f\n", calls, (t1 - t0) / calls, calls * 100,
		       (t2 - t1) / (calls * 100));
	}
	return 0;
}
