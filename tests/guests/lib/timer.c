/*
 * TSC-based delays and timeouts. The frequency need not be exact: every wait in
 * the probes is a generous bound, never a measurement that must be precise.
 */
#include "probe.h"

extern uint64_t entry_tsc;  /* lib/entry.S */

static uint32_t g_tsc_khz;
static const char *g_tsc_source;

#define ASSUMED_TSC_KHZ 2000000u

/* PIT channel 2, mode 0, one-shot of ~10 ms, polled through port 0x61 bit 5. */
static const char *g_pit_error;

/* PIT channel 2 gated through port 0x61 (needs the speaker port), one-shot of ~10 ms. */
static uint32_t pit_ch2_calibrate(void)
{
	const uint32_t count = 11932; /* 1193182 Hz * 10 ms */
	uint8_t p61 = inb(0x61);
	if (p61 == 0xFF) {
		g_pit_error = "port 0x61 reads 0xff";
		return 0;
	}
	outb(0x61, (uint8_t)((p61 & ~0x02) | 0x01)); /* speaker off, gate 2 on */
	outb(0x43, 0xB0);                       /* ch2, lo/hi byte, mode 0, binary */
	outb(0x42, count & 0xFF);
	outb(0x42, count >> 8);
	if (inb(0x61) & 0x20) {
		g_pit_error = "OUT2 high right after programming";
		return 0;
	}
	uint64_t t0 = rdtsc();
	uint32_t polls = 0;
	/* bounded both in polls and in TSC ticks (200M ticks: > 10 ms even at 20 GHz) */
	while (!(inb(0x61) & 0x20)) {
		if (++polls > 200000 || rdtsc() - t0 > 200000000ull) {
			outb(0x61, p61);
			g_pit_error = "OUT2 never went high";
			return 0;
		}
	}
	uint64_t t1 = rdtsc();
	outb(0x61, p61);
	if (polls < 2) {
		g_pit_error = "OUT2 went high at once";
		return 0;
	}
	return (uint32_t)udiv64(t1 - t0, 10, NULL);
}

static uint16_t pit_ch0_read(void)
{
	outb(0x43, 0x00); /* latch channel 0 */
	uint8_t lo = inb(0x40);
	uint8_t hi = inb(0x40);
	return (uint16_t)(lo | hi << 8);
}

/* PIT channel 0 (no speaker port needed): mode 0 from 0xFFFF, read back latched counts
 * until ~10 ms have gone. Interrupts are off, so the IRQ0 edge at terminal count is harmless. */
static uint32_t pit_ch0_calibrate(void)
{
	const uint32_t want = 11932; /* 10 ms */
	outb(0x43, 0x30);            /* ch0, lo/hi byte, mode 0, binary */
	outb(0x40, 0xFF);
	outb(0x40, 0xFF);
	uint16_t c0 = pit_ch0_read();
	uint64_t t0 = rdtsc();
	uint32_t polls = 0;
	for (;;) {
		uint16_t c = pit_ch0_read();
		uint32_t gone = (uint16_t)(c0 - c);
		if (gone >= want && gone < 0x8000) {
			uint64_t t1 = rdtsc();
			if (polls < 2) {
				g_pit_error = "channel 0 counted 10 ms at once";
				return 0;
			}
			/* ticks per PIT count * 1193.182 = kHz */
			return (uint32_t)udiv64((t1 - t0) * 1193182ull, gone * 1000u, NULL);
		}
		if (++polls > 100000 || rdtsc() - t0 > 200000000ull) {
			g_pit_error = c == 0xFFFF ? "channel 0 reads 0xffff" : "channel 0 does not count";
			return 0;
		}
	}
}

/* KVM paravirtual clock: the hypervisor publishes tsc_to_system_mul/tsc_shift. */
struct pvclock {
	uint32_t version;
	uint32_t pad0;
	uint64_t tsc_timestamp;
	uint64_t system_time;
	uint32_t tsc_to_system_mul;
	int8_t tsc_shift;
	uint8_t flags;
	uint8_t pad[2];
} PACKED;
static struct pvclock g_pvclock __attribute__((aligned(64)));

