/*
 * Hostile cases with two vCPUs (see hostile.c): the second CPU attacks a device in a tight loop
 * while the first uses it, so the attacks race flint's locking: doorbells against controller resets,
 * notifications against virtio resets (which join the worker), BAR moves and memory-decode toggles
 * against BAR accesses, MSI-X table and function-mask flips against interrupts being raised. After
 * each, the second CPU stops and both devices must serve a good request. Needs --cpus 2 or more
 * (otherwise the cases are skipped with PROBE-INFO smp=skipped).
 */
#include "hostile.h"
#include "ap_start.h"

#define ECAM 0xE0000000u

enum ap_mode { AP_IDLE, AP_NVME_DOORBELLS, AP_VIRTIO_NOTIFY, AP_BAR_FLIP, AP_MSIX_FLIP, AP_HALT };

static volatile uint32_t g_mode, g_seen = 0xFFFFFFFFu, g_alive, g_iters;
static volatile uint32_t g_arg[3];

void hostile_ap_main(void);
void hostile_ap_main(void)
{
	g_alive = 1;
	for (uint32_t i = 0;; g_iters = ++i) {
		uint32_t m = g_mode;
		g_seen = m;
		switch (m) {
		case AP_NVME_DOORBELLS: /* SQ tails and CQ heads of queues 0-3, in range and beyond */
			mmio_write32(g_arg[0] + 0x1000 + 8 * (i & 3), i * 7 % 70);
			mmio_write32(g_arg[0] + 0x1004 + 8 * (i & 3), i * 13 % 80);
			break;
		case AP_VIRTIO_NOTIFY:
			mmio_write16(g_arg[0], (uint16_t)(i & 1 ? 0 : i));
			break;
		case AP_BAR_FLIP: /* through ECAM: one access each, no 0xCF8 latch to share */
			mmio_write32(g_arg[0] + 0x10, i & 1 ? g_arg[1] : g_arg[2]);
			mmio_write16(g_arg[0] + 0x04, i & 2 ? 0x6 : 0x4);
			break;
		case AP_MSIX_FLIP: /* entry 0: mask, address, data; the function mask */
			mmio_write32(g_arg[0] + 12, i & 1);
			mmio_write32(g_arg[0], i & 2 ? 0xFEE00000u : 0x12345678u);
			mmio_write32(g_arg[0] + 8, 0xF0 + (i & 7));
			mmio_write16(g_arg[1], i & 4 ? 0x8000 : 0xC000);
			break;
		case AP_HALT:
			return; /* the entry stub halts */
		default:
			break;
		}
	}
}

/* Switches the AP's mode and waits (bounded) until it has seen it. */
static bool ap_set(uint32_t mode)
{
	g_mode = mode;
	uint64_t dl = deadline_ms(2000);
	while (g_seen != mode)
		if (deadline_passed(dl))
			return false;
	return true;
}

static bool start_ap(void)
{
	struct madt_cpus cpus;
	const struct acpi_madt *madt = (const struct acpi_madt *)acpi_find("APIC", 0);
	if (!madt)
		return false;
	madt_cpus(madt, &cpus);
	uint32_t self = cpuid_apic_id(), target = 0xFFFFFFFFu;
	for (uint32_t i = 0; i < cpus.count; i++)
		if (cpus.ids[i] != self) {
			target = cpus.ids[i];
			break;
		}
	probe_info("smp_cpus", "%u", cpus.count);
	if (target == 0xFFFFFFFFu)
		return false;
	ap_trampoline_install();
	lapic_send_ipi(target, ICR_INIT | ICR_LEVEL_ASSERT);
	delay_ms(10);
	lapic_send_ipi(target, ICR_STARTUP | AP_SIPI_VECTOR);
	delay_us(200);
	lapic_send_ipi(target, ICR_STARTUP | AP_SIPI_VECTOR);
	uint64_t dl = deadline_ms(2000);
	while (!g_alive)
		if (deadline_passed(dl))
			return probe_check("smp_second_cpu_started", false, "APIC ID %u never checked in", target);
	return probe_check("smp_second_cpu_started", ap_set(AP_IDLE), "APIC ID %u started but does not follow", target);
}

