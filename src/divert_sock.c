/*
 * divert_sock.c: the client side.  The only code that speaks the client
 * protocol (divert_wire.h), in four files that divert_sock.h maps: this
 * one, client.c (the clients and their messages), held.c (the held
 * packets) and ring.c (the shared-memory rings).
 *
 * This file owns the listening socket and who may connect, the
 * divert_sock_*() API divertd.c and control.c call (divertd.h), and the
 * path of packets from the kernel to the clients; and the configuration,
 * the counters and the rate limit of what clients make us log, which it
 * hands to the other three when it opens them.
 *
 * Each client is a SOCK_SEQPACKET connection on our UNIX socket; the shim
 * hands it to the application as its divert socket.  Only root and the
 * configured group get one, each named by a random id that only that
 * connection is told (listener_event()).  A client is bound to at most one
 * divert port (client_by_port()).  What flows through here:
 *
 *  kernel -> client   divert_sock_packet() gets each NFQUEUE packet from
 *      nfq_bridge.c.  No client on the port: a divert drops it (counted as
 *      "no socket", div_noport on FreeBSD), a tee lets it go on.  Otherwise
 *      the packet goes to the client with its FreeBSD address, and a
 *      divert's packet is HELD (held.c): the kernel keeps it, and we
 *      remember its NFQUEUE id.  A client with a shared-memory ring (the
 *      shim asks for one) gets it copied there, and one wakeup per batch
 *      if the ring was empty (ring.c); for any other, sends are collected
 *      during a netlink batch and go out with one sendmmsg() per client
 *      run (divert_sock_flush()).  What does not fit in the client's
 *      buffer is dropped ("full"), and until it has room its port's queue
 *      is paused (client_full()).
 *
 *  client -> kernel   a written packet that answers a held one becomes
 *      that packet's verdict; any other is a new packet (client.c, ring.c,
 *      inject.c).
 *
 *  held packets are consumed as on FreeBSD, where the program owns what it
 *  read: a packet never written back is dropped when its client closes,
 *  when the client holds too many, or after the hold time (held.c).
 *
 * Nothing on the per-packet path allocates: held packets come from a pool
 * made at start, buffers are static.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <linux/netfilter.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "divert_sock.h"

#define PENDING_MAX	256		/* sends collected in one batch */

struct pending {
	struct client *c;
	struct held *h;			/* NULL for a tee copy */
	uint32_t id;			/* h's packet, to tell if h moved on */
	struct divert_wire_hdr hdr;
	struct iovec iov[2];
};

static const struct divert_config *cfg;
static struct pollable listener = { .fd = -1 };
static int reserve_fd = -1;		/* given up when accept hits EMFILE */
static char listen_path[sizeof(((struct sockaddr_un *)0)->sun_path)];

static uint64_t batch_now;		/* now_ms() for this batch, or 0 */
static struct pending pending[PENDING_MAX];
static struct mmsghdr pending_msgs[PENDING_MAX];
static unsigned npending;

static struct divert_stats stats;
static struct log_ratelimit rl_client;

int divert_sock_timeout(void)
{
	int t = held_timeout(), look = ring_unread_held();

	if (look >= 0 && (t < 0 || t > look))
		t = look;
	return t;
}

void divert_sock_expire(void)
{
	held_expire();
}

void divert_sock_rules_changed(void)
{
	clients_rules_changed();
}

/* ---- who may connect ------------------------------------------------- */

/* May this peer divert?  Root, or a member of the configured group (its
 * primary group or one of its supplementary groups, SO_PEERGROUPS). */
static bool peer_allowed(int fd, const struct ucred *cred)
{
	gid_t groups[256];
	socklen_t len = sizeof(groups);

	if (cred->uid == 0)
		return true;
	if (cfg->group == (gid_t)-1)
		return false;
	if (cred->gid == cfg->group)
		return true;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
		return false;
	for (size_t i = 0; i < len / sizeof(groups[0]); i++)
		if (groups[i] == cfg->group)
			return true;
	return false;
}

/* Turn a connection away with the errno its socket() should fail with. */
static void refuse(int fd, int err)
{
	struct divert_wire_hdr no = {
		.type = DW_WELCOME, .version = DIVERT_WIRE_VERSION,
		.arg = (uint32_t)err,
	};

	send(fd, &no, sizeof(no), MSG_DONTWAIT | MSG_NOSIGNAL);
	close(fd);
}

/* A connection id no one can guess, and no client has. */
static uint64_t new_conn_id(void)
{
	uint64_t id;

	do {
		if (getrandom(&id, sizeof(id), 0) != sizeof(id))
			return 0;
	} while (id == 0 || client_by_id(id) != NULL);
	return id;
}

