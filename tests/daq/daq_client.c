/*
 * daq_client: a minimal inline DAQ application (libdaq 2.0.x) for the
 * divertd test suites, standing in for Snort: it loads the installed DAQ
 * modules, opens one ("ipfw" by default: Debian's unmodified daq_ipfw.so,
 * which reads and writes a FreeBSD divert socket) on a divert port, and
 * gives each packet a verdict.
 *
 *	daq_client [-v] [-d MODULE_DIR] [-m MODULE] [-n MAXPKTS] [-t SECONDS]
 *	           [-b PROTO[:DSTPORT]]... PORT
 *
 *	-d DIR	where the DAQ modules are (default: libdaq's directory as
 *		found when this was built, DAQ_CLIENT_MODULE_DIR)
 *	-m NAME	the module (default ipfw)
 *	-n N	stop after N packets (default: no limit)
 *	-t S	stop after S seconds (default: no limit)
 *	-b P[:D] block packets of IP protocol P (tcp, udp, icmp or a number),
 *		only those to destination port D if given (TCP, UDP); may
 *		be repeated.  Every other packet gets DAQ_VERDICT_PASS.
 *	-v	a line per packet
 *
 * Run under the shim, as root, with divertd running a divert rule to PORT:
 *
 *	LD_PRELOAD=build/libdivert_shim.so build/daq_client -b udp:5353 8668
 *
 * Lines it prints (stdout, line-buffered), for the suites to grep:
 *	daq_client: module NAME version V type 0xT path FILE
 *	daq_client: reading divert port PORT (mode inline)
 *	pkt N len L proto P [dport D] verdict pass|block	(with -v)
 *	daq_client: stopped by signal|time limit|packet limit|error
 *	daq_client: seen N passed N blocked N bad N
 *	daq_client: daq hw_received N received N filtered N injected N
 *	            pass N block N replace N whitelist N blacklist N ignore N
 *	            (on one line)
 * SIGTERM or SIGINT stop it (daq_breakloop); the exit status is 0 unless
 * a DAQ call failed (1) or the command line is wrong (2).
 *
 * What daq_ipfw 2.0.7 does, which this program allows for:
 * - the divert port is the DAQ variable "port" (default 8000); the config's
 *   name (the interface for other modules) is not used: set to PORT anyway;
 * - its start() is socket(PF_INET, SOCK_RAW, 254) and bind() to the port;
 *   its acquire() loops on select() then recvfrom(), calls the callback
 *   and sendto()s the packet back to the address read unless the verdict
 *   is block or blacklist;
 * - the config's timeout goes into select() as seconds, not milliseconds:
 *   acquire() never returns on a timeout, it only re-checks its count, so
 *   1 here bounds how late a breakloop can be noticed;
 * - acquire() returns 0 when select() is interrupted by a signal, and
 *   after cnt packets (cnt 0: never, until breakloop);
 * - the callback's user argument is always NULL, so the counters here are
 *   globals.
 */
#include <sys/types.h>
#include <netinet/in.h>

#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <daq.h>

#ifndef DAQ_CLIENT_MODULE_DIR
#define DAQ_CLIENT_MODULE_DIR "/usr/lib/x86_64-linux-gnu/daq"
#endif

#define MAX_BLOCKS 16
#define SNAPLEN 65535

struct block {
	int proto;	/* IP protocol number */
	int dport;	/* -1: any */
};

static struct block blocks[MAX_BLOCKS];
static int nblocks;
static int verbose;

/* counted by the callback (daq_ipfw passes it no user pointer) */
static uint64_t seen, passed, blocked, bad;

/* for the signal handler */
static const DAQ_Module_t *volatile sig_module;
static void *volatile sig_handle;
static volatile sig_atomic_t stop_reason;	/* 0, or a reason below */

enum { BY_SIGNAL = 1, BY_TIME, BY_COUNT, BY_ERROR };
static const char *const reasons[] = {
	"running", "signal", "time limit", "packet limit", "error",
};

static void
on_signal(int sig)
{
	if (stop_reason == 0)
		stop_reason = sig == SIGALRM ? BY_TIME : BY_SIGNAL;
	if (sig_module != NULL && sig_handle != NULL)
		daq_breakloop(sig_module, sig_handle);
}

static void
usage(void)
{
	fprintf(stderr, "usage: daq_client [-v] [-d MODULE_DIR] [-m MODULE] "
	    "[-n MAXPKTS] [-t SECONDS] [-b PROTO[:DSTPORT]]... PORT\n");
	exit(2);
}

static long
number(const char *s, const char *what, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
		fprintf(stderr, "daq_client: bad %s: %s\n", what, s);
		exit(2);
	}
	return v;
}

