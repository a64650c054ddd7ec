/*
 * PCI probe: bus 0 as a driver sees it. Finds the ECAM window through the ACPI MCFG, enumerates bus 0
 * through configuration mechanism #1 (ports 0xCF8/0xCFC) and through ECAM and checks that both agree,
 * finds the host bridge, checks that absent functions read all ones, then for every device with BARs:
 * BAR sizing round trips, the capability list, MSI-X table placement, memory-space decode, moving a
 * BAR and a refused overlapping move.
 *
 * Command-line keys: expect_pci_devices=N (functions found on bus 0, host bridge included),
 * exit=... (see the boot probe).
 */
#include "probe.h"

const char probe_name[] = "pci";

#define CFG_ADDR 0xCF8
#define CFG_DATA 0xCFC
#define MMIO32_START 0xC0000000u
#define MMIO32_END 0xE0000000u /* exclusive */
#define ECAM_PLATFORM_BASE 0xE0000000u

#define PCI_COMMAND 0x04
#define PCI_CMD_MEMORY 0x2
#define PCI_STATUS_CAPS 0x10
#define PCI_CAP_MSIX 0x11

struct mcfg_entry {
	uint64_t base;
	uint16_t segment;
	uint8_t start_bus;
	uint8_t end_bus;
	uint32_t reserved;
} PACKED;

static uintptr_t g_ecam;      /* 0 if unusable */
static uint32_t g_ecam_buses; /* buses the window covers, from bus 0 */

struct bar {
	uint64_t addr;
	uint64_t size; /* 0: not implemented */
	bool is64, io;
};

struct func {
	uint8_t dev, fn;
	uint32_t id, class_rev;
	uint8_t header;
	struct bar bars[6];
};
static struct func g_funcs[256];
static uint32_t g_nfuncs;

static uint32_t cf8(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t reg)
{
	return 0x80000000u | (uint32_t)bus << 16 | (uint32_t)dev << 11 | (uint32_t)fn << 8 | (reg & 0xFC);
}
static uint32_t io_read32(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t reg)
{
	outl(CFG_ADDR, cf8(bus, dev, fn, reg));
	return inl(CFG_DATA);
}
static uint16_t io_read16(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t reg)
{
	outl(CFG_ADDR, cf8(bus, dev, fn, reg));
	return inw(CFG_DATA + (reg & 2));
}
static uint8_t io_read8(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t reg)
{
	outl(CFG_ADDR, cf8(bus, dev, fn, reg));
	return inb(CFG_DATA + (reg & 3));
}
static void io_write32(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t reg, uint32_t v)
{
	outl(CFG_ADDR, cf8(bus, dev, fn, reg));
	outl(CFG_DATA, v);
}
static void io_write16(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t reg, uint16_t v)
{
	outl(CFG_ADDR, cf8(bus, dev, fn, reg));
	outw(CFG_DATA + (reg & 2), v);
}
static uintptr_t ecam_addr(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t reg)
{
	return g_ecam + ((uint32_t)bus << 20 | (uint32_t)dev << 15 | (uint32_t)fn << 12 | reg);
}

static bool is_pow2(uint64_t v) { return v && !(v & (v - 1)); }

