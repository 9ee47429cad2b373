/*
 * divertd.c: the daemon's life: options, setup in a careful order, one
 * epoll loop, and teardown on SIGTERM / SIGINT.
 *
 * Setup order matters to clients and to traffic:
 *   1. parse the config (errors name FILE:LINE and stop us);
 *   2. refuse to run twice: nobody may already answer on our socket, and
 *      one divertd per network namespace (flock on a file of root's named
 *      after the namespace, /run/divertd/netns-INO.lock; the kernel frees
 *      the lock when we die);
 *   3. remove rules a crashed divertd may have left, bind the NFQUEUE
 *      queues, open the interface table and the injection sockets;
 *   4. install the rules;
 *   5. create the client socket: its file appears only now, so a client
 *      that waits for it knows everything is in place.
 *   6. keep only CAP_NET_ADMIN and CAP_NET_RAW, as the user -u names if
 *      given (libcap-ng): everything the daemon does from then on, and the
 *      iptables-restore and tc it runs, needs no more.
 * Signal handlers only set flags; the loop sees them because signals are
 * blocked except inside epoll_pwait().
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <cap-ng.h>
#include <systemd/sd-daemon.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "divertd.h"
#include "divert.h"

#define DEFAULT_CONFIG "/etc/divertd.conf"
#define DEFAULT_MASK 0xffff0000u
#define DEFAULT_HOLD_MS 5000
#define DEFAULT_MAX_CLIENTS 1024
/* Longer than one client may hold (CLIENT_HELD_MAX in divert_sock.h), so a
 * program that drops by never writing back evicts its oldest packets
 * rather than filling the kernel's queue. */
#define QUEUE_MAXLEN 16384
#define MAX_PORTS RULES_MAX_DIVERT_PORTS

static volatile sig_atomic_t stop_signal, dump_stats, reload_asked;
static bool fatal_error;		/* the loop cannot go on: exit 1 */
static int epfd = -1;

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		dump_stats = 1;
	else if (sig == SIGHUP)
		reload_asked = 1;
	else
		stop_signal = sig;
}

int loop_add(struct pollable *p, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = p };

	return epoll_ctl(epfd, EPOLL_CTL_ADD, p->fd, &ev);
}

int loop_mod(struct pollable *p, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = p };

	return epoll_ctl(epfd, EPOLL_CTL_MOD, p->fd, &ev);
}

void loop_del(struct pollable *p)
{
	epoll_ctl(epfd, EPOLL_CTL_DEL, p->fd, NULL);
}

static void usage(FILE *f)
{
	fprintf(f,
"usage: divertd [-dFnv] [-f FILE] [-s SOCKET] [-b auto|nftables|iptables]\n"
"               [-m MASK] [-t MS] [-g GROUP] [-u USER] [-c MAX]\n"
"FreeBSD divert(4) sockets on Linux: compiles ipfw-style rules into the\n"
"kernel's firewall, relays diverted packets to divert programs (run them\n"
"with LD_PRELOAD=libdivert_shim.so) and re-injects what they write.\n"
"\n"
"  -d         stay in the foreground (otherwise detach once ready)\n"
"  -f FILE    rules, one ipfw rule per line (default " DEFAULT_CONFIG ")\n"
"  -n         only check FILE and print the rules both backends would\n"
"             install; exit 0, or print FILE:LINE: problem and exit 1\n"
"  -s SOCKET  client socket (default " DIVERT_SOCKET_DEFAULT ")\n"
"  -b BACKEND nftables or iptables; auto (default) probes for nft queue\n"
"  -m MASK    packet mark bits that carry the re-entry tag: contiguous,\n"
"             16 bits or more (default 0x%08x)\n"
"  -t MS      how long a packet read but never written back is held\n"
"             before it is dropped (default %d)\n"
"  -F         fail open: while no divertd reads a divert port's queue (it\n"
"             was killed) or the queue is full, packets pass on instead of\n"
"             being dropped\n"
"  -g GROUP   members of GROUP may divert too (the socket is root:GROUP,\n"
"             mode 0660); changing the rules stays root's\n"
"  -u USER    run as USER once set up, keeping only CAP_NET_ADMIN and\n"
"             CAP_NET_RAW (kept in any case)\n"
"  -c MAX     clients connected at once, at most (default %d)\n"
"  -v         log debug messages\n"
"  -h         this help\n"
"SIGHUP re-reads FILE and replaces the rules atomically, undoing changes\n"
"made with divertctl(8) (a FILE with an error is refused and the running\n"
"rules stay); SIGTERM or SIGINT remove the rules and the socket and exit\n"
"0; SIGUSR1 logs the counters.\n"
"Under systemd (Type=notify) readiness is sent once everything is up.\n",
		DEFAULT_MASK, DEFAULT_HOLD_MS, DEFAULT_MAX_CLIENTS);
}