static void listener_event(struct pollable *p, uint32_t events)
{
	struct ucred cred;
	socklen_t credlen = sizeof(cred);
	struct client *c;
	int fd;

	(void)events;
	for (;;) {
		fd = accept4(p->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0 && (errno == EMFILE || errno == ENFILE) &&
		    reserve_fd >= 0) {
			/* out of descriptors: take the connection with the
			 * one we kept back and close it, so the listener
			 * does not stay readable and spin the loop */
			close(reserve_fd);
			fd = accept4(p->fd, NULL, NULL, SOCK_CLOEXEC);
			if (fd >= 0)
				close(fd);
			reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
			log_limited(&rl_client, 4, "refusing a client: out of "
				    "file descriptors");
			continue;
		}
		if (fd < 0)
			break;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &credlen) < 0 ||
		    !peer_allowed(fd, &cred)) {
			/* a divert socket takes privilege, as on FreeBSD */
			log_limited(&rl_client, 5, "refusing a client (uid %d, "
				    "pid %d): neither root nor in divertd's "
				    "group", (int)cred.uid, (int)cred.pid);
			refuse(fd, EPERM);
			continue;
		}
		if (client_count() >= cfg->max_clients) {
			log_limited(&rl_client, 4, "refusing a client (pid %d): "
				    "%u clients, the limit (-c)", (int)cred.pid,
				    client_count());
			refuse(fd, ENOBUFS);
			continue;
		}
		if ((c = calloc(1, sizeof(*c))) == NULL ||
		    (c->id = new_conn_id()) == 0) {
			log_limited(&rl_client, 4, "refusing a client: %s",
				    strerror(errno));
			free(c);
			refuse(fd, ENOBUFS);
			continue;
		}
		if (client_start(c, fd, &cred) < 0) {
			close(fd);
			free(c);
		}
	}
}

/* ---- packets from the kernel ----------------------------------------- */

void divert_sock_packet(struct nfqb_packet *pkt, void *arg)
{
	uint16_t tag = mark_tag(cfg->ml, pkt->mark);
	const struct rule *r = rules_find_tee_rule(cfg->rs, tag, pkt->queue);
	bool tee = r != NULL;

	/* a tee's packets carry a value of their own; the program sees the
	 * tee's rule number, and the original resumes right after the tee */
	if (tee)
		tag = r->num;
	struct client *c = client_by_port(pkt->queue);
	const struct iface *in;
	struct pending *pd;
	struct held *h = NULL;

	(void)arg;
	if (tee)	/* the original goes on after the tee rule at once */
		nfqb_verdict(pkt->queue, pkt->id, NF_REPEAT, &pkt->mark, NULL, 0);
	if (c == NULL) {
		if (!tee) {
			nfqb_verdict(pkt->queue, pkt->id, NF_DROP, NULL, NULL, 0);
			stats.noport++;
		}
		return;
	}
	if (c->full) {
		/* its buffer is full, as FreeBSD's sbappendaddr() finds it:
		 * dropped, without checksum, hash or send first, so that an
		 * overloaded program costs the daemon as little as possible */
		if (!tee)
			nfqb_verdict(pkt->queue, pkt->id, NF_DROP, NULL, NULL, 0);
		stats.full++;
		return;
	}
	if (npending == PENDING_MAX)
		divert_sock_flush();
	if (pkt->csum_not_ready)
		cksum_complete_l4(pkt->data, pkt->len);
	in = iftable_by_index((int)pkt->indev);
	if (c->ring != NULL) {
		struct sockaddr_in addr;

		divert_wire_make_addr(&addr, tag,
				      pkt->hook == NF_INET_PRE_ROUTING,
				      in != NULL ? in->first_v4
						 : (struct in_addr){ 0 },
				      in != NULL ? in->name : NULL);
		if (!ring_post(c, &addr, pkt->data, pkt->len)) {
			if (!tee)
				nfqb_verdict(pkt->queue, pkt->id, NF_DROP,
					     NULL, NULL, 0);
			stats.full++;
			client_full(c);
			return;
		}
		if (tee) {
			stats.teed++;
			return;
		}
		stats.diverted++;
	}
	if (!tee) {
		if (batch_now == 0)
			batch_now = now_ms();	/* one clock read per batch */
		h = held_get(c, batch_now);
		h->queue = pkt->queue;
		h->id = pkt->id;
		h->mark = pkt->mark;
		h->dir = pkt->hook == NF_INET_PRE_ROUTING ? DIR_IN : DIR_OUT;
		h->key = divert_wire_packet_key(pkt->data, pkt->len);
		h->len = pkt->len;
		h->hash = packet_hash(pkt->data, pkt->len);
		held_index_add(h);
	}
	if (c->ring != NULL)
		return;
	pd = &pending[npending++];
	pd->c = c;
	pd->h = h;
	pd->id = pkt->id;
	memset(&pd->hdr, 0, sizeof(pd->hdr));
	pd->hdr.type = DW_PACKET;
	pd->hdr.version = DIVERT_WIRE_VERSION;
	divert_wire_make_addr(&pd->hdr.addr, tag,
			      pkt->hook == NF_INET_PRE_ROUTING,
			      in != NULL ? in->first_v4 : (struct in_addr){ 0 },
			      in != NULL ? in->name : NULL);
	pd->iov[0].iov_base = &pd->hdr;
	pd->iov[0].iov_len = sizeof(pd->hdr);
	pd->iov[1].iov_base = pkt->data;
	pd->iov[1].iov_len = pkt->len;
}

