/* Probe runtime: entry, reporting protocol, exception handler, machine exit. */
#include "probe.h"

void pvh_init(uint32_t ebx);
void lib_entry(uint32_t ebx);

static uint32_t g_pass, g_fail;
static bool g_done;

#define BOOT_MARKER_ADDR 0xF0000000u
#define BOOT_MARKER_VALUE 123

/* ---------------- IDT and exceptions ---------------- */
struct exc_frame {
	uint32_t edi, esi, ebp, esp, ebx, edx, ecx, eax; /* pushal */
	uint32_t vector, error;
	uint32_t eip, cs, eflags;
} PACKED;

static struct idt_entry g_idt[32];
static volatile uint32_t g_in_exception;

void idt_set_gate(struct idt_entry *idt, uint32_t vector, uint32_t handler)
{
	idt[vector].off_lo = (uint16_t)handler;
	idt[vector].sel = 0x08;
	idt[vector].zero = 0;
	idt[vector].type = 0x8E; /* present, DPL0, 32-bit interrupt gate */
	idt[vector].off_hi = (uint16_t)(handler >> 16);
}

void idt_load(const struct idt_entry *idt, uint32_t entries)
{
	struct dtr d = { (uint16_t)(entries * sizeof(*idt) - 1), (uint32_t)(uintptr_t)idt };
	__asm__ volatile("lidt %0" : : "m"(d) : "memory");
}

static void idt_init(void)
{
	for (uint32_t i = 0; i < 32; i++)
		idt_set_gate(g_idt, i, exc_stub_table[i]);
	idt_load(g_idt, ARRAY_SIZE(g_idt));
}

void exception_handler(struct exc_frame *f);
void exception_handler(struct exc_frame *f)
{
	if (g_in_exception++)
		machine_triple_fault(); /* fault while reporting a fault: give up loudly */
	uint32_t cr2;
	__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
	probe_fail("exception", "vector=%u error=0x%x eip=0x%x cr2=0x%x eax=0x%x ebx=0x%x ecx=0x%x edx=0x%x",
		   f->vector, f->error, f->eip, cr2, f->eax, f->ebx, f->ecx, f->edx);
	probe_done();
}

/* ---------------- entry ---------------- */
void lib_entry(uint32_t ebx)
{
	serial_init();
	printf("PROBE-START %s\n", probe_name);
	mmio_write8(BOOT_MARKER_ADDR, BOOT_MARKER_VALUE);
	idt_init();
	pvh_init(ebx);
	probe_main();
	probe_done();
}

/* ---------------- reporting ---------------- */
void probe_ok(const char *check)
{
	g_pass++;
	printf("PROBE %s ok\n", check);
}

static void vfail(const char *check, const char *fmt, va_list ap)
{
	g_fail++;
	printf("PROBE %s FAIL ", check);
	char buf[512];
	vsnprintf(buf, sizeof(buf), fmt, ap);
	if (!buf[0])
		snprintf(buf, sizeof(buf), "failed");
	print_sanitized(buf, sizeof(buf));
	printf("\n");
}

void probe_fail(const char *check, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfail(check, fmt, ap);
	va_end(ap);
}

bool probe_check(const char *check, bool cond, const char *fmt, ...)
{
	if (cond) {
		probe_ok(check);
	} else {
		va_list ap;
		va_start(ap, fmt);
		vfail(check, fmt, ap);
		va_end(ap);
	}
	return cond;
}

void probe_info(const char *key, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	printf("PROBE-INFO %s=", key);
	print_sanitized(buf, sizeof(buf));
	printf("\n");
}

bool probe_expect_u32(const char *check, const char *key, uint32_t actual)
{
	const char *v;
	size_t n;
	if (!cmdline_find(key, &v, &n))
		return false;
	uint32_t want;
	if (!parse_u32(v, n, &want)) {
		probe_fail(check, "cannot parse %s=%.*s", key, (int)n, v);
		return true;
	}
	probe_check(check, actual == want, "got %u, expected %u", actual, want);
	return true;
}

bool probe_is_done(void) { return g_done; }
uint32_t probe_pass_count(void) { return g_pass; }
uint32_t probe_fail_count(void) { return g_fail; }

