/*
 * test_ring.c: the shared-memory ring of src/divert_wire.h.
 *
 * dw_ring_reserve() (the producer) and dw_ring_next() (the consumer) must
 * carry records of every length in order and byte-exact, put a wrap mark
 * exactly when a record would not fit before the end of the ring, and find
 * room exactly when the bytes in use, the ones wasted at the end included,
 * stay within the limit.  Each side trusts nothing of the other: a consumer
 * position that lies makes the ring full, and a producer that breaks the
 * format makes the consumer stop (bad = 1) without reading outside the
 * ring.  Rings are malloc'd to their exact size, so the ASan build catches
 * any access past the end.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <cmocka.h>

#include "divert_wire.h"

struct ring {
	uint8_t *data;
	uint32_t size;
	uint64_t head, tail;	/* the consumer's and the producer's */
};

static uint8_t pkt[DIVERT_WIRE_MAXPKT];

/* An empty ring of size bytes, both positions at pos. */
static void ring_init(struct ring *r, uint32_t size, uint64_t pos)
{
	r->data = malloc(size);
	assert_non_null(r->data);
	memset(r->data, 0xa5, size);
	r->size = size;
	r->head = r->tail = pos;
}

/* The packet and the address of record number seq, different for each. */
static void fill(uint8_t *p, size_t len, uint32_t seq)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)(seq * 131 + i * 7 + (i >> 8));
}

static struct sockaddr_in addr_of(uint32_t seq)
{
	struct sockaddr_in sin;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = (uint16_t)seq;
	sin.sin_addr.s_addr = htonl(0x0a000000u + seq);
	memcpy(sin.sin_zero, &seq, sizeof(seq));
	return sin;
}

/* Post record seq of len bytes, as divertd and the shim do; its position
 * in *at.  0 when it does not fit: then nothing moved. */
static int push(struct ring *r, size_t len, uint32_t seq, uint64_t limit,
		uint64_t *at)
{
	uint64_t tail = r->tail;
	struct dw_rec rec, *slot;

	slot = dw_ring_reserve(r->data, r->size, r->head, &tail, len, limit);
	if (slot == NULL) {
		assert_int_equal(tail, r->tail);
		return 0;
	}
	assert_ptr_equal(slot, r->data + tail % r->size);
	memset(&rec, 0, sizeof(rec));
	rec.size = (uint32_t)dw_rec_size(len);
	rec.len = (uint32_t)len;
	rec.addr = addr_of(seq);
	memcpy(slot, &rec, sizeof(rec));
	fill((uint8_t *)(slot + 1), len, seq);
	*at = tail;
	r->tail = tail + rec.size;
	return 1;
}

/* Take the next record: it must be record seq of len bytes at position at. */
static void pop(struct ring *r, size_t len, uint32_t seq, uint64_t at)
{
	struct sockaddr_in sin = addr_of(seq);
	struct dw_rec rec;
	const uint8_t *p;
	int bad = 1;

	p = dw_ring_next(r->data, r->size, &r->head, r->tail, &rec, &bad);
	assert_non_null(p);
	assert_int_equal(bad, 0);
	assert_int_equal(r->head, at);	/* wrap marks passed, no more */
	assert_ptr_equal(p, r->data + at % r->size + sizeof(rec));
	assert_int_equal(rec.size, dw_rec_size(len));
	assert_int_equal(rec.len, len);
	assert_memory_equal(&rec.addr, &sin, sizeof(sin));
	fill(pkt, len, seq);
	assert_memory_equal(p, pkt, len);
	r->head += rec.size;
}

/* Nothing to take, and nothing wrong. */
static void empty(struct ring *r)
{
	struct dw_rec rec;
	int bad = 1;

	assert_null(dw_ring_next(r->data, r->size, &r->head, r->tail, &rec,
				 &bad));
	assert_int_equal(bad, 0);
	assert_int_equal(r->head, r->tail);
}

/* The producer at tail finds no room, and writes nothing. */
static void refused(struct ring *r, uint64_t head, uint64_t tail, size_t len,
		    uint64_t limit)
{
	uint8_t *was = malloc(r->size);
	uint64_t t = tail;

	assert_non_null(was);
	memcpy(was, r->data, r->size);
	assert_null(dw_ring_reserve(r->data, r->size, head, &t, len, limit));
	assert_int_equal(t, tail);
	assert_memory_equal(r->data, was, r->size);
	free(was);
}