static void check_mcfg(void)
{
	const struct acpi_header *h = acpi_find("MCFG", 0);
	if (!probe_check("acpi_mcfg", h != NULL, "no MCFG table in the root table"))
		return;
	uint32_t n = h->length >= 44 ? (h->length - 44) / sizeof(struct mcfg_entry) : 0;
	if (!probe_check("acpi_mcfg_wellformed", acpi_sum(h, h->length) == 0 && n >= 1,
			 "length %u (%u entries), checksum off by 0x%x", h->length, n, acpi_sum(h, h->length)))
		return;
	const struct mcfg_entry *e = (const struct mcfg_entry *)((const uint8_t *)h + 44);
	probe_info("mcfg", "base=0x%llx seg=%u bus=%u-%u entries=%u", e->base, e->segment, e->start_bus, e->end_bus,
		   n);
	probe_check("acpi_mcfg_ecam", e->segment == 0 && e->start_bus == 0 && e->end_bus >= e->start_bus,
		    "segment %u buses %u-%u: want segment 0 from bus 0", e->segment, e->start_bus, e->end_bus);
	probe_check("acpi_mcfg_base", e->base == ECAM_PLATFORM_BASE, "ECAM at 0x%llx, platform.md says 0x%x",
		    e->base, ECAM_PLATFORM_BASE);
	uint32_t buses = (uint32_t)e->end_bus - e->start_bus + 1;
	uint64_t len = (uint64_t)buses << 20;
	if (e->segment != 0 || e->start_bus != 0 || !phys_ok(e->base, len))
		return;
	g_ecam = (uintptr_t)e->base;
	g_ecam_buses = buses;

	/* Linux trusts the MCFG only if the window is reserved (and it must not be RAM). */
	bool reserved = false, ram = false;
	for (uint32_t i = 0; i < g_memmap_entries; i++) {
		const struct hvm_memmap_entry *m = &g_memmap[i];
		if (m->addr < e->base + len && e->base < m->addr + m->size) {
			if (m->type == E820_RAM)
				ram = true;
			else if (m->addr <= e->base && m->addr + m->size >= e->base + len)
				reserved = true;
		}
	}
	probe_check("pci_ecam_reserved", reserved && !ram, "ECAM 0x%llx+0x%llx: %s", e->base, len,
		    ram ? "overlaps RAM in the memory map" : "not inside a reserved memory-map entry");
}

static void check_dsdt(void)
{
	const struct acpi_fadt *fadt = (const struct acpi_fadt *)acpi_find("FACP", 0);
	const struct acpi_header *dsdt = fadt ? acpi_dsdt(fadt) : NULL;
	if (!dsdt)
		return;
	/* EISAID("PNP0A08") or EISAID("PNP0A03") as an AML DWord constant. */
	static const char pcie[] = {0x0C, 0x41, (char)0xD0, 0x0A, 0x08, 0};
	static const char pci[] = {0x0C, 0x41, (char)0xD0, 0x0A, 0x03, 0};
	const char *body = (const char *)dsdt;
	bool found = strstr_n(body, dsdt->length, pcie) || strstr_n(body, dsdt->length, pci);
	probe_check("acpi_dsdt_host_bridge", found, "no PNP0A08/PNP0A03 device in the DSDT");
}

/* Sizes the BARs of a type-0 function (memory decode must be off). Returns false if a BAR does not
 * read back its original value after the probe. */
static bool size_bars(struct func *f, char *why, size_t why_len)
{
	bool ok = true;
	for (uint8_t i = 0; i < 6; i++) {
		uint16_t reg = 0x10 + 4 * i;
		struct bar *b = &f->bars[i];
		uint32_t orig = io_read32(0, f->dev, f->fn, reg);
		io_write32(0, f->dev, f->fn, reg, 0xFFFFFFFFu);
		uint32_t mask = io_read32(0, f->dev, f->fn, reg);
		io_write32(0, f->dev, f->fn, reg, orig);
		if (io_read32(0, f->dev, f->fn, reg) != orig && ok) {
			ok = false;
			snprintf(why, why_len, "BAR%u 0x%x did not restore", i, orig);
		}
		if (orig & 1) {
			b->io = true;
			b->addr = orig & ~3u;
			uint32_t m = mask & ~3u & 0xFFFFu;
			b->size = m ? (uint64_t)((~m + 1) & 0xFFFFu) : 0;
			continue;
		}
		if (((orig >> 1) & 3) == 2 && i < 5) {
			uint32_t orig_hi = io_read32(0, f->dev, f->fn, reg + 4);
			io_write32(0, f->dev, f->fn, reg + 4, 0xFFFFFFFFu);
			uint32_t mask_hi = io_read32(0, f->dev, f->fn, reg + 4);
			io_write32(0, f->dev, f->fn, reg + 4, orig_hi);
			if (io_read32(0, f->dev, f->fn, reg + 4) != orig_hi && ok) {
				ok = false;
				snprintf(why, why_len, "BAR%u high half 0x%x did not restore", i, orig_hi);
			}
			uint64_t m = (uint64_t)mask_hi << 32 | (mask & ~0xFu);
			b->is64 = true;
			b->addr = (uint64_t)orig_hi << 32 | (orig & ~0xFu);
			b->size = m ? ~m + 1 : 0;
			i++; /* the high half is not a BAR of its own */
			continue;
		}
		uint32_t m = mask & ~0xFu;
		b->addr = orig & ~0xFu;
		b->size = m ? (uint64_t)(~m + 1) : 0;
	}
	return ok;
}

