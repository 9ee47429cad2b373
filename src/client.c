/*
 * client.c: the clients.  Each client is a SOCK_SEQPACKET connection on our
 * UNIX socket, let in by the listener (divert_sock.c); the shim hands it to
 * the application as its divert socket, or attaches a data socket of its
 * own and leaves the connection to tell us when the client is gone
 * (DW_ATTACH).  A client is bound to at most one divert port (port_owner[]
 * maps ports to clients, as FreeBSD's divert pcb lookup does).
 *
 * Owns the registry of clients (each named by a secret id), the port map,
 * each client's state (bound, full, paused, its buffer, its end) and the
 * buffers its messages are read into.  What flows through here:
 *
 *  client -> kernel   a written packet (from the client's tx ring, once
 *      per loop round (ring.c), or from its socket) that answers a held one
 *      (same client, same direction, same identity: IPv4 id and protocol,
 *      or IPv6 next header and length; oldest first) becomes that packet's
 *      verdict (held.c): NF_REPEAT, with the tag in our mark bits, so the
 *      hook's base chain runs again and its dispatch resumes after the
 *      tag.  Unchanged bytes (compared by hash) leave the kernel's packet
 *      as it is; changed bytes go with the verdict.  A write that answers
 *      nothing is a new packet (inject.c).
 *
 *  client -> daemon   DW_BIND, DW_SETOPT, DW_RING (ring.c makes the ring),
 *      DW_ATTACH and DW_CTL (control.c runs the command), each answered on
 *      the connection it came on.
 *
 *  kernel -> client   divert_sock.c finds the client of a port
 *      (client_by_port()); a client whose buffer is full (client_full())
 *      has its port's queue paused until it has room (client_room()).
 *
 *  the direct path (docs/DIRECT.md)   a root client whose DW_BIND asks
 *      for DW_BIND_DIRECT is lent its port's queue socket (nfqb_lend())
 *      with the view of the rules (rules_view()), and sent a new view
 *      (DW_VIEW) after each rule change; when it unbinds or is gone the
 *      queue is taken back (nfqb_take_back(): what it held is dropped).
 *
 * A client that closes has its held packets dropped (held.c), and is freed
 * after the loop's round (clients_bury()).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "divert_sock.h"
#include "divert.h"

#define CLIENT_WAIT_MAX	(1024 * 1024)	/* bytes of kernel storage that
					 * may wait for one client */
#define WRITE_BATCH	16		/* client messages per recvmmsg */
#define WRITE_SLOT	(sizeof(struct divert_wire_hdr) + DIVERT_WIRE_MAXPKT + 1)

static const struct divert_config *client_cfg;	/* divert_sock.c's */
static struct divert_stats *client_stats;	/* divert_sock.c's */
static struct log_ratelimit *client_rl;		/* divert_sock.c's rl_client */
static struct client *port_owner[65536];
static struct client **clients;		/* cfg->max_clients of them */
static unsigned nclients;
static struct client *dead_clients;	/* closed this round, to free */

static uint8_t *wbuf;			/* WRITE_BATCH * WRITE_SLOT */
static struct mmsghdr wmsgs[WRITE_BATCH];
static struct iovec wiov[WRITE_BATCH];
static union {				/* DW_ATTACH's descriptors */
	struct cmsghdr align;
	char buf[CMSG_SPACE(DW_ATTACH_MAXFDS * sizeof(int))];
} wctl[WRITE_BATCH];

static struct log_ratelimit rl_inject;

/* A client whose buffer filled up: until it has room again (EPOLLOUT),
 * what is diverted to it is dropped at once, as FreeBSD drops what does
 * not fit in a socket buffer, and the cheapest way: its port's queue is
 * not read and may hold no more than the packets the program holds, so
 * the kernel drops the rest on arrival (counted as kernel_drops) instead
 * of the daemon reading each one only to drop it.  Not for a port a tee
 * rule sends to: the originals of the tee pass through that queue, and
 * they must go on at once. */
static bool tee_port(uint16_t port)
{
	for (size_t i = 0; i < client_cfg->rs->n; i++)
		if (client_cfg->rs->rules[i].action == ACT_TEE &&
		    client_cfg->rs->rules[i].arg == port)
			return true;
	return false;
}