void probe_done(void)
{
	char mode[32] = "reset";
	cmdline_get("exit", mode, sizeof(mode));
	if (strcmp(mode, "reset") && strcmp(mode, "poweroff") && strcmp(mode, "acpi-reset") &&
	    strcmp(mode, "triple-fault") && strcmp(mode, "hang")) {
		probe_info("exit_unknown", "%s", mode);
		snprintf(mode, sizeof(mode), "reset");
	}
	probe_info("exit", "%s", mode);
	g_done = true;
	printf("PROBE-DONE pass=%u fail=%u\n", g_pass, g_fail);
	machine_exit(mode);
}

/* ---------------- machine exit ---------------- */
/* After an exit action: if we are still running, say so (bounded wait), then hang. */
static NORETURN void exit_failed(const char *mode, const char *why)
{
	delay_ms(2000);
	printf("PROBE-EXIT-FAILED %s %s\n", mode, why);
	machine_hang();
}

void machine_hang(void)
{
	for (;;) {
		cli();
		hlt();
	}
}

void machine_reset_i8042(void)
{
	outb(0x64, 0xFE);
	exit_failed("reset", "still running after 0xFE to port 0x64");
}

static const struct acpi_fadt *fadt_or_null(void)
{
	const struct acpi_header *h = acpi_find("FACP", 0);
	if (!h || h->length < offsetof(struct acpi_fadt, flags) + 4)
		return NULL;
	return (const struct acpi_fadt *)h;
}

void machine_poweroff(void)
{
	const struct acpi_fadt *fadt = fadt_or_null();
	if (!fadt)
		exit_failed("poweroff", "no FADT");
	uint8_t slp_typ = 5;
	const struct acpi_header *dsdt = acpi_dsdt(fadt);
	if (!dsdt || !acpi_s5_slp_typ(dsdt, &slp_typ))
		slp_typ = 5; /* the platform's documented S5 value */
	if (FADT_HAS(fadt, sleep_control_reg) && acpi_gas_present(&fadt->sleep_control_reg)) {
		/* hardware-reduced sleep control register: SLP_TYP bits 2-4, SLP_EN bit 5 */
		if (!acpi_gas_write(&fadt->sleep_control_reg, (uint32_t)((slp_typ & 7) << 2) | (1u << 5)))
			exit_failed("poweroff", "unusable sleep control register");
	} else if (fadt->pm1a_cnt_blk) {
		/* legacy PM1a control block: SLP_TYP bits 10-12, SLP_EN bit 13 */
		uint16_t port = (uint16_t)fadt->pm1a_cnt_blk;
		outw(port, (uint16_t)((inw(port) & ~0x3C00u) | ((uint32_t)(slp_typ & 7) << 10) | (1u << 13)));
	} else {
		exit_failed("poweroff", "FADT has neither sleep control register nor PM1a_CNT_BLK");
	}
	exit_failed("poweroff", "still running after S5 request");
}

void machine_acpi_reset(void)
{
	const struct acpi_fadt *fadt = fadt_or_null();
	if (!fadt || !FADT_HAS(fadt, reset_value))
		exit_failed("acpi-reset", "no FADT reset register");
	if (!acpi_gas_present(&fadt->reset_reg))
		exit_failed("acpi-reset", "FADT RESET_REG address is 0");
	if (!acpi_gas_write(&fadt->reset_reg, fadt->reset_value))
		exit_failed("acpi-reset", "unusable RESET_REG address space");
	exit_failed("acpi-reset", "still running after RESET_REG write");
}

void machine_triple_fault(void)
{
	struct dtr d = { 0, 0 };
	__asm__ volatile("lidt %0" : : "m"(d));
	/* #DE with no IDT -> #GP -> #DF -> shutdown (triple fault). No int3/ud2:
	 * a divide error is something every x86 emulator implements. */
	volatile uint32_t zero = 0;
	uint32_t q = 1, r = 0;
	__asm__ volatile("divl %2" : "+a"(q), "+d"(r) : "r"(zero));
	exit_failed("triple-fault", "still running after #DE with an empty IDT");
}

void machine_exit(const char *mode)
{
	if (strcmp(mode, "poweroff") == 0)
		machine_poweroff();
	if (strcmp(mode, "acpi-reset") == 0)
		machine_acpi_reset();
	if (strcmp(mode, "triple-fault") == 0)
		machine_triple_fault();
	if (strcmp(mode, "hang") == 0)
		machine_hang();
	machine_reset_i8042(); /* "reset" and anything unknown */
}
