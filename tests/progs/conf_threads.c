/*
 * conf_threads: two threads on one divert socket lose and duplicate
 * nothing.
 *
 *	conf_threads split|both PORT COUNT TIMEOUT_S READYFILE
 *
 * Diverted packets are ICMP echo requests; each is known by its sequence
 * number.  "split": one thread reads (recvfrom) and hands each packet over
 * a pipe to the other, which writes it back (sendto).  "both": two threads
 * each wait (poll), read without blocking (MSG_DONTWAIT: the other may
 * have taken the packet, EAGAIN) and write back what they read.  Stops
 * after COUNT distinct packets or TIMEOUT_S seconds.  Prints
 *	thread N read R wrote W
 *	total T distinct D duplicates U write errors E
 * and exits 0 when D = T = COUNT and nothing failed.
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/in_systm.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>

#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "divert.h"

#define NSLOT	64

struct slot {
	char buf[65536];
	ssize_t len;
	struct sockaddr_in sin;
};

static struct slot slots[NSLOT];
static int fd, pipefd[2];
static long count;
static time_t deadline;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char seen[65536];
static long total, distinct, dups, werrs;

static struct worker {
	pthread_t tid;
	long nread, nwritten;
} workers[2];

static int
finished(void)
{
	int done;

	pthread_mutex_lock(&lock);
	done = distinct >= count || time(NULL) > deadline;
	pthread_mutex_unlock(&lock);
	return (done);
}

/* Count a packet read; 0 when it is a whole echo request. */
static int
record(const char *buf, ssize_t len)
{
	const struct ip *ip = (const struct ip *)(const void *)buf;
	const struct icmp *icp;
	unsigned seq;

	if (len < (ssize_t)(sizeof(*ip) + ICMP_MINLEN) || ip->ip_v != 4 ||
	    ntohs(ip->ip_len) != len)
		return (-1);
	icp = (const struct icmp *)(const void *)(buf + ip->ip_hl * 4);
	seq = ntohs(icp->icmp_seq);
	pthread_mutex_lock(&lock);
	total++;
	if (seen[seq]++)
		dups++;
	else
		distinct++;
	pthread_mutex_unlock(&lock);
	return (0);
}

static void
write_back(struct worker *w, struct slot *s)
{
	if (sendto(fd, s->buf, (size_t)s->len, 0, (struct sockaddr *)&s->sin,
	    sizeof(s->sin)) == s->len) {
		w->nwritten++;
		return;
	}
	pthread_mutex_lock(&lock);
	werrs++;
	pthread_mutex_unlock(&lock);
}

/* Wait up to 200 ms for a packet; 1 when one may be there. */
static int
wait_readable(void)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };

	return (poll(&pfd, 1, 200) == 1);
}

/* "split", thread 1: read, hand the slot number to the writer. */
static void *
reader(void *arg)
{
	struct worker *w = arg;
	struct slot *s;
	socklen_t len;
	unsigned char i = 0;

	while (!finished()) {
		if (!wait_readable())
			continue;
		s = &slots[i % NSLOT];
		len = sizeof(s->sin);
		s->len = recvfrom(fd, s->buf, sizeof(s->buf), MSG_DONTWAIT,
		    (struct sockaddr *)&s->sin, &len);
		if (s->len < 0 || record(s->buf, s->len) != 0)
			continue;
		w->nread++;
		if (write(pipefd[1], &i, 1) != 1)
			break;
		i = (unsigned char)((i + 1) % NSLOT);
	}
	close(pipefd[1]);
	return (NULL);
}

/* "split", thread 2: write back each slot the reader hands over. */
static void *
writer(void *arg)
{
	struct worker *w = arg;
	unsigned char i;

	while (read(pipefd[0], &i, 1) == 1)
		write_back(w, &slots[i % NSLOT]);
	return (NULL);
}

/* "both": each thread reads and writes back, in its own slot. */
static void *
both(void *arg)
{
	struct worker *w = arg;
	struct slot *s = &slots[w - workers];
	socklen_t len;

	while (!finished()) {
		if (!wait_readable())
			continue;
		len = sizeof(s->sin);
		s->len = recvfrom(fd, s->buf, sizeof(s->buf), MSG_DONTWAIT,
		    (struct sockaddr *)&s->sin, &len);
		if (s->len < 0) {
			if (errno != EAGAIN)	/* the other thread won */
				warn("recvfrom");
			continue;
		}
		if (record(s->buf, s->len) != 0)
			continue;
		w->nread++;
		write_back(w, s);
	}
	return (NULL);
}

int
main(int argc, char *argv[])
{
	struct sockaddr_in sin;
	long port, timeout;
	int split, r, i;

	if (argc != 6 || (strcmp(argv[1], "split") != 0 &&
	    strcmp(argv[1], "both") != 0)) {
		fprintf(stderr, "usage: conf_threads split|both PORT COUNT "
		    "TIMEOUT_S READYFILE\n");
		return (2);
	}
	split = strcmp(argv[1], "split") == 0;
	port = strtol(argv[2], NULL, 10);
	count = strtol(argv[3], NULL, 10);
	timeout = strtol(argv[4], NULL, 10);
	setvbuf(stdout, NULL, _IOLBF, 0);

	fd = socket(PF_DIVERT, SOCK_RAW, 0);
	if (fd == -1)
		err(1, "socket");
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1)
		err(1, "bind %ld", port);
	if (split && pipe2(pipefd, O_CLOEXEC) == -1)
		err(1, "pipe");
	deadline = time(NULL) + timeout;

	r = open(argv[5], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (r == -1)
		err(1, "%s", argv[5]);
	close(r);

	for (i = 0; i < 2; i++) {
		r = pthread_create(&workers[i].tid, NULL,
		    split ? (i == 0 ? reader : writer) : both, &workers[i]);
		if (r != 0)
			errx(1, "pthread_create: %s", strerror(r));
	}
	for (i = 0; i < 2; i++)
		pthread_join(workers[i].tid, NULL);
	for (i = 0; i < 2; i++)
		printf("thread %d read %ld wrote %ld\n", i + 1,
		    workers[i].nread, workers[i].nwritten);
	printf("total %ld distinct %ld duplicates %ld write errors %ld\n",
	    total, distinct, dups, werrs);
	close(fd);
	return (!(distinct == count && total == count && werrs == 0));
}