static void enumerate(void)
{
	for (uint8_t dev = 0; dev < 32; dev++) {
		for (uint8_t fn = 0; fn < 8; fn++) {
			uint32_t id = io_read32(0, dev, fn, 0);
			if ((id & 0xFFFF) == 0xFFFF) {
				if (fn == 0)
					break;
				continue;
			}
			struct func *f = &g_funcs[g_nfuncs++];
			f->dev = dev;
			f->fn = fn;
			f->id = id;
			f->class_rev = io_read32(0, dev, fn, 8);
			f->header = io_read8(0, dev, fn, 0x0E);
			char key[24];
			snprintf(key, sizeof(key), "pci_%02x.%u", dev, fn);
			probe_info(key, "%04x:%04x class=%06x rev=%u header=0x%02x", id & 0xFFFF, id >> 16,
				   f->class_rev >> 8, f->class_rev & 0xFF, f->header);
			if (fn == 0 && !(f->header & 0x80))
				break; /* single-function device */
		}
	}
	probe_info("pci_functions", "%u", g_nfuncs);
	probe_expect_u32("pci_device_count", "expect_pci_devices", g_nfuncs);
}

static void check_host_bridge(void)
{
	const struct func *hb = g_nfuncs && g_funcs[0].dev == 0 && g_funcs[0].fn == 0 ? &g_funcs[0] : NULL;
	if (!probe_check("pci_host_bridge", hb && hb->class_rev >> 8 == 0x060000,
			 hb ? "00:00.0 class %06x, want 060000" : "nothing at 00:00.0", hb ? hb->class_rev >> 8 : 0))
		return;
	/* A host bridge with no BARs: every BAR register reads 0 even after a sizing write. */
	uint32_t bad = 0, badval = 0;
	for (uint16_t reg = 0x10; reg < 0x28; reg += 4) {
		uint32_t orig = io_read32(0, 0, 0, reg);
		io_write32(0, 0, 0, reg, 0xFFFFFFFFu);
		uint32_t v = io_read32(0, 0, 0, reg);
		io_write32(0, 0, 0, reg, orig);
		if ((v != 0 || orig != 0) && !bad) {
			bad = reg;
			badval = v;
		}
	}
	probe_check("pci_host_bridge_no_bars", !bad, "BAR register 0x%x reads 0x%x after sizing", bad, badval);
	/* Vendor/device ID are read-only. */
	io_write32(0, 0, 0, 0, 0x12345678u);
	probe_check("pci_id_read_only", io_read32(0, 0, 0, 0) == hb->id, "ID changed to 0x%x after a write",
		    io_read32(0, 0, 0, 0));
}

