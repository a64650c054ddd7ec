/*
 * Hostile PCI cases (see hostile.c): BARs moved into RAM, over another BAR and over the platform's
 * own MMIO (APICs, ECAM, boot marker, KVM's private pages), 64-bit BARs past the address width or
 * wrapping, memory decode off, a BAR remap storm, MSI-X tables full of garbage with interrupts
 * firing through them, and all ones written over the whole configuration space. After each: the
 * platform pieces still answer and both devices serve a good request.
 */
#include "hostile.h"

#define ECAM 0xE0000000u
#define NVME_CAP_VS 0x08
#define IOAPIC 0xFEC00000u

static uintptr_t ecam(uint8_t dev, uint32_t reg) { return ECAM + ((uint32_t)dev << 15) + reg; }

static void both_serve(const char *name, bool attack_ok, const char *attack_why)
{
	char why[160] = "", why2[200] = "";
	static uint32_t seed = 5000;
	seed++;
	bool a = nvme_good_io(seed, why, sizeof(why));
	bool b = virtio_good_io(seed, why2, sizeof(why2));
	probe_check(name, attack_ok && a && b, "%s%snvme: %s; virtio-blk: %s", attack_ok ? "" : attack_why,
		    attack_ok ? "" : "; ", a ? "ok" : why, b ? "ok" : why2);
}

/* Everything the platform answers at fixed addresses still answers. */
static bool platform_ok(char *why, size_t n)
{
	uint32_t lapic = lapic_read(LAPIC_VERSION) & 0xFF;
	mmio_write32(IOAPIC, 1);
	uint32_t ioapic = mmio_read32(IOAPIC + 0x10) & 0xFF;
	uint32_t host = mmio_read32(ecam(0, 0));
	volatile uint32_t *ram = (volatile uint32_t *)SCRATCH_MEM;
	ram[1] = 0x600DF00Du;
	bool ok = lapic >= 0x10 && ioapic >= 0x11 && (host & 0xFFFF) == 0x8086 && ram[1] == 0x600DF00Du;
	if (!ok)
		snprintf(why, n, "LAPIC version 0x%x IOAPIC version 0x%x ECAM 00:00.0 id 0x%x RAM 0x%x", lapic, ioapic,
			 host, ram[1]);
	return ok;
}

static uint32_t nvme_vs(void) { return mmio_read32(nvme_bar() + NVME_CAP_VS); }

static void bar_into_ram_case(void)
{
	uint8_t dev = nvme_dev();
	uint64_t home = nvme_bar();
	volatile uint32_t *ram = (volatile uint32_t *)SCRATCH_MEM;
	ram[0] = 0xCAFEF00Du;
	pci_write_bar64(dev, 0, SCRATCH_MEM);
	uint32_t at_ram = ram[0];
	ram[0] = 0x12345678u;
	uint32_t written = ram[0];
	uint32_t old = mmio_read32((uintptr_t)home + NVME_CAP_VS);
	/* A BAR over guest RAM just below 4 GiB's reach and over the first page (the real-mode IVT). */
	pci_write_bar64(dev, 0, 0);
	uintptr_t low = 0x100;
	__asm__("" : "+r"(low)); /* an address gcc cannot see is "null + 0x100" */
	uint32_t page0 = *(volatile uint32_t *)low;
	pci_write_bar64(dev, 0, home);
	uint32_t back = nvme_vs();
	char why[200];
	snprintf(why, sizeof(why), "BAR over RAM: RAM read 0x%x (want 0xcafef00d), wrote back 0x%x, old address VS 0x%x "
				   "(want all ones); page 0 read 0x%x; VS at home 0x%x",
		 at_ram, written, old, page0, back);
	both_serve("pci_bar_into_ram", at_ram == 0xCAFEF00Du && written == 0x12345678u && old == 0xFFFFFFFFu &&
					       back == 0x10400u,
		   why);
}

static void bar_over_bar_case(void)
{
	uint8_t vdev = virtio_dev(), ndev = nvme_dev();
	uint64_t vhome = virtio_bar(), nhome = nvme_bar();
	/* virtio-blk's 32 KiB BAR onto the NVMe BAR's 32 KiB-aligned block: refused, virtio unmapped. */
	pci_write_bar64(vdev, 0, nhome & ~0x7FFFull);
	uint32_t nvme_still = nvme_vs();
	uint32_t virtio_old = mmio_read32((uintptr_t)vhome);
	/* And the NVMe BAR onto virtio's MSI-X table (its BAR is back first). */
	pci_write_bar64(vdev, 0, vhome);
	pci_write_bar64(ndev, 0, vhome + 0x4000);
	uint32_t virtio_table = mmio_read32((uintptr_t)vhome + 0x4000 + 8);
	pci_write_bar64(ndev, 0, nhome);
	char why[200], pwhy[120] = "";
	bool plat = platform_ok(pwhy, sizeof(pwhy));
	snprintf(why, sizeof(why), "NVMe VS 0x%x with virtio on top (want 0x10400); virtio's old address 0x%x (want all "
				   "ones); virtio MSI-X data 0x%x; %s",
		 nvme_still, virtio_old, virtio_table, pwhy);
	both_serve("pci_bar_over_other_bar", nvme_still == 0x10400u && virtio_old == 0xFFFFFFFFu && plat, why);
}

