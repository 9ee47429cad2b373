/*
 * fuzz_wire_write.c: libFuzzer target for the checks on a written packet:
 * the helpers of src/divert_wire.h (divert_wire_check_write(),
 * divert_wire_packet_key(), divert_wire_is_outgoing(),
 * divert_wire_make_addr()) and the header checksum work src/cksum.c does
 * on a write the checks let through (cksum_ipv4_header_ok(),
 * cksum_set_ipv4_header()), all linked unchanged.
 *
 * Input: 1 byte of flags, a 16-byte address, a 16-byte name, 2 bytes of
 * length, then the packet.  The packet is copied into a buffer of exactly
 * the length written, so AddressSanitizer sees any read past it, and for
 * the checksum functions into one that ends at an unreadable page (a read
 * past it faults even if cksum.c came from an uninstrumented library, as
 * it once did from libnetfilter_queue).  Checked:
 *   - check_write gives 0 or one of FreeBSD's errnos (EINVAL, EMSGSIZE,
 *     EAFNOSUPPORT) and, when 0, the packet really passes each check in
 *     FreeBSD's order; it reads only the first 20 bytes (its documented
 *     contract: the shim passes a copy of just those);
 *   - what the daemon then does to an accepted write works and stays
 *     inside it: client_write() (client.c) sets the IPv4 header
 *     checksum of an outgoing write that rewrote a held packet (which
 *     must then be right), and checks the header checksum of an incoming
 *     one;
 *   - packet_key reads within len, is 0 exactly when the packet is too
 *     short or no IP, and does not change when the bytes a rewriter may
 *     change (addresses, ports, TTL, DSCP, checksums) change;
 *   - make_addr: AF_INET, the tag raw in sin_port, the address only for
 *     incoming packets, the name cut to 7 bytes and NUL-terminated.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>

#include "divertd.h"
#include "divert_wire.h"
#include "fuzz_input.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A copy of p[0..len) in a buffer of exactly len bytes. */
static uint8_t *exact(const uint8_t *p, size_t len)
{
	uint8_t *b = malloc(len > 0 ? len : 1);

	FZ_CHECK(b != NULL, "out of memory");
	if (len > 0)
		memcpy(b, p, len);
	return b;
}

static void check_key(const uint8_t *pkt, size_t len)
{
	uint8_t *b = exact(pkt, len);
	uint32_t key = divert_wire_packet_key(b, len);
	unsigned v = len > 0 ? b[0] >> 4 : 0;

	if ((v == 4 && len >= 20) || (v == 6 && len >= 40))
		FZ_CHECK(key != 0 && key >> 28 == v, "key %#x", key);
	else
		FZ_CHECK(key == 0, "key %#x for a %zu-byte packet", key, len);
	if (key != 0) {
		/* what natd-like rewriters change: not part of the key */
		static const int v4_free[] = { 1, 2, 3, 6, 7, 8, 10, 11, 12,
					       13, 14, 15, 16, 17, 18, 19 };
		static const int v6_free[] = { 1, 2, 3, 7, 8, 20, 39 };
		const int *fr = v == 4 ? v4_free : v6_free;
		size_t nfr = v == 4 ? sizeof(v4_free) / sizeof(v4_free[0])
				    : sizeof(v6_free) / sizeof(v6_free[0]);

		for (size_t i = 0; i < nfr; i++)
			b[fr[i]] ^= 0x5a;
		b[0] ^= 0x0f;	/* IPv4 header length, IPv6 traffic class */
		for (size_t i = 20; v == 4 && i < len && i < 64; i++)
			b[i] ^= 0xff;	/* ports, transport checksums */
		for (size_t i = 40; v == 6 && i < len && i < 80; i++)
			b[i] ^= 0xff;
		FZ_CHECK(divert_wire_packet_key(b, len) == key,
			 "key changes with bytes a rewriter may change");
	}
	free(b);
}