static void
add_block(const char *arg)
{
	char proto[32];
	const char *colon = strchr(arg, ':');
	size_t len = colon != NULL ? (size_t)(colon - arg) : strlen(arg);
	struct block *b;

	if (nblocks == MAX_BLOCKS) {
		fprintf(stderr, "daq_client: at most %d -b\n", MAX_BLOCKS);
		exit(2);
	}
	if (len == 0 || len >= sizeof(proto)) {
		fprintf(stderr, "daq_client: bad -b %s\n", arg);
		exit(2);
	}
	memcpy(proto, arg, len);
	proto[len] = '\0';
	b = &blocks[nblocks++];
	if (strcasecmp(proto, "tcp") == 0)
		b->proto = IPPROTO_TCP;
	else if (strcasecmp(proto, "udp") == 0)
		b->proto = IPPROTO_UDP;
	else if (strcasecmp(proto, "icmp") == 0)
		b->proto = IPPROTO_ICMP;
	else
		b->proto = (int)number(proto, "protocol", 0, 255);
	b->dport = colon != NULL ?
	    (int)number(colon + 1, "destination port", 0, 65535) : -1;
	if (b->dport >= 0 && b->proto != IPPROTO_TCP && b->proto != IPPROTO_UDP) {
		fprintf(stderr, "daq_client: a port only with tcp or udp: %s\n", arg);
		exit(2);
	}
}

/*
 * The packet's protocol and, for TCP and UDP, destination port: IPv4 (with
 * options) or IPv6 (fixed header only; extension headers count as their
 * own protocol).  0 when the packet is too short to say.
 */
static int
classify(const uint8_t *p, uint32_t len, int *proto, int *dport)
{
	uint32_t off;

	*dport = -1;
	if (len < 1)
		return 0;
	if (p[0] >> 4 == 4) {
		if (len < 20 || (p[0] & 0x0f) < 5)
			return 0;
		off = (uint32_t)(p[0] & 0x0f) * 4;
		*proto = p[9];
		/* a fragment after the first has no transport header */
		if ((((uint32_t)p[6] << 8 | p[7]) & 0x1fff) != 0)
			return 1;
	} else if (p[0] >> 4 == 6) {
		if (len < 40)
			return 0;
		off = 40;
		*proto = p[6];
	} else {
		return 0;
	}
	if ((*proto == IPPROTO_TCP || *proto == IPPROTO_UDP) && len >= off + 4)
		*dport = p[off + 2] << 8 | p[off + 3];
	return 1;
}

static DAQ_Verdict
verdict_for(void *user, const DAQ_PktHdr_t *hdr, const uint8_t *data)
{
	DAQ_Verdict v = DAQ_VERDICT_PASS;
	int proto = -1, dport = -1, i;

	(void)user;
	seen++;
	/* daq_ipfw hands on a failed read (EINTR) with length -1 */
	if (hdr->caplen > SNAPLEN || !classify(data, hdr->caplen, &proto, &dport)) {
		bad++;
		passed++;
		if (verbose)
			printf("pkt %" PRIu64 " len %" PRIu32 " unreadable verdict pass\n",
			    seen, hdr->caplen);
		return DAQ_VERDICT_PASS;
	}
	for (i = 0; i < nblocks; i++) {
		if (blocks[i].proto == proto &&
		    (blocks[i].dport < 0 || blocks[i].dport == dport)) {
			v = DAQ_VERDICT_BLOCK;
			break;
		}
	}
	if (v == DAQ_VERDICT_BLOCK)
		blocked++;
	else
		passed++;
	if (verbose) {
		printf("pkt %" PRIu64 " len %" PRIu32 " proto %d", seen,
		    hdr->caplen, proto);
		if (dport >= 0)
			printf(" dport %d", dport);
		printf(" verdict %s\n", v == DAQ_VERDICT_BLOCK ? "block" : "pass");
	}
	return v;
}

/* The module's version and type as libdaq lists them, and the file it
 * was loaded from (the module structure lives in the module's .so). */
static void
describe(const DAQ_Module_t *module)
{
	DAQ_Module_Info_t *list = NULL;
	const char *name = daq_get_name(module);
	uint32_t version = 0;
	Dl_info info;
	int n, i;

	n = daq_get_module_list(&list);
	for (i = 0; i < n; i++)
		if (strcmp(list[i].name, name) == 0)
			version = list[i].version;
	if (n > 0)
		daq_free_module_list(list, n);
	if (dladdr((const void *)module, &info) == 0 || info.dli_fname == NULL)
		info.dli_fname = "?";
	printf("daq_client: module %s version %" PRIu32 " type 0x%02" PRIx32
	    " path %s\n", name, version, daq_get_type(module), info.dli_fname);
}

