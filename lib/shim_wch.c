/*
 * shim_wch.c: the write channel: one connection per process, kept open, on
 * which new packets are written and answered one at a time, so that
 * sendto() returns what the daemon's injection met (EADDRNOTAVAIL,
 * ENETUNREACH, EMSGSIZE, ...).  A child after fork opens its own.  Its
 * descriptor belongs to us: before each use we make sure it is still the
 * socket we opened (a program that closes every descriptor, as daemons do,
 * may have closed it and reused the number).
 *
 * In: a DW_WRITE message, built by div_sendmsg() (shim_packet.c), and the
 * daemon's path.  Out: 0 or the errno for sendto(): the daemon's answer,
 * ENOBUFS when divertd is gone or cannot be reached (restarting: it
 * cannot send now), ETIMEDOUT when it does not answer.
 */
#include "shim.h"	/* first: it turns _FORTIFY_SOURCE off */

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>

static pthread_mutex_t wch_lock = PTHREAD_MUTEX_INITIALIZER;
static int wch_fd = -1;
static pid_t wch_pid;
static dev_t wch_dev;
static ino_t wch_ino;
static uint32_t wch_seq;

static bool wch_alive(void)
{
	struct stat st;

	return wch_fd >= 0 && wch_pid == getpid() &&
	       fstat(wch_fd, &st) == 0 && S_ISSOCK(st.st_mode) &&
	       st.st_dev == wch_dev && st.st_ino == wch_ino;
}

/* fork: the child must not inherit a held lock or the parent's channel */
void wch_atfork_prepare(void)
{
	pthread_mutex_lock(&wch_lock);
}

void wch_atfork_parent(void)
{
	pthread_mutex_unlock(&wch_lock);
}

void wch_atfork_child(void)
{
	struct stat st;

	/* the parent's channel, if the number still holds it, is ours to
	 * close; the child opens its own when it needs one */
	if (wch_fd >= 0 && fstat(wch_fd, &st) == 0 &&
	    st.st_dev == wch_dev && st.st_ino == wch_ino)
		REAL(close)(wch_fd);
	wch_fd = -1;
	pthread_mutex_unlock(&wch_lock);
}

/* Open the channel to the daemon that owns ds's socket. */
static int wch_open(const struct sockaddr_un *sun, socklen_t len)
{
	struct timeval tv = { SHIM_TIMEOUT_MS / 1000, 0 };
	struct divert_wire_hdr hello;
	struct stat st;
	int fd;

	if (wch_alive())
		REAL(close)(wch_fd);	/* ours, but broken */
	wch_fd = -1;
	fd = daemon_connect(sun, len, SOCK_CLOEXEC);
	if (fd < 0)
		return ENOBUFS;		/* divertd restarting: cannot send now */
	/* a daemon that stops reading cannot hold a write forever */
	(void)REAL(setsockopt)(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (daemon_read(fd, DW_WELCOME, &hello) < 0 || fstat(fd, &st) < 0) {
		REAL(close)(fd);
		return ENOBUFS;
	}
	wch_fd = fd;
	wch_pid = getpid();
	wch_dev = st.st_dev;
	wch_ino = st.st_ino;
	return 0;
}

/* Send m (a DW_WRITE for the socket fd) and wait for its answer; 0 or the
 * errno.  Cancellation is off while the channel's lock is held. */
int write_channel(const struct sockaddr_un *sun, socklen_t sunlen,
		  struct msghdr *m)
{
	struct divert_wire_hdr *hdr = m->msg_iov[0].iov_base, reply;
	int err = 0, cancel;

	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
	pthread_mutex_lock(&wch_lock);
	for (int attempt = 0; attempt < 2; attempt++) {
		if (!wch_alive() && (err = wch_open(sun, sunlen)) != 0)
			break;
		hdr->val = ++wch_seq;
		if (REAL(sendmsg)(wch_fd, m, MSG_NOSIGNAL) < 0) {
			err = errno == EAGAIN ? ETIMEDOUT : errno;
			REAL(close)(wch_fd);
			wch_fd = -1;
			continue;	/* the daemon restarted? once more */
		}
		do {
			err = daemon_read(wch_fd, DW_REPLY, &reply);
		} while (err == 0 && reply.val != hdr->val);
		/* gone before it answered: restarting, cannot send now */
		err = err < 0 ? (err == -ETIMEDOUT ? ETIMEDOUT : ENOBUFS)
			      : (int)reply.arg;
		break;
	}
	pthread_mutex_unlock(&wch_lock);
	pthread_setcancelstate(cancel, NULL);
	return err;
}