/* Print what -n shows: the text of both backends. */
static void print_rules(const struct ruleset *rs, const struct mark_layout *ml)
{
	char *nft = rules_nft_text(rs, ml);
	char *ipt4 = rules_ipt_text(rs, ml, 4);
	char *ipt6 = rules_ipt_text(rs, ml, 6);
	char *lost = rules_nft_lost_text(ml);

	printf("# nftables: nft -f -\n%s\n", nft ? nft : "");
	printf("# iptables: iptables-restore --noflush\n%s\n", ipt4 ? ipt4 : "");
	printf("# ip6tables: ip6tables-restore --noflush\n%s", ipt6 ? ipt6 : "");
	printf("\n# with iptables, also (what finds no divertd): nft -f -\n%s",
	       lost ? lost : "");
	free(lost);
	free(nft);
	free(ipt4);
	free(ipt6);
}

/* 0 when nobody answers on path (a stale file is removed), -1 otherwise. */
static int socket_free(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd, r;

	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	r = connect(fd, (struct sockaddr *)&sun, sizeof(sun));
	close(fd);
	if (r == 0) {
		log_err("another divertd is already listening on %s", path);
		return -1;
	}
	if (errno == ECONNREFUSED)
		unlink(path);	/* left by a divertd that died */
	return 0;
}

/*
 * One divertd per network namespace: its rules and queues are per
 * namespace.  The lock is flock() on LOCK_DIR/netns-INO.lock, INO the
 * inode of /proc/self/ns/net, which names the namespace.  Only root may
 * take it: the directory must be root's and writable by root alone, the
 * file root's with no access for anyone else (flock needs only a
 * descriptor, even a read-only one), and neither a symlink.  An abstract
 * UNIX socket name, the lock before, could be bound first by any user,
 * who then kept divertd from starting and a killed one's rules in place.
 * The kernel drops the lock when we die, and the descriptor is CLOEXEC,
 * so no tool we run keeps it.  0, or -1 with the reason logged.
 */
#define LOCK_DIR "/run/divertd"

static struct {
	int fd;				/* held for our whole life */
	char name[48];			/* in LOCK_DIR */
} nslock = { -1, "" };

/* LOCK_DIR, made (0755) if missing, if it is safe: a descriptor of it */
static int lock_dir(void)
{
	bool made = mkdir(LOCK_DIR, 0700) == 0;
	struct stat st;
	int dfd;

	if (!made && errno != EEXIST) {
		log_err("cannot create %s for the lock: %s", LOCK_DIR,
			strerror(errno));
		return -1;
	}
	dfd = open(LOCK_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0) {
		log_err("%s, where the lock is: %s", LOCK_DIR, errno == ELOOP ||
			errno == ENOTDIR ? "a symlink or not a directory: "
			"refused" : strerror(errno));
		return -1;
	}
	if (made)		/* what the socket needs there, whatever the umask */
		(void)fchmod(dfd, 0755);
	if (fstat(dfd, &st) < 0 || st.st_uid != 0 ||
	    (st.st_mode & (S_IWGRP | S_IWOTH))) {
		log_err("%s, where the lock is, is writable by others than "
			"root (owner %d, mode %04o): refused, since whoever can "
			"write it could take the lock and keep divertd from "
			"starting", LOCK_DIR, (int)st.st_uid,
			(unsigned)(st.st_mode & 07777));
		close(dfd);
		return -1;
	}
	return dfd;
}

/* Open and lock name in dfd: the descriptor, -1 when another holds it
 * or on an error (logged), -2 when the file changed under us (retry). */
