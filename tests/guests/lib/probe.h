/*
 * Shared library for flint's probe guests: freestanding 32-bit programs booted
 * through the PVH entry (see tests/guests/README.md and docs/platform.md).
 *
 * A probe defines `probe_name` and `probe_main()`; the library's entry stub
 * sets up a stack, GDT and exception handlers, prints `PROBE-START <name>`,
 * writes the boot marker, parses hvm_start_info and the command line, calls
 * probe_main(), then prints `PROBE-DONE pass=N fail=M` and leaves the machine
 * the way the `exit=` command-line key asks (default: i8042 reset).
 */
#ifndef PROBE_H
#define PROBE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io.h"

#define NORETURN __attribute__((noreturn))
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define PACKED __attribute__((packed))

/* ---- provided by each probe ---- */
extern const char probe_name[];
void probe_main(void);

/* ---- reporting (lib/probe.c) ---- */
/* `PROBE <check> ok` */
void probe_ok(const char *check);
/* `PROBE <check> FAIL <reason>` (reason printf-formatted; keep it on one line) */
void probe_fail(const char *check, const char *fmt, ...) PRINTF_LIKE(2, 3);
/* ok if cond, else FAIL with the formatted reason; returns cond */
bool probe_check(const char *check, bool cond, const char *fmt, ...) PRINTF_LIKE(3, 4);
/* `PROBE-INFO <key>=<value>` */
void probe_info(const char *key, const char *fmt, ...) PRINTF_LIKE(2, 3);
/* If the command line has `<key>=N`, check `actual == N` under `check`;
 * returns true if the key was present. */
bool probe_expect_u32(const char *check, const char *key, uint32_t actual);
uint32_t probe_pass_count(void);
/* True once PROBE-DONE has been printed (nothing but exit diagnostics may follow). */
bool probe_is_done(void);
uint32_t probe_fail_count(void);
/* `PROBE-DONE pass=N fail=M`, then exit as `exit=` says. */
NORETURN void probe_done(void);

/* ---- interrupt descriptor table (lib/probe.c) ---- */
/* A 32-bit interrupt gate, and the operand of lidt. */
struct idt_entry {
	uint16_t off_lo;
	uint16_t sel;
	uint8_t zero;
	uint8_t type;
	uint16_t off_hi;
} PACKED;
struct dtr {
	uint16_t limit;
	uint32_t base;
} PACKED;
/* The library's exception stubs for vectors 0..31 (lib/entry.S). */
extern const uint32_t exc_stub_table[32];
/* Gate `vector` of `idt`: a ring-0 32-bit interrupt gate to `handler` in the flat code segment. */
void idt_set_gate(struct idt_entry *idt, uint32_t vector, uint32_t handler);
/* Loads `idt` (`entries` gates) into the IDTR. The library installs one with the exception stubs
 * before probe_main; a probe that takes interrupts builds a larger one (nvme.c). */
void idt_load(const struct idt_entry *idt, uint32_t entries);

/* ---- machine exit (lib/probe.c) ---- */
NORETURN void machine_reset_i8042(void);   /* 0xFE to port 0x64 */
NORETURN void machine_poweroff(void);      /* FADT sleep control (or PM1a), SLP_TYP from _S5_ */
NORETURN void machine_acpi_reset(void);    /* FADT RESET_REG <- RESET_VALUE */
NORETURN void machine_triple_fault(void);  /* empty IDT + #DE */
NORETURN void machine_hang(void);          /* cli; hlt forever */
/* Runs the exit mode named (reset, poweroff, acpi-reset, triple-fault, hang). */
NORETURN void machine_exit(const char *mode);

