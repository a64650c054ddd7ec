/* Port I/O, MMIO, CPUID, TSC and MSR helpers (32-bit protected mode, flat segments). */
#ifndef PROBE_IO_H
#define PROBE_IO_H

#include <stdint.h>

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline uint16_t inw(uint16_t port)
{
	uint16_t v;
	__asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline uint32_t inl(uint16_t port)
{
	uint32_t v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

/* MMIO: physical == virtual (paging off). Addresses must be below 4 GiB. */
static inline uint8_t mmio_read8(uintptr_t a) { return *(volatile uint8_t *)a; }
static inline uint16_t mmio_read16(uintptr_t a) { return *(volatile uint16_t *)a; }
static inline uint32_t mmio_read32(uintptr_t a) { return *(volatile uint32_t *)a; }
static inline uint64_t mmio_read64(uintptr_t a)
{
	/* two 32-bit accesses, low first (no 64-bit loads in 32-bit mode without SSE) */
	uint32_t lo = mmio_read32(a), hi = mmio_read32(a + 4);
	return ((uint64_t)hi << 32) | lo;
}
static inline void mmio_write8(uintptr_t a, uint8_t v) { *(volatile uint8_t *)a = v; }
static inline void mmio_write16(uintptr_t a, uint16_t v) { *(volatile uint16_t *)a = v; }
static inline void mmio_write32(uintptr_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline void mmio_write64(uintptr_t a, uint64_t v)
{
	mmio_write32(a, (uint32_t)v);
	mmio_write32(a + 4, (uint32_t)(v >> 32));
}

/* Compiler barrier; x86 is strongly ordered for ordinary memory, and locked
 * instructions are full barriers. */
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
/* Full fence without SSE2's mfence: a locked no-op on the stack. */
static inline void mb(void) { __asm__ volatile("lock addl $0, (%%esp)" ::: "memory", "cc"); }

static inline void cpuid_count(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
	uint32_t ra, rb, rc, rd;
	__asm__ volatile("cpuid" : "=a"(ra), "=b"(rb), "=c"(rc), "=d"(rd) : "a"(leaf), "c"(sub));
	if (a) *a = ra;
	if (b) *b = rb;
	if (c) *c = rc;
	if (d) *d = rd;
}
static inline void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
	cpuid_count(leaf, 0, a, b, c, d);
}

static inline uint64_t rdtsc(void)
{
	uint64_t v;
	__asm__ volatile("rdtsc" : "=A"(v));
	return v;
}
static inline uint64_t rdmsr(uint32_t msr)
{
	uint64_t v;
	__asm__ volatile("rdmsr" : "=A"(v) : "c"(msr));
	return v;
}
static inline void wrmsr(uint32_t msr, uint64_t v) { __asm__ volatile("wrmsr" : : "c"(msr), "A"(v)); }

/* No `pause`: every ring-0 instruction goes through KVM's emulator on PVM hosts;
 * keep to the plainest instructions. */
static inline void cpu_relax(void) { barrier(); }
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void hlt(void) { __asm__ volatile("hlt" ::: "memory"); }

/* Atomics (locked integer instructions only; no cmpxchg8b/16b). */
static inline uint32_t atomic_xadd32(volatile uint32_t *p, uint32_t v)
{
	__asm__ volatile("lock xaddl %0, %1" : "+r"(v), "+m"(*p) : : "memory", "cc");
	return v;
}
static inline void atomic_inc32(volatile uint32_t *p) { __asm__ volatile("lock incl %0" : "+m"(*p) : : "memory", "cc"); }

#endif