void client_full(struct client *c)
{
	if (c->full)
		return;
	if (c->ring == NULL && loop_mod(&c->p, EPOLLIN | EPOLLOUT) < 0)
		return;
	c->full = true;
	if (c->ring != NULL && ring_wait_room(c))
		return;
	if (!c->bound || port_owner[c->port] != c || tee_port(c->port))
		return;
	nfqb_pause(c->port, true, c->nheld);
	c->paused = true;
}

static void client_send_view(struct client *c);

void clients_rules_changed(void)
{
	for (unsigned i = 0; i < nclients; i++)
		if (clients[i]->direct)
			client_send_view(clients[i]);
	/* a paused queue that a tee rule now uses carries originals */
	for (unsigned i = 0; i < nclients; i++)
		if (clients[i]->paused && tee_port(clients[i]->port)) {
			nfqb_pause(clients[i]->port, false, 0);
			clients[i]->paused = false;
		}
}

void client_room(struct client *c)
{
	if (!c->full)
		return;
	if (c->ring != NULL)
		atomic_store(&c->ring->rx.wake, 0);
	else if (loop_mod(&c->p, EPOLLIN) < 0)
		return;
	c->full = false;
	if (c->paused)
		nfqb_pause(c->port, false, 0);
	c->paused = false;
}

static void client_unbind(struct client *c)
{
	if (c->paused)
		nfqb_pause(c->port, false, 0);	/* someone else's now */
	c->paused = false;
	if (c->bound && port_owner[c->port] == c)
		port_owner[c->port] = NULL;
	if (c->direct)		/* what it held is dropped; we read again */
		nfqb_take_back(c->port);
	c->direct = false;
	c->bound = false;
}

/* The view of the rules a client reading its own queue needs (every rule
 * number and this port's tees: at most 6 bytes a rule), in view_buf;
 * its length, 0 if it does not fit. */
static uint64_t view_buf[(sizeof(struct dw_view) + 65536 * 6) / 8 + 1];

static size_t client_view(const struct client *c)
{
	size_t len = rules_view(client_cfg->rs, client_cfg->ml, c->port,
				client_cfg->hold_ms, view_buf, sizeof(view_buf));

	return len <= sizeof(view_buf) ? len : 0;
}

/* The socket a message to c that is no data goes on: the connection it
 * came on once attached, else its one connection. */
static int client_ctl_fd(const struct client *c)
{
	return c->ctl.fd >= 0 ? c->ctl.fd : c->p.fd;
}