/* A send that failed: the client's buffer is full (FreeBSD drops the
 * packet when the socket buffer is), or the client is gone. */
static void pending_failed(struct pending *pd)
{
	if (pd->h != NULL && pd->h->c == pd->c && pd->h->id == pd->id)
		held_drop(pd->h);
	stats.full++;
}

/* c is closing: the sends collected for it in this batch go nowhere now. */
void divert_sock_forget(const struct client *c)
{
	for (unsigned i = 0; i < npending; i++)
		if (pending[i].c == c)
			pending[i].c = NULL;
}

/* Send what this batch collected: one sendmmsg per client, each client's
 * packets in the order they came. */
void divert_sock_flush(void)
{
	static struct pending *order[PENDING_MAX];

	for (unsigned first = 0; first < npending; first++) {
		struct client *c = pending[first].c;
		unsigned run = 0, sent = 0;

		if (c == NULL)		/* sent already, or client closed */
			continue;
		for (unsigned k = first; k < npending; k++) {
			if (pending[k].c != c)
				continue;
			order[run] = &pending[k];
			memset(&pending_msgs[run], 0, sizeof(pending_msgs[0]));
			pending_msgs[run].msg_hdr.msg_iov = pending[k].iov;
			pending_msgs[run].msg_hdr.msg_iovlen = 2;
			run++;
		}
		while (sent < run) {
			int n = sendmmsg(c->p.fd, &pending_msgs[sent], run - sent,
					 MSG_DONTWAIT | MSG_NOSIGNAL);
			if (n <= 0 && errno == EAGAIN)
				client_full(c);
			if (n <= 0) {
				/* the first unsent one failed: drop it, try
				 * the rest (a smaller one may still fit) */
				pending_failed(order[sent]);
				sent++;
				continue;
			}
			for (int k = 0; k < n; k++) {
				if (order[sent + (unsigned)k]->h != NULL)
					stats.diverted++;
				else
					stats.teed++;
			}
			sent += (unsigned)n;
		}
		for (unsigned k = 0; k < run; k++)
			order[k]->c = NULL;
	}
	npending = 0;
	batch_now = 0;
	ring_kick_flush();
}

/* The loop woke up: it will look at every tx ring before it sleeps again,
 * so a write-back needs no wakeup until then. */
void divert_sock_awake(void)
{
	for (unsigned i = 0; i < client_count(); i++) {
		struct client *c = client_nth(i);

		if (c->ring != NULL)
			atomic_store_explicit(&c->ring->tx.wake, 0,
					      memory_order_relaxed);
	}
}

/*
 * The loop is about to wait: what the ring clients wrote back is handled
 * now, and each is told that we sleep (tx.wake), so that its next write
 * wakes us.  The flag goes up before the ring is looked at: a write that
 * this look misses sees the flag.
 */
void divert_sock_idle(void)
{
	for (unsigned i = client_count(); i-- > 0;) {
		struct client *c = client_nth(i);

		if (c->ring == NULL)
			continue;
		int n;

		atomic_store(&c->ring->tx.wake, 1);
		if ((n = ring_drain(c)) < 0) {
			client_close(c);	/* moves the last one to i */
			continue;
		}
		/* a look that found nothing: the next one waits longer */
		c->look_ms = n > 0 ? RING_LOOK_MS : c->look_ms >= RING_LOOK_MAX_MS
			     ? RING_LOOK_MAX_MS : c->look_ms * 2;
		if (c->full)
			(void)ring_wait_room(c);
	}
	divert_sock_flush();
	clients_bury();
}

/* ---- the listening socket -------------------------------------------- */

/*
 * The socket's directory, made (0755) if it is missing.  divertd binds,
 * chowns and renames a file in it as root, so it must be a real directory
 * (not a symlink) that only root can write: one that a user can write
 * lets that user swap the new socket for a symlink and have root hand him
 * any file.  An O_PATH descriptor of it, with the socket's name in it in
 * *base, or -1 with the reason logged.
 */