static int lock_file(int dfd, const char *name)
{
	struct stat st, now;
	int fd;

	fd = openat(dfd, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		log_err("%s/%s: %s", LOCK_DIR, name, errno == ELOOP ?
			"a symlink: refused" : strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != 0 ||
	    (st.st_mode & 077)) {
		log_err("%s/%s is not root's alone (owner %d, mode %04o): "
			"refused, since whoever can open it could take the lock",
			LOCK_DIR, name, (int)st.st_uid,
			(unsigned)(st.st_mode & 07777));
		close(fd);
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EWOULDBLOCK)
			log_err("another divertd runs in this network namespace "
				"(it holds %s/%s)", LOCK_DIR, name);
		else
			log_err("cannot lock %s/%s: %s", LOCK_DIR, name,
				strerror(errno));
		close(fd);
		return -1;
	}
	/* a divertd that exited removed the file after we opened it: the
	 * lock that counts is on the file in place now */
	if (fstatat(dfd, name, &now, AT_SYMLINK_NOFOLLOW) < 0 ||
	    now.st_dev != st.st_dev || now.st_ino != st.st_ino) {
		close(fd);
		return -2;
	}
	return fd;
}

static int netns_lock(void)
{
	struct stat ns;
	int dfd, fd = -2;

	if (stat("/proc/self/ns/net", &ns) < 0) {
		log_err("cannot tell this network namespace from others "
			"(/proc/self/ns/net): %s", strerror(errno));
		return -1;
	}
	snprintf(nslock.name, sizeof(nslock.name), "netns-%ju.lock",
		 (uintmax_t)ns.st_ino);
	if ((dfd = lock_dir()) < 0)
		return -1;
	for (int tries = 0; tries < 8 && fd == -2; tries++)
		fd = lock_file(dfd, nslock.name);
	close(dfd);
	if (fd == -2)
		log_err("cannot lock %s/%s: it is removed again and again",
			LOCK_DIR, nslock.name);
	if (fd < 0)
		return -1;
	nslock.fd = fd;
	return 0;
}

/* At exit, once the rules are gone: remove the lock file (when we still
 * may: not as the user of -u), then let go of the lock. */
static void netns_unlock(void)
{
	char path[sizeof(LOCK_DIR) + sizeof(nslock.name)];

	if (nslock.fd < 0)
		return;
	snprintf(path, sizeof(path), "%s/%s", LOCK_DIR, nslock.name);
	(void)unlink(path);
	close(nslock.fd);
	nslock.fd = -1;
}

/* Every client is a descriptor: take the hard limit, not the soft 1024. */
/*
 * Keep CAP_NET_ADMIN (rules, queues, the veth and its tc filter, socket
 * buffers) and CAP_NET_RAW (raw and packet sockets), nothing else, in every
 * set, and in the ambient set so that the iptables-restore and tc we run
 * have them too; as user (uid, gid) when uid is not -1.  0 or -1.
 */
static int drop_privileges(uid_t uid, gid_t gid)
{
	capng_clear(CAPNG_SELECT_ALL);
	if (capng_updatev(CAPNG_ADD, CAPNG_EFFECTIVE | CAPNG_PERMITTED |
			  CAPNG_INHERITABLE | CAPNG_BOUNDING_SET | CAPNG_AMBIENT,
			  CAP_NET_ADMIN, CAP_NET_RAW, -1) < 0)
		return -1;
	if (uid != (uid_t)-1) {
		if (capng_change_id((int)uid, (int)gid,
				    CAPNG_DROP_SUPP_GRP | CAPNG_CLEAR_BOUNDING) < 0)
			return -1;
		return capng_apply(CAPNG_SELECT_AMBIENT) < 0 ? -1 : 0;
	}
	return capng_apply(CAPNG_SELECT_ALL) < 0 ? -1 : 0;
}

static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static void log_stats(void)
{
	const struct divert_stats *s = divert_sock_stats();
	const struct nfqb_stats *q = nfqb_stats();

	log_info("stats: %llu received, %llu diverted, %llu teed, %llu no socket, "
		 "%llu full, %llu reinjected out, %llu reinjected in, "
		 "%llu injected out, %llu injected in, %llu inject errors, "
		 "%llu expired, %llu evicted, %llu bad writes, %llu bad checksums, "
		 "%llu naming no interface, %llu written as new, "
		 "%llu verdict errors, %llu kernel queue drops, "
		 "%llu sockets attached again, %llu writes refused while none "
		 "ran, %llu found no divertd before this one",
		 (unsigned long long)q->received, (unsigned long long)s->diverted,
		 (unsigned long long)s->teed, (unsigned long long)s->noport,
		 (unsigned long long)s->full,
		 (unsigned long long)s->reinjected_out,
		 (unsigned long long)s->reinjected_in,
		 (unsigned long long)s->injected_out,
		 (unsigned long long)s->injected_in,
		 (unsigned long long)s->inject_errors,
		 (unsigned long long)s->expired, (unsigned long long)s->evicted,
		 (unsigned long long)s->bad_writes,
		 (unsigned long long)s->bad_cksum_in,
		 (unsigned long long)s->no_iface,
		 (unsigned long long)s->channel_writes,
		 (unsigned long long)q->verdict_errors,
		 (unsigned long long)q->kernel_drops,
		 (unsigned long long)s->reattached,
		 (unsigned long long)s->away_refused,
		 (unsigned long long)daemon_lost_before());
}

