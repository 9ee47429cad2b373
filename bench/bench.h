/*
 * bench.h: the few helpers the benchmark's traffic tools share (udp_flood,
 * udp_sink, udp_rtt, tcp_bulk): the clock, readiness files, number
 * parsing, and the signal flag that ends every loop.
 *
 * Each tool prints one line of "key value" pairs on stdout when it ends;
 * bench/run.sh reads them.  Times are CLOCK_MONOTONIC, which is one clock
 * for every process and network namespace on the machine, so timestamps
 * printed by two processes can be compared.
 */
#ifndef BENCH_H
#define BENCH_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Headers in front of a UDP payload in an IPv4 packet without options. */
#define BENCH_IPV4_UDP_HDRS	28

static volatile sig_atomic_t bench_done;

static void bench_on_signal(int sig)
{
	(void)sig;
	bench_done = 1;
}

/* SIGINT and SIGTERM set bench_done; no SA_RESTART, so a blocking call
 * returns EINTR and the loop sees the flag. */
static inline void bench_signals(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = bench_on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

static inline uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void bench_die(const char *prog, const char *what)
{
	fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(errno));
	exit(1);
}

/* Create PATH (if given): the readiness signal scripts wait for. */
static inline void bench_ready(const char *prog, const char *path)
{
	int fd;

	if (path == NULL)
		return;
	fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		bench_die(prog, path);
	close(fd);
}

/* A non-negative decimal number, or exit 2 naming the option. */
static inline uint64_t bench_number(const char *prog, const char *opt,
				    const char *s)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (*s == '\0' || *s == '-' || *end != '\0' || errno != 0) {
		fprintf(stderr, "%s: bad number for %s: %s\n", prog, opt, s);
		exit(2);
	}
	return v;
}

#endif /* BENCH_H */