static uint32_t wrap_at(const struct ring *r, uint64_t pos)
{
	uint32_t v;

	memcpy(&v, r->data + pos % r->size, sizeof(v));
	return v;
}

/* ---- records in, records out ------------------------------------------- */

static void test_round_trip(void **state)
{
	static const size_t lens[] = { 0, 1, 7, 8, 20, 1400, 65535, 0, 33 };
	enum { N = sizeof(lens) / sizeof(lens[0]) };
	uint64_t at[N], before;
	struct ring r;
	size_t i;

	(void)state;
	ring_init(&r, 1u << 17, 3u << 17);
	for (i = 0; i < N; i++) {
		before = r.tail;
		assert_true(push(&r, lens[i], (uint32_t)i, r.size, &at[i]));
		assert_int_equal(at[i], before);
		assert_int_equal(r.tail - before, dw_rec_size(lens[i]));
	}
	for (i = 0; i < N; i++) {
		pop(&r, lens[i], (uint32_t)i, at[i]);
		assert_int_equal(r.head, at[i] + dw_rec_size(lens[i]));
	}
	empty(&r);
	assert_int_equal(dw_rec_size(0), 32);
	assert_int_equal(dw_rec_size(1), 40);
	assert_int_equal(dw_rec_size(8), 40);
	assert_int_equal(dw_rec_size(9), 48);
	free(r.data);
}

/* A record that does not fit before the end goes at the start, after a
 * wrap mark the consumer passes; one that fits exactly does not wrap. */
static void test_wrap_mark(void **state)
{
	struct ring r;
	uint64_t at, base = 5 * 1024;

	(void)state;
	ring_init(&r, 1024, base + 896);
	assert_true(push(&r, 96, 1, 1024, &at));	/* 128: to the end */
	assert_int_equal(at, base + 896);
	assert_true(push(&r, 96, 2, 1024, &at));	/* at the start */
	assert_int_equal(at, base + 1024);
	pop(&r, 96, 1, base + 896);
	pop(&r, 96, 2, base + 1024);

	r.head = r.tail = base + 1024 + 960;		/* 64 to the end */
	assert_true(push(&r, 96, 3, 1024, &at));
	assert_int_equal(at, base + 2048);
	assert_int_equal(wrap_at(&r, base + 1024 + 960), DW_REC_WRAP);
	pop(&r, 96, 3, base + 2048);
	empty(&r);
	free(r.data);
}

/* ---- thousands of records through small rings ------------------------- */