static void iftable_event(struct pollable *p, uint32_t events)
{
	(void)p;
	(void)events;
	iftable_process();
}

static bool has_port(const uint16_t *ports, size_t n, uint16_t port)
{
	for (size_t i = 0; i < n; i++)
		if (ports[i] == port)
			return true;
	return false;
}

/* The rules in force, for the SIGHUP reload and for divertctl (control.c). */
static struct {
	struct ruleset *rs;		/* main()'s; the client side reads it too */
	const struct mark_layout *ml;
	enum fw_backend backend;
	uint64_t lost_before;		/* fw_lost() at start */
} running;

const struct ruleset *daemon_rules(void)
{
	return running.rs;
}

const struct mark_layout *daemon_layout(void)
{
	return running.ml;
}

bool daemon_uses_nft(void)
{
	return running.backend == FW_NFT;
}

uint64_t daemon_lost_before(void)
{
	return running.lost_before;
}

/*
 * Put nrs in place of the running rules while traffic flows; the one way
 * rules change after start (SIGHUP's reload and divertctl's add, delete,
 * flush).  Queues for new ports are bound first, then the rules are
 * replaced in one transaction per backend table, then the ruleset
 * the client side reads is swapped, then queues no rule uses any more are
 * unbound (what they held is dropped, as on FreeBSD when a divert rule
 * goes).  Rules the kernel refuses change nothing: -1, the reason in err.
 * nrs is consumed either way.  what names the change in the log.
 */
int daemon_apply(struct ruleset *nrs, const char *what, char *err,
		 size_t errlen)
{
	struct ruleset *rs = running.rs;
	uint16_t old[MAX_PORTS], new[MAX_PORTS + 1];
	size_t nold, nnew, bound = 0;
	struct rule_count *saved;

	nold = rules_ports(rs, old, MAX_PORTS);
	nnew = rules_ports(nrs, new, MAX_PORTS + 1);
	if (nnew > MAX_PORTS) {	/* a file says so at its line (config.c) */
		snprintf(err, errlen, "more than %u divert and tee ports (each "
			 "is a queue of its own)", MAX_PORTS);
		goto undo;
	}
	for (size_t i = 0; i < nnew; i++) {
		if (has_port(old, nold, new[i]))
			continue;
		if (nfqb_bind_queue(new[i]) < 0) {
			snprintf(err, errlen, "cannot bind NFQUEUE queue %u "
				 "for divert port %u", new[i], new[i]);
			goto undo;
		}
		bound = i + 1;
	}
	saved = counters_save();
	if (fw_replace(running.backend, nrs, running.ml) < 0) {
		snprintf(err, errlen, "the kernel did not take the new rules");
		/* iptables replaces one family at a time: if the second
		 * refused, put the running list back in the first */
		if (fw_replace(running.backend, rs, running.ml) < 0)
			log_err("the running rules could not be restored "
				"everywhere either");
		counters_carry(rs, saved, rs);
		goto undo;
	}
	counters_carry(rs, saved, nrs);
	ruleset_free(rs);
	*rs = *nrs;		/* the client side reads it through cfg->rs */
	*nrs = (struct ruleset){ 0 };
	divert_sock_rules_changed();
	for (size_t i = 0; i < nold; i++)
		if (!has_port(new, nnew, old[i]))
			nfqb_unbind_queue(old[i]);
	log_info("%s: %zu rules, %zu divert ports", what, rs->n, nnew);
	sd_notifyf(0, "STATUS=%zu rules, %zu divert ports", rs->n, nnew);
	return 0;
undo:
	for (size_t i = 0; i < bound; i++)
		if (!has_port(old, nold, new[i]))
			nfqb_unbind_queue(new[i]);
	ruleset_free(nrs);
	return -1;
}

/*
 * SIGHUP: read the config again and put it in place (daemon_apply()).  A
 * config with an error, or rules the kernel refuses, change nothing.  The
 * file replaces whatever divertctl changed since.
 */