static void bar_over_platform_case(void)
{
	static const uint64_t targets[] = { 0xFEE00000u, 0xFEC00000u, ECAM, 0xF0000000u, 0xFFFBC000u, 0xFFFFC000u };
	uint8_t dev = nvme_dev();
	uint64_t home = nvme_bar();
	char why[200] = "";
	bool ok = true;
	for (uint32_t i = 0; i < ARRAY_SIZE(targets); i++) {
		pci_write_bar64(dev, 0, targets[i]);
		char pwhy[120] = "";
		if (!platform_ok(pwhy, sizeof(pwhy)) && ok) {
			ok = false;
			snprintf(why, sizeof(why), "BAR at 0x%llx: %s", targets[i], pwhy);
		}
	}
	pci_write_bar64(dev, 0, home);
	both_serve("pci_bar_over_platform_mmio", ok && nvme_vs() == 0x10400u, why);
}

static void bar_64bit_case(void)
{
	static const uint64_t targets[] = { 0xFFFFFFFFFFFFC000ull, 0x0000001000000000ull, 0x8000000000000000ull,
					    0x0000000100000000ull /* over RAM above 4 GiB, if any */ };
	uint8_t dev = nvme_dev();
	uint64_t home = nvme_bar();
	for (uint32_t i = 0; i < ARRAY_SIZE(targets); i++)
		pci_write_bar64(dev, 0, targets[i]);
	/* Half-written 64-bit values: the high dword alone, then the low. */
	cfg_write32(dev, 0x14, 0xFFFFFFFFu);
	cfg_write32(dev, 0x10, 0xFFFFFFFFu);
	cfg_write32(dev, 0x14, 0);
	uint32_t lo = cfg_read32(dev, 0x10);
	pci_write_bar64(dev, 0, home);
	char why[120];
	snprintf(why, sizeof(why), "BAR low dword after all ones 0x%x; VS at home 0x%x", lo, nvme_vs());
	both_serve("pci_bar_64bit_garbage", nvme_vs() == 0x10400u, why);
}

static void decode_and_remap_storm_case(void)
{
	uint8_t dev = nvme_dev();
	uint64_t home = nvme_bar();
	uint16_t cmd = cfg_read16(dev, 0x04);
	cfg_write16(dev, 0x04, cmd & ~2u);
	uint32_t off = nvme_vs();
	cfg_write16(dev, 0x04, cmd);
	uint32_t on = nvme_vs();
	uint64_t t0 = rdtsc();
	for (uint32_t i = 0; i < 200; i++) {
		pci_write_bar64(dev, 0, i & 1 ? home : 0xDF000000u);
		cfg_write16(dev, 0x04, i & 2 ? cmd : (uint16_t)(cmd & ~2u));
	}
	pci_write_bar64(dev, 0, home);
	cfg_write16(dev, 0x04, cmd);
	probe_info("pci_remap_storm", "moves=200 ms=%u", tsc_to_ms(rdtsc() - t0));
	char why[120];
	snprintf(why, sizeof(why), "VS with memory decode off 0x%x (want all ones), on 0x%x, after the storm 0x%x", off,
		 on, nvme_vs());
	both_serve("pci_decode_off_and_remap_storm", off == 0xFFFFFFFFu && on == 0x10400u && nvme_vs() == 0x10400u,
		   why);
}

/* Garbage in every MSI-X table entry (addresses that are no APIC, reserved data bits, vectors below
 * 16), the table enabled and unmasked, and interrupts fired through it by I/O on an interrupting
 * queue; writes of odd widths past the table and into the PBA. Delivery modes that would stop the
 * probe's own CPU (INIT, SIPI, SMI, NMI) are left out: that would be the guest hurting itself. */