static void check_absent(void)
{
	/* First empty slot, if any. */
	uint8_t empty = 0;
	for (uint8_t dev = 1; dev < 32 && !empty; dev++)
		if ((io_read32(0, dev, 0, 0) & 0xFFFF) == 0xFFFF)
			empty = dev;
	uint32_t bad = 0;
	char why[96] = "";
	static const uint16_t regs[] = {0x00, 0x08, 0x10, 0x3C};
	for (uint32_t i = 0; i < ARRAY_SIZE(regs) && empty; i++) {
		uint32_t v = io_read32(0, empty, 0, regs[i]);
		if (v != 0xFFFFFFFFu && !bad++)
			snprintf(why, sizeof(why), "00:%02x.0 reg 0x%x reads 0x%x", empty, regs[i], v);
	}
	if (!(g_funcs[0].header & 0x80)) {
		uint32_t v = io_read32(0, 0, 1, 0);
		if (v != 0xFFFFFFFFu && !bad++)
			snprintf(why, sizeof(why), "00:00.1 reads 0x%x", v);
	}
	uint32_t v = io_read32(1, 0, 0, 0);
	if (v != 0xFFFFFFFFu && !bad++)
		snprintf(why, sizeof(why), "bus 1 00.0 reads 0x%x", v);
	if (g_ecam && empty) {
		uint32_t e = mmio_read32(ecam_addr(0, empty, 0, 0));
		if (e != 0xFFFFFFFFu && !bad++)
			snprintf(why, sizeof(why), "ECAM 00:%02x.0 reads 0x%x", empty, e);
	}
	if (empty)
		probe_info("pci_empty_slot", "%u", empty);
	probe_check("pci_absent_reads_ones", !bad, "%s", why);
	/* Writing to a disabled address register must not reach a function. */
	outl(CFG_ADDR, 0x00000000u);
	probe_check("pci_cf8_disabled", inl(CFG_DATA) == 0xFFFFFFFFu, "data port with enable bit clear: not all ones");
}

static void check_ecam_matches(void)
{
	if (!g_ecam)
		return;
	uint32_t compared = 0, bad = 0;
	char why[96] = "";
	for (uint8_t dev = 0; dev < 32; dev++) {
		uint32_t id = io_read32(0, dev, 0, 0);
		uint16_t last = (id & 0xFFFF) == 0xFFFF ? 0 : 0xFC; /* whole legacy space of present ones */
		for (uint16_t reg = 0; reg <= last; reg += 4) {
			uint32_t a = io_read32(0, dev, 0, reg), b = mmio_read32(ecam_addr(0, dev, 0, reg));
			compared++;
			if (a != b && !bad++)
				snprintf(why, sizeof(why), "00:%02x.0 reg 0x%x: 0xCFC 0x%x, ECAM 0x%x", dev, reg, a, b);
		}
	}
	probe_info("pci_ecam_dwords_compared", "%u", compared);
	probe_check("pci_ecam_matches_cf8", !bad, "%s (%u mismatches)", why, bad);

	/* Sub-dword accesses at the right byte lanes, both ways. */
	uint32_t id = io_read32(0, 0, 0, 0), cls = io_read32(0, 0, 0, 8);
	bool ok = io_read16(0, 0, 0, 0) == (id & 0xFFFF) && io_read16(0, 0, 0, 2) == id >> 16 &&
		  io_read8(0, 0, 0, 0x0B) == cls >> 24 && io_read8(0, 0, 0, 0x09) == ((cls >> 8) & 0xFF) &&
		  mmio_read16(ecam_addr(0, 0, 0, 2)) == id >> 16 && mmio_read8(ecam_addr(0, 0, 0, 0x0B)) == cls >> 24 &&
		  mmio_read8(ecam_addr(0, 0, 0, 1)) == ((id >> 8) & 0xFF);
	probe_check("pci_subdword_access", ok, "byte/word config reads disagree with dword reads");

	/* PCIe extended space (0x100+) exists through ECAM only. */
	uint32_t ext = mmio_read32(ecam_addr(0, 0, 0, 0x100));
	probe_info("pci_ext_cap_00.0", "0x%x", ext);
	probe_check("pci_ecam_extended_space", ext != 0xFFFFFFFFu, "00:00.0 offset 0x100 reads all ones");
}

static bool bar_overlaps_others(const struct func *self, uint32_t bar, uint64_t addr, uint64_t size)
{
	for (uint32_t i = 0; i < g_nfuncs; i++)
		for (uint32_t j = 0; j < 6; j++) {
			const struct bar *b = &g_funcs[i].bars[j];
			if ((&g_funcs[i] == self && j == bar) || !b->size || b->io)
				continue;
			if (addr < b->addr + b->size && b->addr < addr + size)
				return true;
		}
	return false;
}