static void reload(const char *path)
{
	struct ruleset nrs = { 0 };
	struct timespec ts;
	uint16_t ports[MAX_PORTS];
	char err[512], what[PATH_MAX + 16];

	clock_gettime(CLOCK_MONOTONIC, &ts);
	sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading %s",
		   (unsigned long long)ts.tv_sec * 1000000ULL +
		   (unsigned long long)ts.tv_nsec / 1000, path);
	if (config_parse_file(path, &nrs, err, sizeof(err)) < 0) {
		log_err("reload refused, the running rules stay: %s", err);
		sd_notifyf(0, "READY=1\nSTATUS=reload refused: %s", err);
		return;
	}
	snprintf(what, sizeof(what), "reloaded %s", path);
	if (daemon_apply(&nrs, what, err, sizeof(err)) < 0) {
		log_err("reload refused, the running rules stay: %s", err);
		sd_notifyf(0, "READY=1\nSTATUS=reload refused: %s", err);
		return;
	}
	sd_notifyf(0, "READY=1\nSTATUS=%zu rules, %zu divert ports",
		   running.rs->n, rules_ports(running.rs, ports, MAX_PORTS));
}

int main(int argc, char **argv)
{
	const char *config_path = DEFAULT_CONFIG;
	const char *socket_path = getenv("DIVERT_SOCKET");
	enum fw_backend backend = FW_AUTO;
	bool foreground = false, check_only = false, verbose = false;
	bool fail_open = false;
	unsigned long mask = DEFAULT_MASK, hold_ms = DEFAULT_HOLD_MS;
	unsigned long max_clients = DEFAULT_MAX_CLIENTS;
	uid_t uid = (uid_t)-1;
	gid_t gid = (gid_t)-1, group = (gid_t)-1;
	struct ruleset rs = { 0 };
	struct mark_layout ml;
	struct divert_config dc;
	struct pollable if_p;
	uint16_t ports[MAX_PORTS];
	size_t nports;
	char err[512], *end;
	sigset_t block, orig;
	struct sigaction sa;
	int opt, ret = 1;

	if (socket_path == NULL || *socket_path == '\0')
		socket_path = DIVERT_SOCKET_DEFAULT;
	while ((opt = getopt(argc, argv, "b:c:dFf:g:hm:ns:t:u:v")) != -1) {
		switch (opt) {
		case 'c':
			errno = 0;
			max_clients = strtoul(optarg, &end, 10);
			if (errno || *end || max_clients == 0 || max_clients > 65536) {
				fprintf(stderr, "divertd: -c takes 1..65536 clients\n");
				return 1;
			}
			break;
		case 'F':
			fail_open = true;
			break;
		case 'g': {
			struct group *gr = getgrnam(optarg);

			if (gr == NULL) {
				fprintf(stderr, "divertd: -g: no group '%s'\n", optarg);
				return 1;
			}
			group = gr->gr_gid;
			break;
		}
		case 'u': {
			struct passwd *pw = getpwnam(optarg);

			if (pw == NULL) {
				fprintf(stderr, "divertd: -u: no user '%s'\n", optarg);
				return 1;
			}
			uid = pw->pw_uid;
			gid = pw->pw_gid;
			break;
		}
		case 'b':
			if (strcmp(optarg, "nftables") == 0 || strcmp(optarg, "nft") == 0)
				backend = FW_NFT;
			else if (strcmp(optarg, "iptables") == 0)
				backend = FW_IPT;
			else if (strcmp(optarg, "auto") == 0)
				backend = FW_AUTO;
			else {
				fprintf(stderr, "divertd: -b takes auto, nftables or iptables\n");
				return 1;
			}
			break;
		case 'd':
			foreground = true;
			break;
		case 'f':
			config_path = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'm':
			errno = 0;
			mask = strtoul(optarg, &end, 0);
			if (errno || *end || mask > 0xffffffffUL) {
				fprintf(stderr, "divertd: bad mark mask '%s'\n", optarg);
				return 1;
			}
			break;
		case 'n':
			check_only = true;
			break;
		case 's':
			socket_path = optarg;
			break;
		case 't':
			errno = 0;
			hold_ms = strtoul(optarg, &end, 10);
			if (errno || *end || hold_ms == 0 || hold_ms > 3600000) {
				fprintf(stderr, "divertd: -t takes 1..3600000 milliseconds\n");
				return 1;
			}
			break;
		case 'v':
			verbose = true;
			break;
		default:
			usage(stderr);
			return 1;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 1;
	}
	log_init("divertd", verbose ? 7 : 6);

	if (config_parse_file(config_path, &rs, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	if (mark_layout_init(&ml, (uint32_t)mask) < 0) {
		fprintf(stderr, "divertd: mark mask 0x%08lx must be one run of "
			"16 or more bits\n", mask);
		goto out_rules;
	}
	ml.fail_open = fail_open;
	if (check_only) {
		print_rules(&rs, &ml);
		ret = 0;
		goto out_rules;
	}

	if (socket_free(socket_path) < 0 || netns_lock() < 0)
		goto out_rules;
	raise_fd_limit();
	if (fw_open() < 0) {	/* first: before the many descriptors */
		log_err("cannot make a libnftables context: %s",
			strerror(errno));
		goto out_rules;
	}
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0) {
		log_err("epoll: %s", strerror(errno));
		goto out_rules;
	}
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGHUP);
	sigprocmask(SIG_BLOCK, &block, &orig);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (backend == FW_AUTO)
		backend = fw_probe();
	nports = rules_ports(&rs, ports, MAX_PORTS);
	if (nfqb_open(ports, nports, QUEUE_MAXLEN, fail_open) < 0)
		goto out_close;
	/* what a killed divertd's rules counted while none ran, read once
	 * our queues take what they send (then they count no more) */
	running.lost_before = fw_lost();
	if (running.lost_before > 0)
		log_warn("%" PRIu64 " packets found no divertd since the last "
			 "one ended (dropped, or with -F passed)",
			 running.lost_before);
	/* the dead one's rules stay until fw_install() replaces them: what
	 * they send meanwhile waits in our queues instead of passing */
	if (iftable_open() < 0 || inject_open() < 0)
		goto out_close;
	if_p.fd = iftable_fd();
	if_p.handle = iftable_event;
	if (loop_add(&if_p, EPOLLIN) < 0)
		goto out_close;
	if (fw_install(backend, &rs, &ml) < 0) {
		log_err("cannot install the rules with %s", fw_backend_name(backend));
		goto out_close;
	}
	running.rs = &rs;
	running.ml = &ml;
	running.backend = backend;
	dc.socket_path = socket_path;
	dc.rs = &rs;
	dc.ml = &ml;
	dc.hold_ms = (unsigned)hold_ms;
	dc.group = group;
	dc.max_clients = (unsigned)max_clients;
	if (divert_sock_open(&dc) < 0)
		goto out_rules_installed;
	if (drop_privileges(uid, gid) < 0) {
		log_err("cannot drop privileges%s: %s", uid != (uid_t)-1 ?
			" to the user of -u" : "", strerror(errno));
		goto out_rules_installed;
	}
	nfqb_set_handler(divert_sock_packet, divert_sock_flush, NULL);
	log_info("ready: %zu rules, %zu divert ports, %s backend, socket %s",
		 rs.n, nports, fw_backend_name(backend), socket_path);

	if (!foreground) {
		pid_t pid = fork();
		if (pid < 0) {
			log_err("fork: %s", strerror(errno));
			goto out_rules_installed;
		}
		if (pid > 0)
			_exit(0);
		setsid();
	}

	/* systemd (Type=notify): rules, queues and socket are in place */
	sd_notifyf(0, "READY=1\nMAINPID=%d\nSTATUS=%zu rules, %zu divert ports",
		   (int)getpid(), rs.n, nports);

	while (!stop_signal && !fatal_error && !nfqb_broken()) {
		struct epoll_event ev[64];
		int n = epoll_pwait(epfd, ev, 64, divert_sock_timeout(), &orig);

		divert_sock_awake();
		if (n < 0 && errno != EINTR) {
			log_err("epoll_pwait: %s", strerror(errno));
			fatal_error = true;
			break;
		}
		for (int i = 0; i < n; i++) {
			struct pollable *p = ev[i].data.ptr;
			p->handle(p, ev[i].events);
		}
		divert_sock_expire();
		divert_sock_idle();
		nfqb_flush();
		if (dump_stats) {
			dump_stats = 0;
			log_stats();
		}
		if (reload_asked) {
			reload_asked = 0;
			reload(config_path);
		}
	}
	sd_notify(0, "STOPPING=1");
	if (stop_signal)
		log_info("signal %d: removing rules and exiting", (int)stop_signal);
	ret = fatal_error || nfqb_broken() ? 1 : 0;
	log_stats();
out_rules_installed:
	fw_remove();
out_close:
	divert_sock_close();
	nfqb_close();
	inject_close();
	iftable_close();
out_rules:
	netns_unlock();
	fw_close();
	counters_free();
	ruleset_free(&rs);
	return ret;
}
