/*
 * held.c: the held packets.  A packet diverted to a client is HELD, as the
 * program owns what it read on FreeBSD: the kernel keeps it, and we keep
 * its NFQUEUE id, its direction, its identity (IPv4 id and protocol, or
 * IPv6 next header and length) and a hash of its bytes, until the client
 * writes it back or it is consumed.
 *
 * Owns the pool of struct held (made at start: the per-packet path
 * allocates nothing), the list of all held packets by deadline, and the
 * index by client, direction and identity (held_find()); a client's own
 * list hangs off its struct client (head, tail, nheld), and only this file
 * changes it.  What flows through here:
 *
 *  in    a packet the packet path holds (held_get(), held_index_add():
 *        divert_sock.c); a write-back looking for the packet it answers
 *        (held_find(): client.c, ring.c); the loop's clock (held_timeout(),
 *        held_expire(): divert_sock.c).
 *
 *  out   one verdict per held packet (nfq_bridge.c): NF_REPEAT, with the
 *        tag in our mark bits, for a packet written back (held_reinject());
 *        NF_DROP when it is consumed (held_drop()): when its client closes,
 *        when the client holds too many, or after the hold time.
 */
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <linux/netfilter.h>

#include "divert_sock.h"

#define HELD_POOL	16384		/* held packets, all clients */

static const struct divert_config *held_cfg;	/* divert_sock.c's */
static struct divert_stats *held_stats;		/* divert_sock.c's */
static struct held *held_pool, *held_free;
static struct held *gfirst, *glast;
/* held packets by client, direction and identity: a write finds the one it
 * answers without walking its client's thousands (each bucket in arrival
 * order, so the first match is the oldest) */
#define HELD_BUCKETS HELD_POOL
static struct { struct held *first, *last; } *held_index;
static struct log_ratelimit rl_evict;

static unsigned held_bucket(const struct client *c, uint8_t dir, uint32_t key)
{
	uint32_t x = (uint32_t)((uintptr_t)c >> 4) * 0x9e3779b1u ^
		     (key + dir) * 0x85ebca77u;

	return (x ^ x >> 15) % HELD_BUCKETS;
}

/* Into the index, once its client, direction and identity are set. */
void held_index_add(struct held *h)
{
	unsigned b = held_bucket(h->c, h->dir, h->key);

	h->knext = NULL;
	h->kprev = held_index[b].last;
	if (h->kprev != NULL)
		h->kprev->knext = h;
	else
		held_index[b].first = h;
	held_index[b].last = h;
}

static void held_index_del(struct held *h)
{
	unsigned b = held_bucket(h->c, h->dir, h->key);

	if (h->kprev != NULL)
		h->kprev->knext = h->knext;
	else
		held_index[b].first = h->knext;
	if (h->knext != NULL)
		h->knext->kprev = h->kprev;
	else
		held_index[b].last = h->kprev;
}

static void held_release(struct held *h)
{
	struct client *c = h->c;

	held_index_del(h);
	if (h->cprev)
		h->cprev->cnext = h->cnext;
	else
		c->head = h->cnext;
	if (h->cnext)
		h->cnext->cprev = h->cprev;
	else
		c->tail = h->cprev;
	c->nheld--;
	if (h->gprev)
		h->gprev->gnext = h->gnext;
	else
		gfirst = h->gnext;
	if (h->gnext)
		h->gnext->gprev = h->gprev;
	else
		glast = h->gprev;
	h->c = NULL;
	h->gnext = held_free;
	held_free = h;
}

/* Consume a held packet: the kernel drops it. */
void held_drop(struct held *h)
{
	nfqb_verdict(h->queue, h->id, NF_DROP, NULL, NULL, 0);
	held_release(h);
}

struct held *held_get(struct client *c, uint64_t now)
{
	struct held *h;

	if (c->nheld >= CLIENT_HELD_MAX || held_free == NULL) {
		/* the oldest is the one least likely to be written back; never
		 * one sent in this batch (those are the newest: the pool and
		 * the quota are far larger than a batch) */
		h = c->nheld >= CLIENT_HELD_MAX ? c->head : gfirst;
		log_limited(&rl_evict, 4, "%s: the oldest held packet (of "
			    "pid %d) dropped", c->nheld >= CLIENT_HELD_MAX ?
			    "a program holds 4096 packets, its limit" :
			    "16384 packets are held in all, the limit",
			    (int)h->c->pid);
		held_drop(h);
		held_stats->evicted++;
	}
	h = held_free;
	held_free = h->gnext;
	memset(h, 0, sizeof(*h));
	h->c = c;
	h->cprev = c->tail;
	if (c->tail)
		c->tail->cnext = h;
	else
		c->head = h;
	c->tail = h;
	c->nheld++;
	h->gprev = glast;
	if (glast)
		glast->gnext = h;
	else
		gfirst = h;
	glast = h;
	h->deadline = now + held_cfg->hold_ms;
	return h;
}

/* The held packet a write answers: the oldest with the same bytes, else
 * the oldest with the same identity (the program rewrote it). */
struct held *held_find(struct client *c, uint8_t dir, uint32_t key,
		       uint64_t hash, uint32_t len)
{
	struct held *first = NULL;

	for (struct held *h = held_index[held_bucket(c, dir, key)].first;
	     h != NULL; h = h->knext) {
		if (h->c != c || h->dir != dir || h->key != key)
			continue;
		if (h->hash == hash && h->len == len)
			return h;
		if (first == NULL)
			first = h;
	}
	return first;
}

/* A held packet written back: on it goes, after the rule its tag names
 * (pkt NULL: with the kernel's own bytes). */
void held_reinject(struct held *h, bool out, uint16_t tag,
		   const uint8_t *pkt, uint32_t len)
{
	uint32_t mark = mark_with_tag(held_cfg->ml, h->mark,
				      rules_resume_tag(held_cfg->rs, tag));

	nfqb_verdict(h->queue, h->id, NF_REPEAT, &mark, pkt, len);
	if (out)
		held_stats->reinjected_out++;
	else
		held_stats->reinjected_in++;
	held_release(h);
}

int held_timeout(void)
{
	uint64_t now;

	if (gfirst == NULL)
		return -1;
	now = now_ms();
	return gfirst->deadline <= now ? 0 : (int)(gfirst->deadline - now);
}

/* Drop held packets whose time is up. */
void held_expire(void)
{
	uint64_t now = now_ms();

	while (gfirst != NULL && gfirst->deadline <= now) {
		held_drop(gfirst);
		held_stats->expired++;
	}
}

int held_open(const struct divert_config *cfg, struct divert_stats *stats)
{
	held_cfg = cfg;
	held_stats = stats;
	held_pool = calloc(HELD_POOL, sizeof(*held_pool));
	held_index = calloc(HELD_BUCKETS, sizeof(*held_index));
	if (held_pool == NULL || held_index == NULL)
		return -1;
	for (size_t i = 0; i < HELD_POOL; i++) {
		held_pool[i].gnext = held_free;
		held_free = &held_pool[i];
	}
	return 0;
}

void held_close(void)
{
	while (gfirst != NULL)
		held_drop(gfirst);
	free(held_pool);
	free(held_index);
	held_index = NULL;
	held_free = NULL;	/* pointed into the pool */
	held_pool = NULL;
}