/* Stops the attacker, counts its iterations, then a good request on both devices. */
static void smp_case(const char *name, uint32_t iters_from, bool ok, const char *why)
{
	bool stopped = ap_set(AP_IDLE);
	uint32_t iters = g_iters - iters_from;
	char key[64];
	snprintf(key, sizeof(key), "%s_attacks", name);
	probe_info(key, "%u", iters);
	char w1[160] = "", w2[200] = "";
	bool a = nvme_good_io(iters, w1, sizeof(w1)), b = virtio_good_io(iters, w2, sizeof(w2));
	probe_check(name, ok && stopped && iters > 10 && a && b,
		    "%s; second CPU stopped %u after %u attacks; nvme: %s; virtio-blk: %s", why, stopped, iters,
		    a ? "ok" : w1, b ? "ok" : w2);
}

void smp_attacks(void)
{
	if (!start_ap()) {
		probe_info("smp", "skipped");
		return;
	}
	char why[200] = "";
	uint32_t from;

	/* Doorbells from the second CPU while the first toggles CC.EN and brings the controller up. */
	g_arg[0] = (uint32_t)nvme_bar();
	from = g_iters;
	ap_set(AP_NVME_DOORBELLS);
	uint32_t ups = 0;
	for (uint32_t r = 0; r < 5; r++) {
		nvme_enable_storm(50);
		char w[120];
		ups += nvme_reinit(w, sizeof(w));
	}
	ap_set(AP_IDLE);
	bool up = nvme_reinit(why, sizeof(why));
	probe_info("smp_nvme_bring_ups_under_attack", "%u of 5", ups);
	smp_case("smp_nvme_doorbells_during_resets", from, up, up ? "bring-up ok" : why);

	/* Notifications from the second CPU while the first resets and re-initialises virtio-blk 20
	 * times, each time with a read that must succeed (a notification is only a hint). */
	g_arg[0] = (uint32_t)virtio_notify_addr();
	from = g_iters;
	ap_set(AP_VIRTIO_NOTIFY);
	uint32_t good = 0;
	for (uint32_t r = 0; r < 20; r++)
		good += virtio_reset_cycle(why, sizeof(why));
	char w[240];
	snprintf(w, sizeof(w), "%u of 20 reset cycles ok%s%s", good, good == 20 ? "" : "; last failure: ",
		 good == 20 ? "" : why);
	smp_case("smp_virtio_notify_during_resets", from, good == 20, w);

	/* The NVMe BAR moved and its memory decode toggled by the second CPU while the first reads a
	 * register there: every read is the register or all ones. */
	uint8_t dev = nvme_dev();
	uint32_t home = (uint32_t)nvme_bar();
	g_arg[0] = ECAM + ((uint32_t)dev << 15);
	g_arg[1] = home;
	g_arg[2] = 0xDF000000u;
	from = g_iters;
	ap_set(AP_BAR_FLIP);
	uint32_t real = 0, ones = 0, other = 0, bad_value = 0;
	for (uint32_t i = 0; i < 3000; i++) {
		uint32_t vs = mmio_read32(home + 0x08);
		if (vs == 0x10400u)
			real++;
		else if (vs == 0xFFFFFFFFu)
			ones++;
		else
			other++, bad_value = vs;
	}
	ap_set(AP_IDLE);
	mmio_write32(ECAM + ((uint32_t)dev << 15) + 0x10, home);
	mmio_write16(ECAM + ((uint32_t)dev << 15) + 0x04, 0x6);
	snprintf(w, sizeof(w), "VS reads: %u real, %u all ones, %u other (e.g. 0x%x)", real, ones, other, bad_value);
	probe_info("smp_bar_flip_reads", "%s", w);
	smp_case("smp_bar_moves_during_access", from, other == 0, w);

	/* MSI-X entry 0 and the function mask flipped by the second CPU while admin commands raise
	 * vector 0 on the first. */
	uint8_t cap = pci_find_cap(dev, 0x11);
	uint32_t table = cap ? cfg_read32(dev, cap + 4) & ~7u : 0;
	g_arg[0] = home + table;
	g_arg[1] = ECAM + ((uint32_t)dev << 15) + cap + 2;
	uint32_t ok = 0;
	uint16_t st = 0;
	from = g_iters;
	if (cap) {
		ap_set(AP_MSIX_FLIP);
		for (uint32_t i = 0; i < 20; i++) {
			uint16_t s = nvme_identify();
			ok += s == 0;
			if (s)
				st = s;
		}
		ap_set(AP_IDLE);
		mmio_write32(home + table + 12, 1);
		cfg_write16(dev, cap + 2, 0);
	}
	snprintf(w, sizeof(w), "%u of 20 Identify commands ok (last error 0x%x), MSI-X capability at 0x%x", ok, st, cap);
	smp_case("smp_msix_flips_during_interrupts", from, cap && ok == 20, w);

	g_mode = AP_HALT;
}
