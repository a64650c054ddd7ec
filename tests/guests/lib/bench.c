/* Benchmark helpers (see bench.h). */
#include "bench.h"

uint32_t g_bench_rng = 0x12345678u;

void bench_slices_start(struct bench_slices *s, struct bench_slice *log, uint32_t max, uint32_t slice_ms)
{
	uint64_t khz = tsc_khz();
	s->log = log;
	s->max = max;
	s->ticks = khz * slice_ms;
	s->stall = khz * 5000u;
	s->t0 = s->last = rdtsc();
	s->cur = (struct bench_slice){ s->t0, 0, 0, 0 };
	s->n = 0;
	s->bytes = 0;
}

static void close_slice(struct bench_slices *s, uint64_t end)
{
	s->cur.end = end;
	if (s->n < s->max)
		s->log[s->n] = s->cur;
	s->n++;
}

void bench_slices_next(struct bench_slices *s, uint64_t now)
{
	close_slice(s, now);
	s->bytes += s->cur.bytes;
	s->cur = (struct bench_slice){ now, 0, 0, 0 };
}

void bench_slices_finish(struct bench_slices *s, bool stalled, const char *name, const char *unit)
{
	if (!stalled && s->cur.ops)
		close_slice(s, s->last);
	s->bytes += s->cur.bytes;
	uint64_t khz = tsc_khz();
	uint32_t shown = s->n < s->max ? s->n : s->max;
	for (uint32_t i = 0; i < shown; i++) {
		const struct bench_slice *sl = &s->log[i];
		char key[48];
		snprintf(key, sizeof(key), "%s_slice_%u", name, i);
		probe_info(key, "start_us=%llu us=%u %s=%u bytes=%llu",
			   udiv64((sl->start - s->t0) * 1000u, (uint32_t)khz, NULL),
			   tsc_to_us(sl->end - sl->start), unit, sl->ops, sl->bytes);
	}
}