static uint32_t rnd(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

static void churn(uint32_t size, uint64_t limit, unsigned ops)
{
	struct { uint64_t at; size_t len; uint32_t seq; } q[256];
	unsigned first = 0, n = 0, k, posted = 0, refusals = 0, wraps = 0;
	uint32_t seed = 12345, seq = 0;
	struct ring r;

	ring_init(&r, size, 7 * (uint64_t)size + 520);
	for (unsigned op = 0; op < ops; op++) {
		if (n > 0 && rnd(&seed) % 100 < 40) {
			pop(&r, q[first].len, q[first].seq, q[first].at);
			first = (first + 1) % 256;
			n--;
			continue;
		}
		size_t len = rnd(&seed) % (size / 3);
		uint64_t need = dw_rec_size(len), at = 0, was = r.tail;
		/* here, or at the start of the next lap when the bytes to
		 * the end are too few; in use: all from head to its end */
		uint64_t lap = (r.tail / size + 1) * size;
		uint64_t start = r.tail + need > lap ? lap : r.tail;
		int fits = start + need - r.head <= limit;

		assert_int_equal(push(&r, len, seq, limit, &at), fits);
		if (!fits) {
			refusals++;
			continue;
		}
		assert_int_equal(at, start);
		if (start != was) {
			assert_int_equal(wrap_at(&r, was), DW_REC_WRAP);
			wraps++;
		}
		assert_true(n < 256);
		k = (first + n++) % 256;
		q[k].at = at;
		q[k].len = len;
		q[k].seq = seq++;
		posted++;
	}
	for (; n > 0; n--, first = (first + 1) % 256)
		pop(&r, q[first].len, q[first].seq, q[first].at);
	empty(&r);
	/* the run did go through every case */
	assert_true(posted > ops / 3);
	assert_true(refusals > ops / 50);
	assert_true(wraps > ops / 100);
	free(r.data);
}

static void test_churn(void **state)
{
	(void)state;
	churn(1024, 1024, 20000);
	churn(4096, 4096, 20000);
	churn(4096, 3000, 20000);
	churn(1024, 600, 20000);
}

/* ---- full, and the limit ---------------------------------------------- */

static void test_full(void **state)
{
	uint64_t at[9], x;
	struct ring r;
	int i;

	(void)state;
	/* 7 records of 136 take 952 of 1024; the 8th would waste 72 */
	ring_init(&r, 1024, 0);
	for (i = 0; i < 9 && push(&r, 100, (uint32_t)i, 1024, &at[i]); i++)
		;
	assert_int_equal(i, 7);
	refused(&r, r.head, r.tail, 100, 1024);
	refused(&r, r.head, r.tail, 41, 1024);		/* 80 > 72 */
	x = r.tail;					/* 40 in 72: room */
	assert_ptr_equal(dw_ring_reserve(r.data, 1024, r.head, &x, 8, 1024),
			 r.data + 952);
	assert_int_equal(x, 952);
	pop(&r, 100, 0, at[0]);
	/* 816 in use + 72 wasted + 136: exactly the ring */
	assert_true(push(&r, 100, 7, 1024, &x));
	assert_int_equal(x, 1024);
	assert_int_equal(wrap_at(&r, 952), DW_REC_WRAP);
	refused(&r, r.head, r.tail, 0, 1024);
	for (i = 1; i < 8; i++)
		pop(&r, 100, (uint32_t)i, i < 7 ? at[i] : x);
	empty(&r);
	free(r.data);

	/* 8 records of 128 fill it to the byte; then one at the start */
	ring_init(&r, 1024, 0);
	for (i = 0; i < 9 && push(&r, 96, (uint32_t)i, 1024, &at[i]); i++)
		;
	assert_int_equal(i, 8);
	pop(&r, 96, 0, at[0]);
	assert_true(push(&r, 96, 8, 1024, &x));
	assert_int_equal(x, 1024);
	free(r.data);
}

static void test_limit(void **state)
{
	uint64_t at, t = 5000;	/* offset 904 of 1024 */
	struct ring r;
	int i;

	(void)state;
	ring_init(&r, 1024, 0);
	for (i = 0; i < 9 && push(&r, 32, (uint32_t)i, 520, &at); i++)
		;
	assert_int_equal(i, 8);				/* 512 of 520 */
	pop(&r, 32, 0, 0);
	assert_true(push(&r, 32, 8, 520, &at));
	free(r.data);

	ring_init(&r, 1024, t);
	refused(&r, t, t, 0, 1024 + 8);			/* limit > size */
	refused(&r, t, t, 0, 0);
	/* 960 in use + 64: exactly the limit */
	assert_non_null(dw_ring_reserve(r.data, 1024, t - 1024 + 64, &t, 32,
					1024));
	assert_int_equal(t, 5000);
	/* a consumer that lies is full */
	refused(&r, t - 1024, t, 0, 1024);		/* honest: full */
	refused(&r, t - 1024 - 8, t, 0, 1024);
	refused(&r, t + 8, t, 0, 1024);			/* ahead of tail */
	refused(&r, UINT64_MAX, t, 0, 1024);
	refused(&r, 0, 1u << 20, 0, 1024);
	free(r.data);

	/* no packet is longer than DIVERT_WIRE_MAXPKT: a longer len, whose
	 * record size would wrap round, is refused */
	ring_init(&r, 1u << 17, 0);
	refused(&r, 0, 0, DIVERT_WIRE_MAXPKT + 1, 1u << 17);
	refused(&r, 0, 0, SIZE_MAX, 1u << 17);
	refused(&r, 0, 0, SIZE_MAX - 31, 1u << 17);
	free(r.data);
}

/* ---- a producer that breaks the format --------------------------------- */

#define SMALL 1024u
#define BASE (9 * (uint64_t)SMALL)	/* a later lap: positions never wrap */

/* The consumer at head, the producer claiming tail: garbled (1) or a
 * record (0, a control that the same setup is otherwise valid).  head
 * never moves past tail (the shim publishes it even when garbled). */
static void next(struct ring *r, uint64_t head, uint64_t tail, int garbled)
{
	uint64_t was = head;
	struct dw_rec rec;
	int bad = !garbled;
	const uint8_t *p = dw_ring_next(r->data, r->size, &head, tail, &rec,
					&bad);

	assert_int_equal(bad, garbled);
	assert_int_equal(p == NULL, garbled);
	if (was <= tail)
		assert_true(head - was <= tail - was);
	else
		assert_int_equal(head, was);
}

/* A record header at offset off (cut at the end of the ring), then next(). */
static void rec_at(struct ring *r, uint32_t off, uint32_t size, uint32_t len,
		   uint64_t head, uint64_t tail, int garbled)
{
	struct dw_rec rec;

	memset(&rec, 0, sizeof(rec));
	rec.size = size;
	rec.len = len;
	memcpy(r->data + off, &rec,
	       r->size - off < sizeof(rec) ? r->size - off : sizeof(rec));
	next(r, head, tail, garbled);
}

static void test_hostile(void **state)
{
	const uint32_t S = SMALL, W = DW_REC_WRAP;
	const uint64_t B = BASE;
	struct ring r;

	(void)state;
	ring_init(&r, S, 0);
	/* size 0, not 8-aligned, under a header; then a valid one */
	rec_at(&r, 0, 0, 0, B, B + 64, 1);
	rec_at(&r, 0, 44, 12, B, B + 64, 1);
	rec_at(&r, 0, 24, 0, B, B + 64, 1);
	rec_at(&r, 0, 32, 0, B, B + 64, 0);
	/* larger than the bytes to the end, than the bytes posted */
	rec_at(&r, S - 64, 128, 96, B + S - 64, B + S + 192, 1);
	rec_at(&r, S - 64, 64, 32, B + S - 64, B + S + 192, 0);
	rec_at(&r, 0, 128, 96, B, B + 64, 1);
	next(&r, B, B + 128, 0);
	/* len against size */
	rec_at(&r, 0, 64, 40, B, B + 64, 1);
	rec_at(&r, 0, 64, 8, B, B + 64, 1);
	rec_at(&r, 0, 64, UINT32_MAX, B, B + 64, 1);
	rec_at(&r, S - 64, 64, 1000, B + S - 64, B + S, 1);
	/* not a wrap mark, and no room for a header before the end */
	rec_at(&r, S - 8, 32, 0, B + S - 8, B + S + 56, 1);
	/* wrap marks: at 0 (even with the ring full), past the bytes
	 * posted, then garbage or a record */
	rec_at(&r, 0, W, 0, B, B + 64, 1);
	next(&r, B, B + S, 1);
	rec_at(&r, S - 64, W, 0, B + S - 64, B + S - 32, 1);
	rec_at(&r, 0, 0, 0, B + S - 64, B + S + 64, 1);
	rec_at(&r, 0, 32, 0, B + S - 64, B + S + 64, 0);
	/* tail - head: not 8-aligned, more than the ring, negative; and
	 * the consumer's own head not aligned */
	next(&r, B, B + 36, 1);
	next(&r, B, B + 4, 1);
	next(&r, B, B + S + 8, 1);
	next(&r, B + 8, B, 1);
	rec_at(&r, 4, 32, 0, B + 4, B + 68, 1);
	free(r.data);

	/* len > 65535 with its size: only the length check catches it */
	ring_init(&r, 1u << 17, 0);
	assert_int_equal(dw_rec_size(65536), dw_rec_size(DIVERT_WIRE_MAXPKT));
	rec_at(&r, 0, (uint32_t)dw_rec_size(65536), 65536, 0,
	       dw_rec_size(65536), 1);
	rec_at(&r, 0, (uint32_t)dw_rec_size(65535), 65535, 0,
	       dw_rec_size(65535), 0);
	free(r.data);
}

static void test_empty(void **state)
{
	struct ring r;

	(void)state;
	ring_init(&r, SMALL, 0);
	empty(&r);
	r.head = r.tail = BASE + 40;
	empty(&r);
	/* a wrap mark and nothing after it: passed, nothing to take */
	memcpy(r.data + SMALL - 64, &(uint32_t){ DW_REC_WRAP }, 4);
	r.head = BASE + SMALL - 64;
	r.tail = BASE + SMALL;
	empty(&r);
	free(r.data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_wrap_mark),
		cmocka_unit_test(test_churn),
		cmocka_unit_test(test_full),
		cmocka_unit_test(test_limit),
		cmocka_unit_test(test_hostile),
		cmocka_unit_test(test_empty),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
