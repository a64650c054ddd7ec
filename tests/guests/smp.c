/*
 * SMP probe: start every AP the MADT lists with INIT-SIPI-SIPI through the
 * xAPIC, and check that each APIC ID 0..N-1 checks in exactly once.
 *
 * Command-line keys: expect_cpus=N, smp_start=broadcast|each (default
 * broadcast: all-excluding-self shorthand), smp_timeout_ms=N (default
 * 10000 + 250 per CPU, at most 30000), exit=... (see the boot probe).
 */
#include "probe.h"
#include "ap_start.h"

const char probe_name[] = "smp";

/* filled in by the APs (smp_ap.S) */
volatile uint32_t smp_checkin[256];
volatile uint32_t smp_ap_count;
volatile uint32_t smp_order[256];

static struct madt_cpus g_cpus;

static void send(const char *what, uint32_t dest, uint32_t icr, uint32_t *bad)
{
	if (!lapic_send_ipi(dest, icr) && (*bad)++ == 0)
		probe_info("ipi_pending", "%s to %u: ICR delivery status still pending", what, dest);
}

void probe_main(void)
{
	const struct acpi_madt *madt = (const struct acpi_madt *)acpi_find("APIC", 0);
	if (!probe_check("acpi_madt", madt != NULL, "no MADT (is rsdp_paddr set?)"))
		return;
	madt_cpus(madt, &g_cpus);
	uint32_t n_madt = g_cpus.count;
	probe_info("cpus_madt", "%u", n_madt);
	if (!probe_check("cpus_madt_range", n_madt >= 1 && n_madt <= 255, "%u enabled local APICs", n_madt))
		return;

	uint32_t a, b, c, d;
	cpuid(1, &a, &b, &c, &d);
	uint32_t bsp_id = b >> 24;
	probe_check("cpuid_apic", d & (1u << 9), "CPUID.1:EDX.APIC clear");
	uint64_t apic_base = rdmsr(0x1B);
	probe_info("apic_base_msr", "0x%llx", apic_base);
	probe_check("apic_base", (apic_base & ~0xFFFull) == LAPIC_BASE && (apic_base & (1u << 11)) &&
				    (apic_base & (1u << 8)),
		    "IA32_APIC_BASE 0x%llx: want base 0xfee00000, enabled, BSP", apic_base);
	probe_check("acpi_madt_lapic_addr", madt->lapic_address == LAPIC_BASE, "MADT local APIC address 0x%x",
		    madt->lapic_address);
	uint32_t lapic_id = lapic_read(LAPIC_ID) >> 24;
	probe_info("lapic_version", "0x%x", lapic_read(LAPIC_VERSION));
	probe_check("bsp_apic_id", lapic_id == bsp_id && bsp_id == 0,
		    "LAPIC ID register %u, CPUID.1 APIC ID %u (BSP should be 0)", lapic_id, bsp_id);

	/* software-enable the local APIC (spurious vector 0xFF) */
	lapic_write(LAPIC_SVR, 0x1FF);

	/* trampoline at 0x10000 */
	if (g_memmap && !memmap_is_ram(AP_TRAMPOLINE_BASE, ap_trampoline_size()))
		probe_info("tramp_warning", "0x%x is not RAM in the memory map", AP_TRAMPOLINE_BASE);
	ap_trampoline_install();

	/* The BSP checks itself in. */
	smp_checkin[bsp_id & 0xff]++;

	bool each = cmdline_is("smp_start", "each");
	uint32_t timeout_ms = 10000 + 250 * n_madt;
	if (timeout_ms > 30000)
		timeout_ms = 30000;
	cmdline_get_u32("smp_timeout_ms", &timeout_ms);
	uint32_t expect = n_madt, want;
	if (cmdline_get_u32("expect_cpus", &want) && want > expect)
		expect = want;
	probe_info("smp_start", "%s", each ? "each" : "broadcast");
	probe_info("smp_timeout_ms", "%u", timeout_ms);
	(void)tsc_khz(); /* calibrate before timing anything */

	uint64_t t0 = rdtsc();
	uint32_t bad = 0;
	if (each) {
		for (uint32_t i = 0; i < n_madt; i++)
			if (g_cpus.ids[i] != bsp_id)
				send("INIT", g_cpus.ids[i], ICR_INIT | ICR_LEVEL_ASSERT, &bad);
		delay_ms(10);
		for (int k = 0; k < 2; k++) {
			for (uint32_t i = 0; i < n_madt; i++)
				if (g_cpus.ids[i] != bsp_id)
					send("SIPI", g_cpus.ids[i], ICR_STARTUP | AP_SIPI_VECTOR, &bad);
			delay_us(200);
		}
	} else {
		send("INIT", 0, ICR_ALL_BUT_SELF | ICR_INIT | ICR_LEVEL_ASSERT, &bad);
		delay_ms(10);
		send("SIPI", 0, ICR_ALL_BUT_SELF | ICR_STARTUP | AP_SIPI_VECTOR, &bad);
		delay_us(200);
		send("SIPI", 0, ICR_ALL_BUT_SELF | ICR_STARTUP | AP_SIPI_VECTOR, &bad);
	}
	uint64_t t_sent = rdtsc();
	probe_check("ipi_delivery", bad == 0, "%u IPIs left the ICR delivery status pending", bad);

	/* wait for every AP (bounded) */
	uint64_t dl = t0 + (uint64_t)timeout_ms * tsc_khz();
	uint64_t t_all = 0;
	while (!deadline_passed(dl)) {
		if (smp_ap_count + 1 >= expect) {
			t_all = rdtsc();
			break;
		}
		cpu_relax();
	}
	/* settle: catch an AP that would check in twice or a CPU the MADT does not list */
	delay_ms(100);
	mb();

	uint32_t started = smp_ap_count + 1;
	probe_info("cpus_started", "%u", started);
	probe_info("smp_ipi_ms", "%u", tsc_to_ms(t_sent - t0));
	if (t_all)
		probe_info("smp_start_ms", "%u", tsc_to_ms(t_all - t0));
	else
		probe_info("smp_start_ms", "timeout after %u", timeout_ms);
	probe_info("smp_order", "%u %u %u %u ...", smp_order[0], smp_order[1], smp_order[2], smp_order[3]);

	probe_expect_u32("cpus_started", "expect_cpus", started);
	probe_check("cpus_started_madt", started == n_madt, "%u CPUs started, MADT lists %u", started, n_madt);

	/* each APIC ID 0..N-1 exactly once, nothing else */
	uint32_t missing = 0, dup = 0, extra = 0, first_missing = 0, first_dup = 0, first_extra = 0;
	for (uint32_t id = 0; id < 256; id++) {
		uint32_t v = smp_checkin[id];
		if (id < n_madt) {
			if (v == 0 && missing++ == 0)
				first_missing = id;
			if (v > 1 && dup++ == 0)
				first_dup = id;
		} else if (v && extra++ == 0) {
			first_extra = id;
		}
	}
	probe_check("ap_checkin", !missing && !dup && !extra,
		    "missing %u (first %u), checked in twice %u (first %u), outside 0..%u %u (first %u)", missing,
		    first_missing, dup, first_dup, n_madt - 1, extra, first_extra);
}