/* ---- console (lib/serial.c, lib/printf.c) ---- */
void serial_init(void);
void serial_putc(char c);
void serial_write(const char *s, size_t n);
int printf(const char *fmt, ...) PRINTF_LIKE(1, 2);
int vprintf(const char *fmt, va_list ap);
int snprintf(char *buf, size_t n, const char *fmt, ...) PRINTF_LIKE(3, 4);
int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap);
/* Prints s with every byte that would break the line protocol replaced by '?',
 * at most max bytes (then "...(truncated)"). */
void print_sanitized(const char *s, size_t max);

/* ---- strings (lib/string.c) ---- */
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
const char *strstr_n(const char *hay, size_t hay_len, const char *needle);
/* Parses decimal, or hex with 0x; returns false on garbage or overflow. */
bool parse_u32(const char *s, size_t len, uint32_t *out);
/* 64-by-32 unsigned division without libgcc. */
uint64_t udiv64(uint64_t n, uint32_t d, uint32_t *rem);

/* ---- command line (lib/cmdline.c) ---- */
/* The whole command line ("" if none). */
extern const char *g_cmdline;
/* Finds `key=value` (or bare `key`, value "") among space-separated tokens.
 * Sets *val and *len to the value (not NUL terminated). The last occurrence wins. */
bool cmdline_find(const char *key, const char **val, size_t *len);
bool cmdline_get(const char *key, char *buf, size_t bufsz);
bool cmdline_get_u32(const char *key, uint32_t *out);
/* True if `key=value` is present with exactly that value. */
bool cmdline_is(const char *key, const char *value);

/* ---- PVH start info (lib/pvh.c) ---- */
#define HVM_START_MAGIC 0x336ec578u
struct hvm_start_info {
	uint32_t magic;
	uint32_t version;
	uint32_t flags;
	uint32_t nr_modules;
	uint64_t modlist_paddr;
	uint64_t cmdline_paddr;
	uint64_t rsdp_paddr;
	/* version >= 1 */
	uint64_t memmap_paddr;
	uint32_t memmap_entries;
	uint32_t reserved;
} PACKED;
struct hvm_memmap_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
	uint32_t reserved;
} PACKED;
#define E820_RAM 1
#define E820_RESERVED 2
#define E820_ACPI 3
#define E820_NVS 4
#define E820_UNUSABLE 5

extern uint32_t g_start_info_paddr;                 /* %ebx at entry */
extern const struct hvm_start_info *g_start_info;  /* NULL if the magic is wrong */
/* The memory map (NULL/0 if version < 1 or it lies above 4 GiB). */
extern const struct hvm_memmap_entry *g_memmap;
extern uint32_t g_memmap_entries;
/* True if [addr, addr+len) is entirely inside one RAM entry of the map. */
bool memmap_is_ram(uint64_t addr, uint64_t len);
/* Is a 64-bit physical range reachable from 32-bit code (below 4 GiB)? */
static inline bool phys_ok(uint64_t addr, uint64_t len) { return addr != 0 && addr + len <= 0x100000000ull && addr + len >= addr; }

/* ---- timing (lib/timer.c) ---- */
/* TSC frequency: CPUID 0x40000010 / 0x15, else PIT channel 2, else assumed 2 GHz.
 * Calibrated on first use; prints PROBE-INFO tsc_khz and tsc_source then. */
uint32_t tsc_khz(void);
uint64_t tsc_at_entry(void);
uint32_t ms_since_entry(void);
uint32_t tsc_to_ms(uint64_t ticks);
uint32_t tsc_to_us(uint64_t ticks);
void delay_us(uint32_t us);
void delay_ms(uint32_t ms);
/* deadline = now + ms; returns the TSC value to compare with rdtsc() */
uint64_t deadline_ms(uint32_t ms);
static inline bool deadline_passed(uint64_t dl) { return rdtsc() >= dl; }