/* Moves BAR `i` of `f` to the top of the 32-bit window and back, and onto the ECAM window (refused). */
static void check_bar_move(struct func *f, uint32_t i, uint16_t cmd)
{
	struct bar *b = &f->bars[i];
	char check[32];
	snprintf(check, sizeof(check), "pci_bar_move_%02x.%u", f->dev, f->fn);
	uint16_t reg = 0x10 + 4 * i;
	uint32_t old = (uint32_t)b->addr;
	uint32_t dest = MMIO32_END - (uint32_t)b->size;
	if (bar_overlaps_others(f, i, dest, b->size) || dest == old) {
		probe_info(check, "skipped: no free destination");
		return;
	}
	io_write16(0, f->dev, f->fn, PCI_COMMAND, cmd & ~PCI_CMD_MEMORY);
	uint32_t off_decode = mmio_read32(old);
	io_write16(0, f->dev, f->fn, PCI_COMMAND, cmd | PCI_CMD_MEMORY);
	uint32_t v0 = mmio_read32(old);
	snprintf(check, sizeof(check), "pci_memory_decode_%02x.%u", f->dev, f->fn);
	probe_check(check, off_decode == 0xFFFFFFFFu, "BAR%u at 0x%x answers 0x%x with memory space disabled", i,
		    old, off_decode);

	io_write32(0, f->dev, f->fn, reg, dest);
	uint32_t at_new = mmio_read32(dest), at_old = mmio_read32(old);
	io_write32(0, f->dev, f->fn, reg, old);
	uint32_t back = mmio_read32(old);
	snprintf(check, sizeof(check), "pci_bar_move_%02x.%u", f->dev, f->fn);
	probe_check(check, at_new == v0 && at_old == 0xFFFFFFFFu && back == v0,
		    "BAR%u 0x%x->0x%x: first dword 0x%x, at new 0x%x, at old 0x%x, back 0x%x", i, old, dest, v0,
		    at_new, at_old, back);

	/* Onto the ECAM window: the VMM must refuse it and config space must keep working. */
	if (g_ecam) {
		uint32_t id = io_read32(0, 0, 0, 0);
		io_write32(0, f->dev, f->fn, reg, (uint32_t)g_ecam);
		uint32_t via_ecam = mmio_read32(ecam_addr(0, 0, 0, 0));
		io_write32(0, f->dev, f->fn, reg, old);
		uint32_t again = mmio_read32(old);
		snprintf(check, sizeof(check), "pci_bar_overlap_refused_%02x.%u", f->dev, f->fn);
		probe_check(check, via_ecam == id && again == v0,
			    "BAR%u moved onto ECAM: 00:00.0 ID via ECAM 0x%x (want 0x%x), BAR back at 0x%x reads 0x%x",
			    i, via_ecam, id, old, again);
	}
}

static void check_caps(struct func *f)
{
	uint16_t status = io_read16(0, f->dev, f->fn, 0x06);
	if (!(status & PCI_STATUS_CAPS))
		return;
	char check[32], ids[96] = "";
	size_t len = 0;
	uint8_t ptr = io_read8(0, f->dev, f->fn, 0x34);
	uint32_t n = 0;
	bool ok = true;
	uint8_t msix = 0;
	while (ptr && n < 48) {
		if (ptr < 0x40 || (ptr & 3)) {
			ok = false;
			break;
		}
		uint8_t id = io_read8(0, f->dev, f->fn, ptr);
		if (id == PCI_CAP_MSIX)
			msix = ptr;
		if (len + 4 < sizeof(ids))
			len += (size_t)snprintf(ids + len, sizeof(ids) - len, "%s%02x@%02x", n ? "," : "", id, ptr);
		ptr = io_read8(0, f->dev, f->fn, ptr + 1);
		n++;
	}
	snprintf(check, sizeof(check), "pci_caps_%02x.%u", f->dev, f->fn);
	probe_info(check, "%s", ids);
	probe_check(check, ok && !ptr, "capability list broken after %u entries (pointer 0x%x)", n, ptr);
	if (!msix)
		return;
	uint16_t control = io_read16(0, f->dev, f->fn, msix + 2);
	uint32_t table = io_read32(0, f->dev, f->fn, msix + 4), pba = io_read32(0, f->dev, f->fn, msix + 8);
	uint32_t vectors = (control & 0x7FF) + 1u;
	const struct bar *tb = &f->bars[table & 7], *pb = &f->bars[pba & 7];
	bool fits = (table & 7) < 6 && (pba & 7) < 6 && tb->size && pb->size &&
		    (uint64_t)(table & ~7u) + vectors * 16u <= tb->size &&
		    (uint64_t)(pba & ~7u) + ((vectors + 63) / 64) * 8u <= pb->size;
	snprintf(check, sizeof(check), "pci_msix_%02x.%u", f->dev, f->fn);
	probe_info(check, "vectors=%u table=BAR%u+0x%x pba=BAR%u+0x%x control=0x%x", vectors, table & 7,
		   table & ~7u, pba & 7, pba & ~7u, control);
	probe_check(check, fits && !(control & 0x8000), "MSI-X table/PBA outside their BARs, or enabled at reset");
}