static int socket_dir(const char *path, const char **base)
{
	char dir[sizeof(listen_path)];
	const char *slash = strrchr(path, '/');
	struct stat st;
	int dfd;

	if (slash == NULL) {
		snprintf(dir, sizeof(dir), ".");
		*base = path;
	} else {
		snprintf(dir, sizeof(dir), "%.*s", slash == path ? 1 :
			 (int)(slash - path), path);
		*base = slash + 1;
	}
	if (**base == '\0' || strcmp(*base, ".") == 0 ||
	    strcmp(*base, "..") == 0) {
		log_err("%s: not a socket file name", path);
		return -1;
	}
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		log_err("cannot create the directory %s: %s", dir, strerror(errno));
		return -1;
	}
	dfd = open(dir, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0) {
		log_err("the socket's directory %s: %s", dir, errno == ELOOP ||
			errno == ENOTDIR ? "a symlink or not a directory: "
			"refused" : strerror(errno));
		return -1;
	}
	if (fstat(dfd, &st) < 0 || st.st_uid != 0 ||
	    (st.st_mode & (S_IWGRP | S_IWOTH))) {
		log_err("the socket's directory %s is writable by others than "
			"root (owner %d, mode %04o): refused, since whoever can "
			"write it could make divertd change any file", dir,
			(int)st.st_uid, (unsigned)(st.st_mode & 07777));
		close(dfd);
		return -1;
	}
	if (fstatat(dfd, *base, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    !S_ISSOCK(st.st_mode)) {
		log_err("%s exists and is not a socket: refused", path);
		close(dfd);
		return -1;
	}
	return dfd;
}

int divert_sock_open(const struct divert_config *c)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	char tmp[sizeof(sun.sun_path)];
	const char *base, *tbase;
	mode_t mask;
	int fd, dfd, r;

	cfg = c;
	if (strlen(c->socket_path) >= sizeof(sun.sun_path) - 16) {
		log_err("socket path too long: %s", c->socket_path);
		return -1;
	}
	if (held_open(c, &stats) < 0 || clients_open(c, &stats, &rl_client) < 0 ||
	    rings_open(c->max_clients, &stats, &rl_client) < 0)
		return -1;

	reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if ((dfd = socket_dir(c->socket_path, &base)) < 0)
		return -1;
	/* bind a temporary name and rename it into place: the socket file
	 * appears only when it already accepts connections.  Its mode comes
	 * from the umask at bind (0660), its group by descriptor-relative
	 * calls that follow no symlink. */
	snprintf(tmp, sizeof(tmp), "%s.%d", c->socket_path, (int)getpid());
	tbase = tmp + (base - c->socket_path);
	(void)unlinkat(dfd, tbase, 0);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", tmp);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	mask = umask(0117);
	r = fd < 0 ? -1 : bind(fd, (struct sockaddr *)&sun, sizeof(sun));
	umask(mask);
	if (r < 0 ||
	    fchownat(dfd, tbase, 0, c->group == (gid_t)-1 ? 0 : c->group,
		     AT_SYMLINK_NOFOLLOW) < 0 ||
	    listen(fd, SOMAXCONN) < 0 ||
	    renameat(dfd, tbase, dfd, base) < 0) {
		log_err("cannot listen on %s: %s", c->socket_path, strerror(errno));
		(void)unlinkat(dfd, tbase, 0);
		if (fd >= 0)
			close(fd);
		close(dfd);
		return -1;
	}
	close(dfd);
	snprintf(listen_path, sizeof(listen_path), "%s", c->socket_path);
	listener.fd = fd;
	listener.handle = listener_event;
	return loop_add(&listener, EPOLLIN);
}

void divert_sock_close(void)
{
	clients_close();
	held_close();
	rings_close();
	if (listener.fd >= 0) {
		close(listener.fd);
		unlink(listen_path);
	}
	listener.fd = -1;
	if (reserve_fd >= 0)
		close(reserve_fd);
	reserve_fd = -1;
}

const struct divert_stats *divert_sock_stats(void)
{
	return &stats;
}

size_t divert_sock_ports(struct divert_sock_info *out, size_t max)
{
	size_t n = 0;

	for (unsigned p = 0; p < 65536 && n < max; p++) {
		const struct client *c = client_by_port((uint16_t)p);

		if (c == NULL)
			continue;
		out[n].port = (uint16_t)p;
		out[n].pid = c->pid;
		out[n].held = c->nheld;
		n++;
	}
	return n;
}

unsigned divert_sock_clients(void)
{
	return client_count();
}

unsigned divert_sock_held(void)
{
	unsigned n = 0;

	for (unsigned i = 0; i < client_count(); i++)
		n += client_nth(i)->nheld;
	return n;
}