static void msix_garbage_case(void)
{
	static const uint32_t addrs[] = { 0x12345678u, 0xFEEFF00Cu, 0x00000000u, 0xFFFFFFF0u, 0xFEE00000u };
	static const uint32_t datas[] = { 0xFFFF00F0u, 0x00000001u, 0x0000C1FEu, 0x000001EFu, 0xFFFF0000u };
	uint8_t devs[2] = { nvme_dev(), virtio_dev() };
	uintptr_t bars[2] = { nvme_bar(), virtio_bar() };
	uint32_t vectors[2] = { 0, 0 };
	for (uint32_t d = 0; d < 2; d++) {
		uint8_t cap = pci_find_cap(devs[d], 0x11);
		if (!cap)
			continue;
		uint16_t control = cfg_read16(devs[d], cap + 2);
		uint32_t table = cfg_read32(devs[d], cap + 4), pba = cfg_read32(devs[d], cap + 8);
		uint32_t nvec = (control & 0x7FF) + 1u;
		vectors[d] = nvec;
		uintptr_t t = bars[d] + (table & ~7u), p = bars[d] + (pba & ~7u);
		for (uint32_t e = 0; e < nvec; e++) {
			mmio_write32(t + 16 * e, addrs[e % ARRAY_SIZE(addrs)]);
			mmio_write32(t + 16 * e + 4, e & 1 ? 0xFFFFFFFFu : 0);
			mmio_write32(t + 16 * e + 8, datas[e % ARRAY_SIZE(datas)]);
			mmio_write32(t + 16 * e + 12, 0xFFFFFFFEu); /* unmasked, reserved bits set */
		}
		mmio_write8(t + 3, 0xAB);
		mmio_write16(t + 16 * nvec - 2, 0xFFFF);
		mmio_write32(t + 16 * nvec, 0xFFFFFFFFu); /* just past the table */
		mmio_write32(p, 0xFFFFFFFFu);
		mmio_write32(p + 0x100, 0xFFFFFFFFu);
		cfg_write16(devs[d], cap + 2, (uint16_t)((control | 0x8000) & ~0x4000));
	}
	probe_info("pci_msix_vectors", "nvme=%u virtio=%u", vectors[0], vectors[1]);
	/* Interrupts through the garbage: every NVMe admin completion raises vector 0 (I/O queue 1 is
	 * polled). The garbage stays in place for the good requests in both_serve. */
	char why[160] = "";
	uint16_t st = 0;
	for (uint32_t i = 0; i < 4 && !st; i++)
		st = nvme_identify();
	snprintf(why, sizeof(why), "Identify with the admin queue's vector full of garbage: status 0x%x", st);
	both_serve("pci_msix_garbage", st == 0, why);
	/* Leave MSI-X disabled and every entry masked, as the rest of the probe polls. */
	for (uint32_t d = 0; d < 2; d++) {
		uint8_t cap = pci_find_cap(devs[d], 0x11);
		if (!cap)
			continue;
		uint32_t table = cfg_read32(devs[d], cap + 4);
		for (uint32_t e = 0; e < vectors[d]; e++)
			mmio_write32(bars[d] + (table & ~7u) + 16 * e + 12, 1);
		cfg_write16(devs[d], cap + 2, cfg_read16(devs[d], cap + 2) & ~0x8000u);
	}
}

/* All ones over the whole configuration space of every function (ECAM, dwords), and of the first
 * 256 bytes through 0xCF8/0xCFC in bytes and words; then the BARs and command registers restored. */
static void config_space_garbage_case(void)
{
	uint32_t saved[MAX_FNS][7];
	for (uint32_t i = 0; i < g_nfns; i++) {
		for (uint32_t r = 0; r < 6; r++)
			saved[i][r] = cfg_read32(g_fns[i].dev, (uint16_t)(0x10 + 4 * r));
		saved[i][6] = cfg_read16(g_fns[i].dev, 0x04);
	}
	uint64_t t0 = rdtsc();
	for (uint32_t i = 0; i < g_nfns; i++) {
		uint8_t dev = g_fns[i].dev;
		for (uint32_t reg = 0; reg < 0x1000; reg += 4)
			mmio_write32(ecam(dev, reg), 0xFFFFFFFFu);
		for (uint32_t reg = 0; reg < 0x100; reg++) {
			outl(CFG_ADDR, cf8(dev, (uint16_t)reg));
			outb((uint16_t)(CFG_DATA + (reg & 3)), 0xFF);
			if ((reg & 1) == 0)
				outw((uint16_t)(CFG_DATA + (reg & 2)), 0xFFFF);
		}
	}
	/* An absent slot and unaligned / odd ECAM accesses. */
	mmio_write32(ecam(31, 0x10), 0xFFFFFFFFu);
	mmio_write16(ecam(0, 0x3FFF), 0xFFFF);
	outl(CFG_ADDR, 0xFFFFFFFFu);
	outl(CFG_DATA, 0xFFFFFFFFu);
	outl(CFG_ADDR, 0x80FFFFFCu);
	outl(CFG_DATA, 0xFFFFFFFFu);
	probe_info("pci_config_garbage_ms", "%u", tsc_to_ms(rdtsc() - t0));
	for (uint32_t i = 0; i < g_nfns; i++) {
		uint8_t dev = g_fns[i].dev;
		cfg_write16(dev, 0x04, 0);
		for (uint32_t r = 0; r < 6; r++)
			cfg_write32(dev, (uint16_t)(0x10 + 4 * r), saved[i][r]);
		uint8_t cap = pci_find_cap(dev, 0x11);
		if (cap)
			cfg_write16(dev, cap + 2, 0);
		cfg_write16(dev, 0x04, (uint16_t)saved[i][6]);
	}
	char why[160] = "";
	bool plat = platform_ok(why, sizeof(why));
	uint32_t id = cfg_read32(nvme_dev(), 0);
	if (plat && (id & 0xFFFF) != 0x1d0f) {
		plat = false;
		snprintf(why, sizeof(why), "NVMe id reads 0x%x after the garbage", id);
	}
	both_serve("pci_config_space_garbage", plat, why);
}

void pci_attacks(void)
{
	bar_into_ram_case();
	bar_over_bar_case();
	bar_over_platform_case();
	bar_64bit_case();
	decode_and_remap_storm_case();
	msix_garbage_case();
	config_space_garbage_case();
}