static void check_make_addr(uint16_t tag, int incoming, struct in_addr ia,
			    const uint8_t *name16)
{
	char name[17];
	struct sockaddr_in sin;
	size_t nl;

	memcpy(name, name16, 16);
	name[16] = '\0';
	nl = strnlen(name, 7);
	memset(&sin, 0xee, sizeof(sin));
	divert_wire_make_addr(&sin, tag, incoming, ia,
			      name16[15] & 1 ? NULL : name);
	FZ_CHECK(sin.sin_family == AF_INET, "family");
	FZ_CHECK(sin.sin_port == tag, "tag");
	FZ_CHECK(sin.sin_addr.s_addr == (incoming ? ia.s_addr : INADDR_ANY),
		 "address");
	FZ_CHECK(sin.sin_zero[7] == 0, "name not terminated");
	if (name16[15] & 1) {
		for (int i = 0; i < 8; i++)
			FZ_CHECK(sin.sin_zero[i] == 0, "name without interface");
	} else {
		FZ_CHECK(memcmp(sin.sin_zero, name, nl) == 0, "name");
		for (size_t i = nl; i < 8; i++)
			FZ_CHECK(sin.sin_zero[i] == 0, "name padding");
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz in = { data, size };
	uint8_t flags = fz_u8(&in);
	uint8_t addrbuf[16], name16[16];
	const uint8_t *p, *pkt;
	size_t got, len, addrlen, sndbuf, claimed;
	struct sockaddr *addr = NULL;
	struct sockaddr_in *sin;
	uint8_t *head, *full, *g, *abuf = NULL;
	int err, err_full;
	unsigned version;

	memset(addrbuf, 0, sizeof(addrbuf));
	p = fz_bytes(&in, 16, &got);
	memcpy(addrbuf, p, got);
	memset(name16, 0, sizeof(name16));
	p = fz_bytes(&in, 16, &got);
	memcpy(name16, p, got);
	claimed = fz_u16(&in);
	pkt = fz_bytes(&in, in.n, &len);

	/* the written length: what was given, or (flags 0x40) a length the
	 * header does not have, as a lying sendto() length would */
	if (flags & 0x40)
		len = claimed > len ? len : claimed;
	/* the address: none, or 0..16 bytes of it (exactly that much) */
	if (flags & 0x01) {
		addrlen = (flags >> 1) & 0x1f;
		if (addrlen > 16)
			addrlen = 16;
		abuf = exact(addrbuf, addrlen);
		addr = (struct sockaddr *)(void *)abuf;
	} else {
		addrlen = 0;
	}
	sndbuf = flags & 0x80 ? (size_t)claimed : DIVERT_WIRE_MAXPKT;

	/* the contract: only the first 20 bytes are read */
	head = exact(pkt, len < 20 ? len : 20);
	err = divert_wire_check_write(head, len, addr, addrlen, sndbuf);
	full = exact(pkt, len);
	err_full = divert_wire_check_write(full, len, addr, addrlen, sndbuf);
	FZ_CHECK(err == err_full, "check_write reads past 20 bytes");
	FZ_CHECK(err == 0 || err == EINVAL || err == EMSGSIZE ||
		 err == EAFNOSUPPORT, "errno %d is none FreeBSD gives", err);

	/* FreeBSD's order, each check on its own */
	if (addr != NULL && addrlen < sizeof(sa_family_t))
		FZ_CHECK(err == EINVAL, "short address: %d", err);
	else if (len > sndbuf || len > DIVERT_WIRE_MAXPKT)
		FZ_CHECK(err == EMSGSIZE, "oversize: %d", err);
	else if (len < 20)
		FZ_CHECK(err == EINVAL, "runt: %d", err);
	else if (addr != NULL && addr->sa_family != AF_INET)
		FZ_CHECK(err == EAFNOSUPPORT, "family: %d", err);
	else if (addr != NULL && addrlen != sizeof(struct sockaddr_in))
		FZ_CHECK(err == EINVAL, "address length: %d", err);
	else if ((full[0] >> 4) != 4 && (full[0] >> 4) != 6)
		FZ_CHECK(err == EAFNOSUPPORT, "IP version: %d", err);

	if (err == 0) {
		sin = (struct sockaddr_in *)(void *)addr;
		version = full[0] >> 4;
		FZ_CHECK(len >= 20 && len <= DIVERT_WIRE_MAXPKT && len <= sndbuf,
			 "accepted length %zu", len);
		FZ_CHECK(version == 4 || version == 6, "accepted version");
		if (divert_wire_is_outgoing(sin)) {
			size_t field = version == 4
				? ((size_t)full[2] << 8 | full[3])
				: ((size_t)full[4] << 8 | full[5]);

			FZ_CHECK(field <= len, "length field %zu > %zu", field,
				 len);
			if (version == 4) {
				/* client_write() sets the header checksum of a
				 * rewritten held packet: the header must be
				 * inside the write for that (Linux's raw
				 * socket refuses one that is not, EINVAL,
				 * when the write goes out as a new packet) */
				FZ_CHECK((size_t)(full[0] & 0x0f) * 4 <= len,
					 "outgoing IPv4 write accepted with a "
					 "%u-byte header in %zu bytes: its header "
					 "checksum cannot be set",
					 (full[0] & 0x0f) * 4, len);
				g = fz_guarded_copy(full, len);
				cksum_set_ipv4_header(g, len);
				FZ_CHECK(cksum_ipv4_header_ok(g, len),
					 "header checksum just set is wrong");
			}
		} else if (version == 4) {
			g = fz_guarded_copy(full, len);
			(void)cksum_ipv4_header_ok(g, len);
		}
	}
	check_key(pkt, len);
	{
		struct in_addr ia;

		memcpy(&ia, addrbuf + 4, 4);
		check_make_addr((uint16_t)(addrbuf[2] | addrbuf[3] << 8),
				flags & 0x20, ia, name16);
	}
	free(head);
	free(full);
	free(abuf);
	return 0;
}