static uint32_t kvmclock_khz(void)
{
	uint32_t a, b, c, d;
	cpuid(1, 0, 0, &c, 0);
	if (!(c & (1u << 31)))
		return 0;
	cpuid(0x40000000, &a, &b, &c, &d);
	if (b != 0x4b4d564b || c != 0x564b4d56 || d != 0x4d || a < 0x40000001) /* "KVMKVMKVM\0\0\0" */
		return 0;
	cpuid(0x40000001, &a, 0, 0, 0);
	uint32_t msr;
	if (a & (1u << 3))
		msr = 0x4b564d01; /* MSR_KVM_SYSTEM_TIME_NEW */
	else if (a & (1u << 0))
		msr = 0x12;       /* MSR_KVM_SYSTEM_TIME */
	else
		return 0;
	g_pvclock.tsc_to_system_mul = 0;
	wrmsr(msr, (uint32_t)(uintptr_t)&g_pvclock | 1);
	uint32_t mul = 0;
	int8_t shift = 0;
	for (int i = 0; i < 1000 && !mul; i++) {
		uint32_t v = g_pvclock.version;
		barrier();
		mul = g_pvclock.tsc_to_system_mul;
		shift = g_pvclock.tsc_shift;
		barrier();
		if ((v & 1) || v != g_pvclock.version)
			mul = 0;
	}
	wrmsr(msr, 0); /* stop the updates */
	if (!mul)
		return 0;
	/* ns = ((tsc << shift) * mul) >> 32  =>  kHz = 10^6 * 2^32 / mul / 2^shift */
	uint64_t khz = udiv64(1000000ull << 32, mul, NULL);
	if (shift > 0)
		khz >>= shift;
	else if (shift < 0)
		khz <<= -shift;
	return khz > 0xFFFFFFFFull ? 0 : (uint32_t)khz;
}

static bool plausible(uint32_t khz) { return khz >= 100000 && khz <= 20000000; } /* 100 MHz .. 20 GHz */

static uint32_t cpuid_hv_khz(void)
{
	/* Hypervisor timing leaf (KVM/VMware convention): EAX = TSC kHz. */
	uint32_t a, c;
	cpuid(1, 0, 0, &c, 0);
	if (!(c & (1u << 31)))
		return 0;
	cpuid(0x40000000, &a, 0, 0, 0);
	if (a < 0x40000010 || a >= 0x40000100)
		return 0;
	cpuid(0x40000010, &a, 0, 0, 0);
	return a;
}

static uint32_t cpuid_15_khz(void)
{
	uint32_t a, b, c, d;
	cpuid(0, &a, 0, 0, 0);
	if (a < 0x15)
		return 0;
	cpuid(0x15, &a, &b, &c, &d);
	if (!a || !b || !c)
		return 0;
	uint64_t hz = udiv64((uint64_t)c * b, a, NULL);
	return (uint32_t)udiv64(hz, 1000, NULL);
}

static const struct {
	const char *name;
	uint32_t (*fn)(void);
} g_methods[] = {
	{ "cpuid-0x40000010", cpuid_hv_khz },
	{ "cpuid-0x15", cpuid_15_khz },
	{ "kvmclock", kvmclock_khz },
	{ "pit-ch2", pit_ch2_calibrate },
	{ "pit-ch0", pit_ch0_calibrate },
};

/* Tries the methods in order; `tsc=<method>` on the command line tries only that one. */
uint32_t tsc_khz(void)
{
	if (g_tsc_khz)
		return g_tsc_khz;
	char only[24] = "";
	cmdline_get("tsc", only, sizeof(only));
	for (uint32_t i = 0; i < ARRAY_SIZE(g_methods) && !g_tsc_khz; i++) {
		if (only[0] && strcmp(only, g_methods[i].name) != 0)
			continue;
		uint32_t khz = g_methods[i].fn();
		if (plausible(khz)) {
			g_tsc_khz = khz;
			g_tsc_source = g_methods[i].name;
		}
	}
	if (!g_tsc_khz) {
		if (g_pit_error && !probe_is_done())
			probe_info("tsc_pit_error", "%s", g_pit_error);
		g_tsc_khz = ASSUMED_TSC_KHZ;
		g_tsc_source = "assumed";
	}
	if (!probe_is_done()) {
		probe_info("tsc_khz", "%u", g_tsc_khz);
		probe_info("tsc_source", "%s", g_tsc_source);
	}
	return g_tsc_khz;
}

uint64_t tsc_at_entry(void) { return entry_tsc; }

uint32_t tsc_to_ms(uint64_t ticks) { return (uint32_t)udiv64(ticks, tsc_khz(), NULL); }

uint32_t tsc_to_us(uint64_t ticks)
{
	/* ticks * 1000 / khz, without overflowing for ticks < 2^54 */
	return (uint32_t)udiv64(ticks * 1000, tsc_khz(), NULL);
}

uint32_t ms_since_entry(void) { return tsc_to_ms(rdtsc() - entry_tsc); }

uint64_t deadline_ms(uint32_t ms) { return rdtsc() + (uint64_t)ms * tsc_khz(); }

void delay_us(uint32_t us)
{
	uint64_t end = rdtsc() + udiv64((uint64_t)us * tsc_khz(), 1000, NULL);
	while (rdtsc() < end)
		cpu_relax();
}

void delay_ms(uint32_t ms)
{
	uint64_t end = deadline_ms(ms);
	while (rdtsc() < end)
		cpu_relax();
}