/* ---- ACPI (lib/acpi.c) ---- */
struct acpi_rsdp {
	char signature[8];
	uint8_t checksum;
	char oem_id[6];
	uint8_t revision;
	uint32_t rsdt_address;
	uint32_t length;
	uint64_t xsdt_address;
	uint8_t ext_checksum;
	uint8_t reserved[3];
} PACKED;
struct acpi_header {
	char signature[4];
	uint32_t length;
	uint8_t revision;
	uint8_t checksum;
	char oem_id[6];
	char oem_table_id[8];
	uint32_t oem_revision;
	uint32_t creator_id;
	uint32_t creator_revision;
} PACKED;
struct acpi_gas {
	uint8_t space_id;     /* 0 = system memory, 1 = system I/O */
	uint8_t bit_width;
	uint8_t bit_offset;
	uint8_t access_size;  /* 0 undefined, 1 byte, 2 word, 3 dword, 4 qword */
	uint64_t address;
} PACKED;
#define ACPI_GAS_MEMORY 0
#define ACPI_GAS_IO 1
struct acpi_fadt {
	struct acpi_header h;        /* 0 */
	uint32_t firmware_ctrl;      /* 36 */
	uint32_t dsdt;               /* 40 */
	uint8_t reserved0;           /* 44 */
	uint8_t preferred_pm_profile;
	uint16_t sci_int;            /* 46 */
	uint32_t smi_cmd;            /* 48 */
	uint8_t acpi_enable, acpi_disable, s4bios_req, pstate_cnt; /* 52 */
	uint32_t pm1a_evt_blk, pm1b_evt_blk, pm1a_cnt_blk, pm1b_cnt_blk; /* 56 */
	uint32_t pm2_cnt_blk, pm_tmr_blk, gpe0_blk, gpe1_blk;             /* 72 */
	uint8_t pm1_evt_len, pm1_cnt_len, pm2_cnt_len, pm_tmr_len;        /* 88 */
	uint8_t gpe0_blk_len, gpe1_blk_len, gpe1_base, cst_cnt;           /* 92 */
	uint16_t p_lvl2_lat, p_lvl3_lat;                                  /* 96 */
	uint16_t flush_size, flush_stride;                                /* 100 */
	uint8_t duty_offset, duty_width, day_alrm, mon_alrm;              /* 104 */
	uint8_t century;                                                  /* 108 */
	uint16_t iapc_boot_arch;                                          /* 109 */
	uint8_t reserved1;                                                /* 111 */
	uint32_t flags;                                                   /* 112 */
	struct acpi_gas reset_reg;                                        /* 116 */
	uint8_t reset_value;                                              /* 128 */
	uint16_t arm_boot_arch;                                           /* 129 */
	uint8_t minor_version;                                            /* 131 */
	uint64_t x_firmware_ctrl;                                         /* 132 */
	uint64_t x_dsdt;                                                  /* 140 */
	struct acpi_gas x_pm1a_evt_blk, x_pm1b_evt_blk, x_pm1a_cnt_blk, x_pm1b_cnt_blk; /* 148 */
	struct acpi_gas x_pm2_cnt_blk, x_pm_tmr_blk, x_gpe0_blk, x_gpe1_blk;             /* 196 */
	struct acpi_gas sleep_control_reg;                                /* 244 */
	struct acpi_gas sleep_status_reg;                                 /* 256 */
	uint64_t hypervisor_vendor_id;                                    /* 268 */
} PACKED;
#define FADT_F_RESET_REG_SUP (1u << 10)
#define FADT_F_HW_REDUCED_ACPI (1u << 20)
/* Byte offset just past a FADT field: the table must be at least this long for the field to exist. */
#define FADT_HAS(fadt, field) ((fadt)->h.length >= offsetof(struct acpi_fadt, field) + sizeof((fadt)->field))