static void check_devices(void)
{
	uint32_t with_bars = 0;
	for (uint32_t k = 0; k < g_nfuncs; k++) {
		struct func *f = &g_funcs[k];
		if ((f->header & 0x7F) != 0 || (f->dev == 0 && f->fn == 0))
			continue;
		char check[32], why[96] = "";
		uint16_t cmd = io_read16(0, f->dev, f->fn, PCI_COMMAND);
		io_write16(0, f->dev, f->fn, PCI_COMMAND, cmd & ~3u);
		bool ok = size_bars(f, why, sizeof(why));
		bool any = false;
		for (uint32_t i = 0; i < 6; i++) {
			const struct bar *b = &f->bars[i];
			if (!b->size)
				continue;
			any = true;
			char key[32];
			snprintf(key, sizeof(key), "pci_%02x.%u_bar%u", f->dev, f->fn, i);
			probe_info(key, "%s addr=0x%llx size=0x%llx", b->io ? "io" : b->is64 ? "mem64" : "mem32", b->addr,
				   b->size);
			if (!ok)
				continue;
			if (!is_pow2(b->size) || (b->addr & (b->size - 1))) {
				ok = false;
				snprintf(why, sizeof(why), "BAR%u size 0x%llx addr 0x%llx not a naturally aligned power of 2",
					 i, b->size, b->addr);
			} else if (!b->io && !(b->addr >= MMIO32_START && b->addr + b->size <= MMIO32_END) &&
				   b->addr < 0x100000000ull) {
				ok = false;
				snprintf(why, sizeof(why), "BAR%u at 0x%llx outside the 32-bit window and below 4 GiB", i,
					 b->addr);
			}
		}
		if (!any)
			continue;
		with_bars++;
		snprintf(check, sizeof(check), "pci_bars_%02x.%u", f->dev, f->fn);
		probe_check(check, ok, "%s", why);
		check_caps(f);
		for (uint32_t i = 0; i < 6; i++) {
			const struct bar *b = &f->bars[i];
			if (b->size >= 0x1000 && !b->io && b->addr >= MMIO32_START && b->addr + b->size <= MMIO32_END) {
				check_bar_move(f, i, cmd & ~PCI_CMD_MEMORY);
				break;
			}
		}
		io_write16(0, f->dev, f->fn, PCI_COMMAND, cmd);
	}
	probe_info("pci_functions_with_bars", "%u", with_bars);
}

void probe_main(void)
{
	outl(CFG_ADDR, 0x80000000u);
	uint32_t latch = inl(CFG_ADDR);
	if (!probe_check("pci_cf8_latch", latch == 0x80000000u, "0xCF8 reads back 0x%x after writing 0x80000000",
			 latch))
		return;
	check_mcfg();
	check_dsdt();
	enumerate();
	check_host_bridge();
	check_absent();
	check_ecam_matches();
	check_devices();
}