/* Tell a client reading its own queue the rules' new view. */
static void client_send_view(struct client *c)
{
	struct divert_wire_hdr hdr = {
		.type = DW_VIEW, .version = DIVERT_WIRE_VERSION,
	};
	struct iovec iov[2] = { { &hdr, sizeof(hdr) }, { view_buf, 0 } };
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 2 };

	iov[1].iov_len = client_view(c);
	if (iov[1].iov_len == 0 ||
	    sendmsg(client_ctl_fd(c), &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		log_limited(client_rl, 4, "cannot tell client %d the new "
			    "rules: %s", (int)c->pid, strerror(errno));
}

/*
 * The direct path (docs/DIRECT.md): c, root, bound to its port, asked to
 * read the queue itself.  Lend it the queue's socket and reply with it
 * and the view of the rules; true when that went out (else the queue is
 * ours again and the reply is still to be made).
 */
static bool client_lend(struct client *ctl, struct client *c)
{
	struct divert_wire_hdr hdr = {
		.type = DW_REPLY, .version = DIVERT_WIRE_VERSION,
		.val = DW_BIND_DIRECT,
	};
	struct iovec iov[2] = { { &hdr, sizeof(hdr) }, { view_buf, 0 } };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = {
		.msg_iov = iov, .msg_iovlen = 2,
		.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
	};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	int fd;

	iov[1].iov_len = client_view(c);
	if (iov[1].iov_len == 0 || (fd = nfqb_lend(c->port)) < 0)
		return false;
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	if (sendmsg(ctl->p.fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
		log_limited(client_rl, 4, "cannot give client %d its queue: %s",
			    (int)c->pid, strerror(errno));
		nfqb_take_back(c->port);
		return false;
	}
	c->direct = true;
	log_debug("client %d reads queue %u itself", (int)c->pid, c->port);
	return true;
}

void client_close(struct client *c)
{
	divert_sock_forget(c);
	while (c->head != NULL) {
		held_drop(c->head);
		client_stats->evicted++;
	}
	client_unbind(c);
	ring_close(c);
	close(c->p.fd);		/* also leaves the epoll set */
	if (c->ctl.fd >= 0)
		close(c->ctl.fd);
	for (unsigned i = 0; i < nclients; i++)
		if (clients[i] == c) {
			clients[i] = clients[--nclients];
			break;
		}
	c->dead = true;
	c->next_dead = dead_clients;
	dead_clients = c;
}

/* Free the clients closed in this round of the loop. */
void clients_bury(void)
{
	while (dead_clients != NULL) {
		struct client *c = dead_clients;

		dead_clients = c->next_dead;
		free(c);
	}
}

/* close() frees the port at once on FreeBSD.  Here the holder's hangup
 * may wait in the same epoll round as the new bind: a holder that has
 * hung up gives its port away now (its last writes are still read and
 * handled when its own event comes). */
static bool client_hung_up(struct client *c)
{
	struct pollfd pfd[2] = {
		{ .fd = c->p.fd, .events = POLLRDHUP },
		{ .fd = c->ctl.fd, .events = POLLRDHUP },	/* -1: none */
	};

	if (poll(pfd, 2, 0) >= 1 &&
	    ((pfd[0].revents | pfd[1].revents) & (POLLHUP | POLLRDHUP))) {
		client_unbind(c);
		return true;
	}
	return false;
}

struct client *client_by_id(uint64_t id)
{
	for (unsigned i = 0; i < nclients; i++)
		if (clients[i]->id == id)
			return clients[i];
	return NULL;
}

static void client_reply_seq(struct client *c, int err, uint32_t seq)
{
	struct divert_wire_hdr hdr = {
		.type = DW_REPLY, .version = DIVERT_WIRE_VERSION,
		.arg = (uint32_t)err, .val = seq,
	};

	if (send(c->p.fd, &hdr, sizeof(hdr), MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		log_limited(client_rl, 4, "cannot answer client %d: %s",
			    (int)c->pid, strerror(errno));
}

static void client_reply(struct client *c, int err)
{
	client_reply_seq(c, err, 0);
}

static void client_bind(struct client *ctl, const struct divert_wire_hdr *m)
{
	struct client *c = client_by_id(m->conn);
	uint16_t port = (uint16_t)m->val;

	if (c == NULL || m->val > 65535) {
		client_reply(ctl, EINVAL);
		return;
	}
	if (port_owner[port] != NULL && port_owner[port] != c &&
	    !client_hung_up(port_owner[port])) {
		client_reply(ctl, EADDRINUSE);
		return;
	}
	client_unbind(c);	/* a second bind moves the socket */
	port_owner[port] = c;
	c->bound = true;
	c->port = port;
	log_debug("client %d bound to divert port %u", (int)c->pid, port);
	if ((m->arg & DW_BIND_DIRECT) && c->root && client_lend(ctl, c))
		return;
	client_reply(ctl, 0);
}

/*
 * What a client without a ring has not read yet waits in our end's send
 * buffer (a ring is counted exactly as FreeBSD counts: ring_post()).  FreeBSD
 * limits a socket buffer twice: rcvbuf bytes of data (sb_hiwat) and eight
 * times that of mbuf storage (sb_mbmax, sb_efficiency); Linux counts each
 * message's whole allocation (truesize) against one limit, which is far
 * more than the data for small packets.  So the limit is the storage one:
 * 8 x rcvbuf of truesize (the kernel doubles what SO_SNDBUF asks for),
 * about as many small packets as FreeBSD's buffer holds (over 700 of 64
 * bytes, where 2 x rcvbuf held 180), and a few GSO packets of 64 KiB.
 * At most CLIENT_WAIT_MAX, though: every packet waiting there is held,
 * and the smallest message costs over 600 bytes, so no more than 1,700
 * can wait, well under the CLIENT_HELD_MAX a client may hold (past which
 * the oldest held packet is dropped: it must never be one still waiting
 * to be read).  FORCE: not capped at net.core.wmem_max, as FreeBSD's is
 * not below kern.ipc.maxsockbuf.
 */
static void client_set_rcvbuf(struct client *c, uint32_t rcvbuf)
{
	int v = (int)(rcvbuf * 8 > CLIENT_WAIT_MAX ? CLIENT_WAIT_MAX
						   : rcvbuf * 8) / 2;

	c->rcvbuf = rcvbuf;
	setsockopt(c->p.fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof(v));
}

static void client_setopt(struct client *c, const struct divert_wire_hdr *m)
{
	int v = (int)m->val;

	if (m->arg != SO_RCVBUF && m->arg != SO_SNDBUF)
		client_stats->bad_writes++;
	if (m->arg != SO_RCVBUF)
		return;
	if (v <= 0 || m->val > DIVERT_WIRE_SOCKBUF_MAX) {
		/* the shim refuses these (ENOBUFS); a client that sends one
		 * anyway gets nothing: the buffer is what the daemon pays */
		client_stats->bad_writes++;
		return;
	}
	client_set_rcvbuf(c, m->val);
}

/* DW_RING: make the ring and send it, or the errno. */
static void client_ring(struct client *c)
{
	struct divert_wire_hdr hdr = {
		.type = DW_RING, .version = DIVERT_WIRE_VERSION,
	};
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl;
	struct iovec iov = { .iov_base = &hdr, .iov_len = sizeof(hdr) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *cm;
	int fd = ring_open(c);

	if (fd < 0) {
		hdr.arg = (uint32_t)-fd;
	} else {
		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = sizeof(ctl.buf);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	}
	if (sendmsg(c->p.fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 && fd >= 0) {
		/* it will never read from the ring: the socket it is */
		munmap(c->ring, DW_RING_LEN);
		c->ring = NULL;
	}
	if (fd >= 0)
		close(fd);
}

/* The interface an incoming write arrives on (FreeBSD div_output_inbound):
 * the name in sin_zero when it is NUL-terminated there and names one, else
 * the interface owning sin_addr. */
static const struct iface *incoming_iface(const struct sockaddr_in *sin)
{
	const char *zero = (const char *)sin->sin_zero;
	const struct iface *ifc = NULL;

	if (memchr(zero, '\0', sizeof(sin->sin_zero)) != NULL && zero[0] != '\0')
		ifc = iftable_by_name(zero);
	if (ifc == NULL)
		ifc = iftable_by_v4(sin->sin_addr);
	return ifc;
}

/* True when a rule of the running list names the interface. */
static bool rules_name(const char *ifname)
{
	for (size_t i = 0; i < client_cfg->rs->n; i++)
		for (int k = 0; k < client_cfg->rs->rules[i].nifaces; k++)
			if (strcmp(client_cfg->rs->rules[i].ifaces[k].name,
				   ifname) == 0)
				return true;
	return false;
}

/*
 * What a member of divertd's group (-g), not root, may not do with a new
 * packet: inject from a socket bound to no port, or make one arrive on an
 * interface that is down, or on loopback unless a rule names it (where it
 * would pass for the host's own traffic).  0 or the errno.  Root may do
 * all of it, as on FreeBSD.
 */
static int member_limits(const struct client *c, const struct iface *in)
{
	if (c->root)
		return 0;
	if (!c->bound)
		return EPERM;
	if (in != NULL && (!in->up || (in->loopback && !rules_name(in->name))))
		return EADDRNOTAVAIL;
	return 0;
}

/* A written packet: the verdict of the held packet it answers, or new.
 * Returns 0 or the errno FreeBSD's sendto() would give (the address names
 * no interface, the route fails, ...). */
int client_write(struct client *c, const struct divert_wire_hdr *m,
		 uint8_t *pkt, size_t len)
{
	const struct sockaddr_in *sin = m->arg ? &m->addr : NULL;
	bool out = divert_wire_is_outgoing(sin);
	uint16_t tag = sin != NULL ? sin->sin_port : 0;
	uint16_t resume = rules_resume_tag(client_cfg->rs, tag);
	bool v4;
	struct held *h;
	uint64_t hash;
	uint32_t mark;
	int err;

	err = divert_wire_check_write(pkt, len, (const struct sockaddr *)sin,
				      sizeof(*sin), DIVERT_WIRE_MAXPKT);
	if (err != 0) {
		client_stats->bad_writes++;
		return err;
	}
	v4 = (pkt[0] >> 4) == 4;	/* len >= 20 now */
	hash = packet_hash(pkt, len);
	h = held_find(c, out ? DIR_OUT : DIR_IN, divert_wire_packet_key(pkt, len), hash,
		      (uint32_t)len);
	if (h != NULL && !(h->len == len && h->hash == hash) &&
	    (len > NFQB_MAX_VERDICT_PAYLOAD ||
	     (out && v4 && memcmp(pkt + 12, "\0\0\0\0", 4) == 0))) {
		/* a verdict cannot carry this much, or the program left the
		 * source address for the stack to fill in (FreeBSD does, for
		 * outgoing writes; a verdict would not): the program's bytes
		 * go out as a new packet, the kernel's copy is consumed */
		held_drop(h);
		h = NULL;
	}
	if (h != NULL) {
		bool same = h->len == len && h->hash == hash;

		if (!same && v4) {
			if (out) {
				cksum_set_ipv4_header(pkt, len);
			} else if (!cksum_ipv4_header_ok(pkt, len)) {
				/* silently, as FreeBSD */
				client_stats->bad_cksum_in++;
				held_drop(h);
				return 0;
			}
		}
		held_reinject(h, out, tag, same ? NULL : pkt, (uint32_t)len);
		return 0;
	}
	/* A new packet enters the stack at once, a verdict when its batch is
	 * sent: the verdicts given before this write go first, so that it
	 * overtakes neither what the program wrote before it nor a tee's
	 * original (a copy that met its original's unconfirmed conntrack
	 * entry would cost one of them: the clash drops the later). */
	nfqb_flush();
	mark = mark_with_tag(client_cfg->ml, 0, resume);
	if ((err = member_limits(c, out ? NULL : incoming_iface(sin))) != 0) {
		client_stats->bad_writes++;
		return err;
	}
	if (out) {
		err = inject_out(pkt, len, mark);
		if (err == 0)
			client_stats->injected_out++;
	} else {
		const struct iface *ifc = incoming_iface(sin);

		if (ifc == NULL) {
			client_stats->no_iface++;
			return EADDRNOTAVAIL;
		}
		if (v4 && !cksum_ipv4_header_ok(pkt, len)) {
			client_stats->bad_cksum_in++;
			return 0;
		}
		err = inject_in(pkt, len, mark, ifc);
		if (err == 0)
			client_stats->injected_in++;
	}
	if (err < 0) {
		client_stats->inject_errors++;
		log_limited(&rl_inject, 7, "cannot inject a packet %s: %s",
			    out ? "outgoing" : "incoming", strerror(-err));
		return -err;
	}
	return 0;
}

/* ---- attaching: a data socket of the client's own ---------------------
 *
 * The shim makes the program's divert fd one end of a socketpair and
 * hands us the other end (DW_ATTACH, SCM_RIGHTS) on the connection it
 * made; packets and write-backs flow on that pair from then on, and the
 * connection only tells us when the client is gone.  The point: when
 * divertd goes away, the program's fd does not end (the shim holds the
 * pair's other end too), it only goes quiet, and the shim attaches the
 * same pair, and its ring, to the next divertd (docs/SHIM.md).
 */

static void client_ctl_event(struct pollable *p, uint32_t events)
{
	struct client *c = (struct client *)(void *)((char *)p -
					offsetof(struct client, ctl));
	struct divert_wire_hdr m;
	ssize_t n;

	if (c->dead)
		return;
	/* nothing is said on it once attached: read (descriptors sent
	 * along are closed by the kernel, no control buffer) and count */
	for (int i = 0; i < WRITE_BATCH; i++) {
		n = recv(p->fd, &m, sizeof(m), MSG_DONTWAIT | MSG_TRUNC);
		if (n > 0) {
			client_stats->bad_writes++;
			continue;
		}
		if (n == 0 || (errno != EAGAIN && errno != EINTR))
			goto gone;
		break;
	}
	if (!(events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)))
		return;
gone:
	log_debug("client %d closed its connection", (int)c->pid);
	if (c->ring != NULL)
		(void)ring_drain(c);
	client_close(c);
}

/* True when sock is a SOCK_SEQPACKET UNIX socket. */
static bool seqpacket_unix(int sock)
{
	int dom = 0, type = 0;
	socklen_t l1 = sizeof(dom), l2 = sizeof(type);

	return getsockopt(sock, SOL_SOCKET, SO_DOMAIN, &dom, &l1) == 0 &&
	       getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &l2) == 0 &&
	       dom == AF_UNIX && type == SOCK_SEQPACKET;
}

/* DW_ATTACH with its descriptors (all consumed); the reply goes on the
 * connection it came on, then the data socket takes its place. */
static void client_attach(struct client *c, const struct divert_wire_hdr *m,
			  int *fds, int nfds)
{
	bool ring = m->arg & DW_ATTACH_RING;
	int err = 0, fl, data = nfds > 0 ? fds[0] : -1;

	if (c->ctl.fd >= 0) {		/* a reply would go to its program */
		client_stats->bad_writes++;
		while (nfds > 0)
			close(fds[--nfds]);
		return;
	}
	if (nfds != 1 + ring ||
	    (m->arg & ~(DW_ATTACH_RING | DW_ATTACH_AGAIN)))
		err = EINVAL;
	else if (!seqpacket_unix(data))
		err = ENOTSOCK;
	else if ((fl = fcntl(data, F_GETFL)) < 0 ||
		 fcntl(data, F_SETFL, fl | O_NONBLOCK) < 0)
		err = errno;
	else if (ring)
		err = -ring_adopt(c, fds[1]);
	for (int i = 1; i < nfds; i++)
		close(fds[i]);		/* the ring stays mapped */
	client_reply(c, err);
	if (err != 0) {
		client_stats->bad_writes++;
		if (data >= 0)
			close(data);
		return;
	}
	loop_del(&c->p);
	c->ctl.fd = c->p.fd;
	c->ctl.handle = client_ctl_event;
	c->p.fd = data;
	if (loop_add(&c->p, EPOLLIN) < 0 ||
	    loop_add(&c->ctl, EPOLLIN | EPOLLRDHUP) < 0) {
		/* as before: the connection carries it all (the fd it sees
		 * is never read: its program waits, as on a full daemon) */
		loop_del(&c->p);
		close(data);
		c->p.fd = c->ctl.fd;
		c->ctl.fd = -1;
		(void)loop_add(&c->p, EPOLLIN);
		log_limited(client_rl, 4, "client %d: cannot watch its data "
			    "socket: %s", (int)c->pid, strerror(errno));
		return;
	}
	client_set_rcvbuf(c, c->rcvbuf);
	if (m->arg & DW_ATTACH_AGAIN)
		client_stats->reattached++;
	client_stats->away_refused += m->val;
	log_debug("client %d attached its data socket%s", (int)c->pid,
		  m->arg & DW_ATTACH_AGAIN ? " again (divertd restarted)" : "");
}

/* The descriptors an SCM_RIGHTS message brought (at most max; any
 * beyond are closed), and msg made ready for the next receive. */
static int msg_fds(struct msghdr *msg, int *fds, int max)
{
	struct cmsghdr *cm;
	int n = 0;

	for (cm = CMSG_FIRSTHDR(msg); cm != NULL; cm = CMSG_NXTHDR(msg, cm)) {
		size_t k;

		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(fd));
			if (n < max)
				fds[n++] = fd;
			else
				close(fd);
		}
	}
	msg->msg_controllen = sizeof(wctl[0].buf);
	msg->msg_flags = 0;
	return n;
}

/* ---- divertctl -------------------------------------------------------- */

#define CTL_MAXARGS 256

/* DW_CTL: the command's argv after the header; control.c runs it, the
 * output goes back in DW_CTLREPLY messages.  The connection's send buffer
 * is made big enough for the whole reply first, so nothing here waits for
 * divertctl to read. */
static void client_control(struct client *c, const struct divert_wire_hdr *m,
			   char *args, size_t len)
{
	static char nomem[] = "divertd: out of memory\n";
	char *argv[CTL_MAXARGS + 1];
	struct divert_wire_hdr hdr = {
		.type = DW_CTLREPLY, .version = DIVERT_WIRE_VERSION,
	};
	char *text;
	char *out = NULL;
	size_t tlen, off = 0;
	int argc = 0, status, buf;

	/* the strings: NUL-terminated, the last one too */
	if (len > 0 && args[len - 1] != '\0') {
		client_stats->bad_writes++;
		return;
	}
	for (size_t i = 0; i < len && argc < CTL_MAXARGS; i += strlen(args + i) + 1)
		argv[argc++] = args + i;
	argv[argc] = NULL;
	status = control_run(argc, argv, (m->arg & DW_CTL_JSON) |
			     (c->root ? CTL_ROOT : 0), &out);
	text = out != NULL ? out : nomem;
	tlen = strlen(text);
	hdr.arg = out != NULL ? (uint32_t)status : 1;
	buf = (int)(tlen + tlen / 4 +
		    (tlen / DW_CTL_MAXREPLY + 1) * (sizeof(hdr) + 1024) + 65536);
	if (tlen < 64u << 20)
		setsockopt(c->p.fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof(buf));
	do {
		size_t part = tlen - off > DW_CTL_MAXREPLY ? DW_CTL_MAXREPLY
							   : tlen - off;
		struct iovec iov[2] = {
			{ .iov_base = &hdr, .iov_len = sizeof(hdr) },
			{ .iov_base = text + off, .iov_len = part },
		};
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };

		hdr.val = off + part < tlen;
		if (sendmsg(c->p.fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
			log_limited(client_rl, 4, "cannot answer divertctl "
				    "(pid %d): %s", (int)c->pid, strerror(errno));
			break;
		}
		off += part;
	} while (off < tlen);
	free(out);
}

static void client_message(struct client *c, uint8_t *buf, size_t n)
{
	struct divert_wire_hdr m;

	if (n < sizeof(m)) {
		client_stats->bad_writes++;
		return;
	}
	memcpy(&m, buf, sizeof(m));
	if (m.version != DIVERT_WIRE_VERSION) {
		client_stats->bad_writes++;
		return;
	}
	switch (m.type) {
	case DW_PACKET:
		client_write(c, &m, buf + sizeof(m), n - sizeof(m));
		break;
	case DW_ATTACH:		/* with no descriptor */
		client_attach(c, &m, NULL, 0);
		break;
	case DW_WRITE: {
		/* on a process's write channel, for the socket m.conn */
		struct client *owner = client_by_id(m.conn);
		int err;

		client_stats->channel_writes++;
		err = owner == NULL ? EBADF
			: client_write(owner, &m, buf + sizeof(m), n - sizeof(m));
		client_reply_seq(c, err, m.val);
		break;
	}
	case DW_BIND:
		client_bind(c, &m);
		break;
	case DW_SETOPT:
		client_setopt(c, &m);
		break;
	case DW_CTL:
		client_control(c, &m, (char *)buf + sizeof(m), n - sizeof(m));
		break;
	case DW_RING:
		client_ring(c);
		break;
	case DW_KICK:		/* it wrote to its ring, or took from it */
		break;
	default:
		client_stats->bad_writes++;
		break;
	}
}

static void client_event(struct pollable *p, uint32_t events)
{
	struct client *c = (struct client *)p;
	int fds[DW_ATTACH_MAXFDS], nfds, n;

	if (c->dead)
		return;
	if (events & EPOLLOUT)
		client_room(c);		/* it has read: room again */

	/* a few batches, then give the others a turn */
	for (int round = 0; round < 4; round++) {
		n = recvmmsg(c->p.fd, wmsgs, WRITE_BATCH,
			     MSG_DONTWAIT | MSG_CMSG_CLOEXEC, NULL);
		if (n < 0 && errno == ECONNRESET)
			/* the program closed with packets unread: Linux says
			 * so once, ahead of what it wrote before closing (which
			 * FreeBSD would have sent at sendto()): read on */
			n = recvmmsg(c->p.fd, wmsgs, WRITE_BATCH,
				     MSG_DONTWAIT | MSG_CMSG_CLOEXEC, NULL);
		if (n <= 0)
			break;
		for (int i = 0; i < n; i++) {
			bool trunc = wmsgs[i].msg_hdr.msg_flags & MSG_TRUNC;

			nfds = msg_fds(&wmsgs[i].msg_hdr, fds, DW_ATTACH_MAXFDS);
			if (wmsgs[i].msg_len == 0 && !trunc) {
				for (int j = i + 1; j < n; j++)	/* unread */
					nfds += msg_fds(&wmsgs[j].msg_hdr,
							fds + nfds, 0);
				while (nfds > 0)
					close(fds[--nfds]);
				goto gone;	/* EOF */
			}
			if (nfds > 0 && !trunc &&
			    wmsgs[i].msg_len == sizeof(struct divert_wire_hdr) &&
			    ((struct divert_wire_hdr *)wiov[i].iov_base)->type ==
			    DW_ATTACH) {
				struct divert_wire_hdr m;

				memcpy(&m, wiov[i].iov_base, sizeof(m));
				client_attach(c, &m, fds, nfds);
				continue;
			}
			while (nfds > 0)	/* descriptors nothing asked for */
				close(fds[--nfds]);
			if (trunc)
				client_stats->bad_writes++;
			else
				client_message(c, wiov[i].iov_base,
					       wmsgs[i].msg_len);
		}
		if (n < WRITE_BATCH)
			break;
	}
	if (n < 0 && errno != EAGAIN && errno != EINTR)
		goto gone;
	if ((events & (EPOLLHUP | EPOLLERR)) && n <= 0)
		goto gone;
	if (c->ring != NULL) {
		if (ring_drain(c) < 0) {
			client_close(c);
			return;
		}
		if (c->full)
			(void)ring_wait_room(c);
	}
	return;
gone:
	log_debug("client %d closed", (int)c->pid);
	if (c->ring != NULL)	/* what it wrote back before it closed */
		(void)ring_drain(c);
	client_close(c);
}

int client_start(struct client *c, int fd, const struct ucred *cred)
{
	struct divert_wire_hdr hello = {
		.type = DW_WELCOME, .version = DIVERT_WIRE_VERSION,
		.conn = c->id,
	};

	c->p.fd = fd;
	c->p.handle = client_event;
	c->ctl.fd = -1;
	c->look_ms = RING_LOOK_MS;
	c->root = cred->uid == 0;
	c->pid = cred->pid;
	client_set_rcvbuf(c, DIVERT_SOCKBUF_DEFAULT);
	if (send(fd, &hello, sizeof(hello), MSG_NOSIGNAL) < 0 ||
	    loop_add(&c->p, EPOLLIN) < 0)
		return -1;
	clients[nclients++] = c;
	return 0;
}

unsigned client_count(void)
{
	return nclients;
}

struct client *client_nth(unsigned i)
{
	return clients[i];
}

struct client *client_by_port(uint16_t port)
{
	return port_owner[port];
}

int clients_open(const struct divert_config *cfg, struct divert_stats *stats,
		 struct log_ratelimit *rl)
{
	client_cfg = cfg;
	client_stats = stats;
	client_rl = rl;
	wbuf = malloc((size_t)WRITE_BATCH * WRITE_SLOT);
	clients = calloc(cfg->max_clients, sizeof(*clients));
	if (wbuf == NULL || clients == NULL)
		return -1;
	for (int i = 0; i < WRITE_BATCH; i++) {
		wiov[i].iov_base = wbuf + (size_t)i * WRITE_SLOT;
		wiov[i].iov_len = WRITE_SLOT;
		wmsgs[i].msg_hdr.msg_iov = &wiov[i];
		wmsgs[i].msg_hdr.msg_iovlen = 1;
		wmsgs[i].msg_hdr.msg_control = wctl[i].buf;
		wmsgs[i].msg_hdr.msg_controllen = sizeof(wctl[i].buf);
	}
	return 0;
}

void clients_close(void)
{
	while (clients != NULL && nclients > 0)
		client_close(clients[0]);
	clients_bury();
	free(wbuf);
	free(clients);
	wbuf = NULL;
	clients = NULL;
}