int
main(int argc, char *argv[])
{
	const char *dirs[2] = { DAQ_CLIENT_MODULE_DIR, NULL };
	const char *modname = "ipfw";
	const DAQ_Module_t *module;
	DAQ_Config_t cfg;
	DAQ_Stats_t st;
	struct sigaction sa;
	char errbuf[256], port[8];
	void *handle = NULL;
	long maxpkts = 0, seconds = 0;
	int c, rc, status = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	while ((c = getopt(argc, argv, "b:d:m:n:t:v")) != -1) {
		switch (c) {
		case 'b': add_block(optarg); break;
		case 'd': dirs[0] = optarg; break;
		case 'm': modname = optarg; break;
		case 'n': maxpkts = number(optarg, "packet count", 1, 1000000000); break;
		case 't': seconds = number(optarg, "seconds", 1, 86400); break;
		case 'v': verbose = 1; break;
		default: usage();
		}
	}
	if (argc - optind != 1)
		usage();
	snprintf(port, sizeof(port), "%ld",
	    number(argv[optind], "divert port", 1, 65535));

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0;	/* no SA_RESTART: the signal ends select() */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGALRM, &sa, NULL);

	if ((rc = daq_load_modules(dirs)) != DAQ_SUCCESS) {
		fprintf(stderr, "daq_client: daq_load_modules(%s): %d\n", dirs[0], rc);
		return 1;
	}
	if ((module = daq_find_module(modname)) == NULL) {
		fprintf(stderr, "daq_client: no DAQ module '%s' in %s\n", modname, dirs[0]);
		daq_unload_modules();
		return 1;
	}
	describe(module);
	if (!(daq_get_type(module) & DAQ_TYPE_INLINE_CAPABLE)) {
		fprintf(stderr, "daq_client: module %s cannot run inline\n", modname);
		daq_unload_modules();
		return 1;
	}

	memset(&cfg, 0, sizeof(cfg));
	cfg.name = port;
	cfg.snaplen = SNAPLEN;
	cfg.timeout = 1;	/* daq_ipfw: select()'s seconds; see above */
	cfg.mode = DAQ_MODE_INLINE;
	daq_config_set_value(&cfg, "port", port);

	errbuf[0] = '\0';
	rc = daq_initialize(module, &cfg, &handle, errbuf, sizeof(errbuf));
	daq_config_clear_values(&cfg);
	if (rc != DAQ_SUCCESS) {
		fprintf(stderr, "daq_client: daq_initialize: %d %s", rc, errbuf);
		daq_unload_modules();
		return 1;
	}
	if ((rc = daq_start(module, handle)) != DAQ_SUCCESS) {
		fprintf(stderr, "daq_client: daq_start: %d %s", rc,
		    daq_get_error(module, handle));
		daq_shutdown(module, handle);
		daq_unload_modules();
		return 1;
	}
	sig_module = module;
	sig_handle = handle;
	printf("daq_client: reading divert port %s (mode %s)\n", port,
	    daq_mode_string(cfg.mode));
	if (seconds > 0)
		alarm((unsigned)seconds);

	while (stop_reason == 0) {
		uint64_t want = 0;

		if (maxpkts > 0) {
			if (seen >= (uint64_t)maxpkts) {
				stop_reason = BY_COUNT;
				break;
			}
			want = (uint64_t)maxpkts - seen;
		}
		rc = daq_acquire(module, handle, (int)want, verdict_for, NULL);
		if (rc != DAQ_SUCCESS && stop_reason == 0) {
			fprintf(stderr, "daq_client: daq_acquire: %d %s", rc,
			    daq_get_error(module, handle));
			stop_reason = BY_ERROR;
			status = 1;
		}
	}
	alarm(0);
	sig_handle = NULL;

	printf("daq_client: stopped by %s\n", reasons[stop_reason]);
	printf("daq_client: seen %" PRIu64 " passed %" PRIu64 " blocked %" PRIu64
	    " bad %" PRIu64 "\n", seen, passed, blocked, bad);
	memset(&st, 0, sizeof(st));
	if ((rc = daq_get_stats(module, handle, &st)) == DAQ_SUCCESS)
		printf("daq_client: daq hw_received %" PRIu64 " received %" PRIu64
		    " filtered %" PRIu64 " injected %" PRIu64 " pass %" PRIu64
		    " block %" PRIu64 " replace %" PRIu64 " whitelist %" PRIu64
		    " blacklist %" PRIu64 " ignore %" PRIu64 "\n",
		    st.hw_packets_received, st.packets_received,
		    st.packets_filtered, st.packets_injected,
		    st.verdicts[DAQ_VERDICT_PASS], st.verdicts[DAQ_VERDICT_BLOCK],
		    st.verdicts[DAQ_VERDICT_REPLACE],
		    st.verdicts[DAQ_VERDICT_WHITELIST],
		    st.verdicts[DAQ_VERDICT_BLACKLIST],
		    st.verdicts[DAQ_VERDICT_IGNORE]);
	else {
		fprintf(stderr, "daq_client: daq_get_stats: %d\n", rc);
		status = 1;
	}
	if ((rc = daq_stop(module, handle)) != DAQ_SUCCESS) {
		fprintf(stderr, "daq_client: daq_stop: %d %s", rc,
		    daq_get_error(module, handle));
		status = 1;
	}
	daq_shutdown(module, handle);
	daq_unload_modules();
	return status;
}
