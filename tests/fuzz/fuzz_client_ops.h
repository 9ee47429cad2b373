/*
 * fuzz_client_ops.h: the operations fuzz_client's input is made of, shared
 * with mkseeds.c, which writes its seed corpus.  Owns only these numbers
 * and what each operation's arguments are (all little-endian).
 */
#ifndef FUZZ_CLIENT_OPS_H
#define FUZZ_CLIENT_OPS_H

enum {
	OP_CONNECT,	/* ident: connect; ident % 5: root, a member of
			 * divertd's group, one by a supplementary group, a
			 * stranger, one whose groups cannot be read */
	OP_RAW,		/* k fix len:2 [pad:2] bytes: any message from
			 * connection k; fix & 1: version made right, fix & 2:
			 * conn = id of connection fix >> 4, fix & 8: pad
			 * follows, the message zero-padded to 2 * pad bytes
			 * (at most 70000) */
	OP_PUMP,	/* the daemon's loop runs until it is idle */
	OP_PACKET,	/* port hook mark:4 indev flags len:2 [pad:2] [count:2]
			 * bytes: a packet from the kernel's queue
			 * (divert_sock_packet); port < 0xf0 picks a
			 * configured port, else a u16 follows; flags & 1:
			 * checksum not ready, & 2: the mark of the port's tee
			 * rule, & 4: of its divert rule, & 8: pad follows,
			 * the packet zero-padded to 2 * pad bytes (at most
			 * 65535), & 0x10: count follows, that many copies
			 * (at most 2048 bytes each; a run takes 6000),
			 * & 0x20: the program reads between their batches */
	OP_FLUSH,	/* end of the netlink batch */
	OP_HANGUP,	/* k how: close; how & 1: shutdown for writing
			 * instead, how & 2: instead stop (or go on) reading
			 * what the daemon sends (a program that cannot keep
			 * up: its buffer fills) */
	OP_TIME,	/* ms:2: the clock moves on (held packets expire) */
	OP_RESULTS,	/* v: injection's sends fail with errno v & 7 of a
			 * list, & 0x40: fragments fail, & 0x80: tc fails,
			 * & 0x20: its sockets cannot be opened; a ring
			 * cannot be made: & 8: memfd_create() fails (EMFILE),
			 * & 0x10: mmap() fails (ENOMEM) */
	OP_INFO,	/* the read-only calls: ports, clients, held, timeout */
	OP_CTL,		/* k flags len:1 text: a divertctl command line from
			 * connection k, words split at blanks; flags & 1:
			 * JSON, & 2: the last string left unterminated */
	OP_TOGGLE,	/* v: v & 1: the rule swap fails, & 2: the kernel's
			 * counters cannot be read */
	OP_BIND,	/* k-ctl k port: DW_BIND of connection k (its high
			 * bit: asking for DW_BIND_DIRECT), sent on k-ctl */
	OP_WRITEBACK,	/* k j mode tag:2 off:2 xor: the j-th packet read,
			 * written back on connection k (byte off ^= xor);
			 * mode & 1: as DW_WRITE naming connection mode >> 4,
			 * & 2: with an address, (mode >> 2) & 3 picking
			 * 0.0.0.0, 192.0.2.1, 127.0.0.1 or 203.0.113.9,
			 * & 0x40: "eth0" in sin_zero; a DW_PACKET of a
			 * connection with a ring goes into its tx ring (on the
			 * socket when it does not fit), & 0x80: on the socket
			 * even so */
	OP_RING,	/* k: connection k asks for a shared-memory ring
			 * (DW_RING), as the shim does at socket() */
	OP_RINGPOKE,	/* k where off:2 len:2 bytes: connection k writes
			 * len bytes (at most 4096) into its mapped ring, then
			 * the daemon's loop runs; where & 3: 0 the header page
			 * at off % 4096 (the control words: rx at 64, tx at
			 * 192: head +0, tail +64, count +72, wake +80, taken
			 * +88), 1 the rx ring off bytes past rx.head, 2 the tx
			 * ring off bytes past tx.head (records the daemon has
			 * not read), 3 a forged tx record: at tx.tail, then
			 * tx.tail += off; the ring's bytes wrap; where & 4: a
			 * DW_KICK follows, & 8: the loop does not run yet (a
			 * tx wake poked to 0 stays: the next write-back does
			 * not kick, the loop finds it when it is idle) */
	OP_ATTACH,	/* k mode: connection k sends DW_ATTACH (arg: the ring
			 * flag when a memfd goes, & 0x20 the restart flag,
			 * & 0x80 mode >> 4 instead; val = mode) with, by mode
			 * & 3: no descriptor, a
			 * socketpair's end (its other end kept until hangup),
			 * a pipe's end, or a socketpair's end and a memfd for
			 * a ring: mode & 4 too short, & 8 unsealed, & 0x40 a
			 * header that is not a ring's; from then on the
			 * connection is hostile (nothing checked of it) */
	OP_N
};

#endif /* FUZZ_CLIENT_OPS_H */
