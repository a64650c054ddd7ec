/*
 * What the probes' benchmarks (nvme.c, virtio_blk.c, virtio_net.c) share: the request offsets of a
 * phase, and the run cut into time slices (for rate-limit tests that look at the rate over time),
 * printed as PROBE-INFO <name>_slice_<i>=start_us=.. us=.. <unit>=.. bytes=.. lines.
 */
#ifndef BENCH_H
#define BENCH_H

#include "probe.h"

/* The helpers used per request are inline: every guest instruction is emulated on PVM hosts, so
 * the guest's own cost per I/O shows in the results. */

/* xorshift32 from a fixed seed: the same "random" offsets on every run. */
extern uint32_t g_bench_rng;
static inline uint32_t bench_rand(void)
{
	g_bench_rng ^= g_bench_rng << 13;
	g_bench_rng ^= g_bench_rng >> 17;
	g_bench_rng ^= g_bench_rng << 5;
	return g_bench_rng;
}

/* Disk byte offsets for one phase: 4 KiB-aligned random ones below `units` pages, or consecutive
 * `xfer`-byte requests over [lo, hi) that start again at lo before running past hi. */
struct bench_offsets {
	bool random;
	uint32_t units;
	uint32_t xfer;
	uint64_t lo, hi, seq; /* seq: the next sequential offset; start it at lo */
};
static inline uint64_t bench_next_offset(struct bench_offsets *o)
{
	if (o->random)
		return (uint64_t)(bench_rand() % o->units) << 12;
	uint64_t off = o->seq;
	o->seq += o->xfer;
	if (o->seq + o->xfer > o->hi)
		o->seq = o->lo;
	return off;
}

struct bench_slice {
	uint64_t start, end; /* TSC */
	uint32_t ops;
	uint64_t bytes;
};
struct bench_slices {
	struct bench_slice *log; /* the first `max` slices are kept for printing */
	uint32_t max;
	uint64_t ticks;         /* slice length */
	uint64_t stall;         /* how long without a completion is a stall */
	uint64_t t0, last;      /* the start, the last completion (TSC) */
	struct bench_slice cur; /* the slice being counted */
	uint32_t n;             /* slices closed, kept or not */
	uint64_t bytes;         /* bytes of the closed slices (of all, after bench_slices_finish) */
};
/* Starts the run and its first slice now; slices of `slice_ms`, a stall after 5 s without a
 * completion. */
void bench_slices_start(struct bench_slices *s, struct bench_slice *log, uint32_t max, uint32_t slice_ms);
/* One completion of `bytes` bytes in the current slice. */
static inline void bench_slices_count(struct bench_slices *s, uint64_t bytes)
{
	s->cur.ops++;
	s->cur.bytes += bytes;
}
/* Closes the current slice at `now` and starts the next. */
void bench_slices_next(struct bench_slices *s, uint64_t now);
/* After a poll that reaped `reaped` completions (each counted with bench_slices_count): notes the
 * time of the last one and closes the current slice once it is long enough. Returns false once
 * nothing has completed for the stall time. */
static inline bool bench_slices_poll(struct bench_slices *s, uint32_t reaped)
{
	uint64_t now = rdtsc();
	if (!reaped)
		return now - s->last <= s->stall;
	s->last = now;
	if (now - s->cur.start >= s->ticks)
		bench_slices_next(s, now);
	return true;
}
/* TSC ticks since the start of the run up to the last completion. */
static inline uint64_t bench_slices_elapsed(const struct bench_slices *s) { return s->last - s->t0; }
/* At the end of the run: the last, shorter slice is closed unless the run stalled (its bytes count
 * either way), then every slice kept is printed as
 * PROBE-INFO <name>_slice_<i>=start_us=<since the start> us=<length> <unit>=<ops> bytes=<bytes>. */
void bench_slices_finish(struct bench_slices *s, bool stalled, const char *name, const char *unit);

#endif