struct acpi_madt {
	struct acpi_header h;
	uint32_t lapic_address;
	uint32_t flags;
} PACKED;
struct acpi_subtable {
	uint8_t type;
	uint8_t length;
} PACKED;
#define MADT_LAPIC 0
#define MADT_IOAPIC 1
#define MADT_ISO 2
#define MADT_X2APIC 9
struct madt_lapic {
	struct acpi_subtable st;
	uint8_t uid;
	uint8_t apic_id;
	uint32_t flags; /* bit 0 enabled, bit 1 online capable */
} PACKED;
struct madt_ioapic {
	struct acpi_subtable st;
	uint8_t id;
	uint8_t reserved;
	uint32_t address;
	uint32_t gsi_base;
} PACKED;
struct madt_iso {
	struct acpi_subtable st;
	uint8_t bus;
	uint8_t source;
	uint32_t gsi;
	uint16_t flags;
} PACKED;
struct madt_x2apic {
	struct acpi_subtable st;
	uint16_t reserved;
	uint32_t x2apic_id;
	uint32_t flags;
	uint32_t uid;
} PACKED;

/* Sum of all bytes mod 256 (0 for a valid table). */
uint8_t acpi_sum(const void *p, size_t len);
/* The RSDP from hvm_start_info (NULL if absent/invalid signature; checksums are NOT verified). */
const struct acpi_rsdp *acpi_rsdp(void);
/* Root table (XSDT if revision >= 2 and present, else RSDT); NULL if unusable. */
const struct acpi_header *acpi_root(bool *is_xsdt);
uint32_t acpi_root_count(const struct acpi_header *root, bool is_xsdt);
/* Physical address of entry i (may be >= 4 GiB: check with phys_ok). */
uint64_t acpi_root_entry(const struct acpi_header *root, bool is_xsdt, uint32_t i);
/* Table with the given signature (n-th match, 0-based), or NULL. Checks nothing but the signature and reachability. */
const struct acpi_header *acpi_find(const char sig[4], uint32_t n);
/* The DSDT via the FADT (X_DSDT if set, else DSDT). */
const struct acpi_header *acpi_dsdt(const struct acpi_fadt *fadt);
/* SLP_TYPa of the DSDT's \_S5_ package; false if not found. */
bool acpi_s5_slp_typ(const struct acpi_header *dsdt, uint8_t *slp_typ);
/* Writes val to a Generic Address Structure register (memory or I/O space). */
bool acpi_gas_write(const struct acpi_gas *g, uint32_t val);
uint32_t acpi_gas_read(const struct acpi_gas *g);
static inline bool acpi_gas_present(const struct acpi_gas *g) { return g->address != 0; }
/* Iterate MADT subtables: pass NULL to get the first; returns NULL at the end or on a malformed entry. */
const struct acpi_subtable *madt_next(const struct acpi_madt *madt, const struct acpi_subtable *prev);

/* Enabled local APIC IDs from the MADT (types 0 and 9), in table order. */
struct madt_cpus {
	uint32_t count;
	uint32_t ids[256];
	bool malformed;
};
void madt_cpus(const struct acpi_madt *madt, struct madt_cpus *out);

/* ---- local APIC, xAPIC mode (lib/apic.c) ---- */
#define LAPIC_BASE 0xFEE00000u
#define LAPIC_ID 0x20
#define LAPIC_VERSION 0x30
#define LAPIC_SVR 0xF0
#define LAPIC_ESR 0x280
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define ICR_DELIVERY_PENDING (1u << 12)
static inline uint32_t lapic_read(uint32_t reg) { return mmio_read32(LAPIC_BASE + reg); }
static inline void lapic_write(uint32_t reg, uint32_t v) { mmio_write32(LAPIC_BASE + reg, v); }
/* Sends an IPI (ICR_HI then ICR_LO), then waits (bounded) for the delivery status to clear. */
bool lapic_send_ipi(uint32_t dest_apic_id, uint32_t icr_lo);
/* Current CPU's APIC ID from CPUID leaf 1 EBX[31:24]. */
static inline uint32_t cpuid_apic_id(void)
{
	uint32_t b;
	cpuid(1, 0, &b, 0, 0);
	return b >> 24;
}

#endif
