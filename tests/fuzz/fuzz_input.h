/*
 * fuzz_input.h: what every fuzz target here shares, and nothing else.
 *
 * Owns: reading the fuzzer's bytes as a little stream of numbers and byte
 * strings (a target never reads past the end: a short input reads as
 * zeros), the check macro a target aborts with when a property the daemon
 * relies on does not hold, and marking the unused tail of a receive buffer
 * as unreadable under AddressSanitizer, so that a parser reading past the
 * message it was given is caught even when the buffer it reads from is
 * larger (the daemon's receive slots are 64 KiB; a message is often 40
 * bytes).  Header-only, static functions: each target is one translation
 * unit with the real .c files it tests.
 */
#ifndef FUZZ_INPUT_H
#define FUZZ_INPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FZ_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define FZ_ASAN 1
#endif
#ifdef FZ_ASAN
#include <sanitizer/asan_interface.h>
#endif

struct fz {
	const uint8_t *p;
	size_t n;
};

static inline bool fz_empty(const struct fz *f)
{
	return f->n == 0;
}

static inline uint8_t fz_u8(struct fz *f)
{
	uint8_t v = 0;

	if (f->n > 0) {
		v = f->p[0];
		f->p++;
		f->n--;
	}
	return v;
}

static inline uint16_t fz_u16(struct fz *f)
{
	uint16_t lo = fz_u8(f);

	return (uint16_t)(lo | (uint16_t)fz_u8(f) << 8);
}

static inline uint32_t fz_u32(struct fz *f)
{
	uint32_t lo = fz_u16(f);

	return lo | (uint32_t)fz_u16(f) << 16;
}

/* Up to want bytes: *got says how many there were. */
static inline const uint8_t *fz_bytes(struct fz *f, size_t want, size_t *got)
{
	const uint8_t *p = f->p;

	if (want > f->n)
		want = f->n;
	f->p += want;
	f->n -= want;
	*got = want;
	return p;
}

/* A property the daemon relies on does not hold: a bug, report it. */
#define FZ_CHECK(cond, ...)						\
	do {								\
		if (!(cond)) {						\
			fprintf(stderr, "%s:%d: check failed: %s: ",	\
				__FILE__, __LINE__, #cond);		\
			fprintf(stderr, __VA_ARGS__);			\
			fputc('\n', stderr);				\
			abort();					\
		}							\
	} while (0)

/* Bytes [len, cap) of buf hold nothing the message said: reading them is
 * reading past the message.  fz_unpoison() before the buffer is reused. */
/* $FUZZ_POISON_SLACK bytes past the message stay readable (default 0):
 * for fuzzing on past a known over-read of a few bytes until it is fixed. */
static inline size_t fz_slack(void)
{
	static long slack = -1;

	if (slack < 0) {
		const char *s = getenv("FUZZ_POISON_SLACK");

		slack = s != NULL ? atol(s) : 0;
		if (slack < 0)
			slack = 0;
	}
	return (size_t)slack;
}

static inline void fz_poison_tail(void *buf, size_t len, size_t cap)
{
#ifdef FZ_ASAN
	len += fz_slack();
	if (len < cap)
		__asan_poison_memory_region((char *)buf + len, cap - len);
#else
	(void)buf;
	(void)len;
	(void)cap;
#endif
}

static inline void fz_unpoison(void *buf, size_t cap)
{
#ifdef FZ_ASAN
	__asan_unpoison_memory_region(buf, cap);
#else
	(void)buf;
	(void)cap;
#endif
}

/*
 * A copy of p[0..len) that ends where an unreadable page begins: a read
 * past it faults even in code AddressSanitizer does not instrument (the
 * checksum functions of libnetfilter_queue, which cksum.c calls).  The
 * copy lives until the next call; len <= FZ_GUARD_MAX.
 */
#include <sys/mman.h>
#include <unistd.h>
#define FZ_GUARD_MAX (128 * 1024)

static inline uint8_t *fz_guarded_copy(const void *p, size_t len)
{
	static uint8_t *region;
	static size_t page;

	if (region == NULL) {
		page = (size_t)sysconf(_SC_PAGESIZE);
		region = mmap(NULL, FZ_GUARD_MAX + page, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (region == MAP_FAILED ||
		    mprotect(region + FZ_GUARD_MAX, page, PROT_NONE) != 0) {
			perror("fz_guarded_copy");
			abort();
		}
	}
	if (len > FZ_GUARD_MAX)
		abort();
	if (len > 0)
		memcpy(region + FZ_GUARD_MAX - len, p, len);
	return region + FZ_GUARD_MAX - len;
}

/* Reads every byte of [p, p+len): AddressSanitizer then checks the whole
 * range, as the kernel would when it copies it. */
static inline uint32_t fz_touch(const void *p, size_t len)
{
	const volatile uint8_t *b = (const volatile uint8_t *)p;
	uint32_t sum = 0;

	for (size_t i = 0; i < len; i++)
		sum = sum * 31 + b[i];
	return sum;
}

#endif /* FUZZ_INPUT_H */
