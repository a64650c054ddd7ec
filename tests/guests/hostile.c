/*
 * Hostile-guest probe: attacks every device model and the platform the way a malicious or broken
 * driver would, and after each attack proves that the VMM still serves a good request. One PROBE
 * line per case (docs/hostile-guests.md has the table: the attack, what the VMM must do, the result).
 *
 *   hostile_nvme.c    NVMe: doorbells beyond the queue and of absent queues, bad queue ids, queues and
 *                     PRPs outside RAM, looping PRP chains, MDTS + 1, commands on deleted queues,
 *                     enable/disable storms, shadow doorbell buffers outside RAM and garbage shadow
 *                     values.
 *   hostile_virtio.c  virtio-blk: descriptor loops, a 65 536-entry indirect table, nested indirect
 *                     tables, zero and huge lengths, avail index jumps, queue sizes that are not powers
 *                     of two, notifications before DRIVER_OK, rings outside RAM, reset during I/O.
 *   hostile_pci.c     PCI: BARs moved into RAM, over other BARs and over the APICs/ECAM, 64-bit BARs
 *                     past the address width, memory decode off, MSI-X table garbage.
 *   hostile_smp.c     a second vCPU attacking while the first uses a device: doorbells against
 *                     controller resets, notifications against virtio resets, BAR moves against BAR
 *                     accesses, MSI-X flips against interrupts (skipped with one vCPU).
 *   this file         the platform: a write and a read of every port flint might own (a few that would
 *                     end the VM or reprogram its console are skipped), a sweep of the unclaimed MMIO
 *                     below 4 GiB, a serial flood written without waiting for the UART, string port
 *                     input, the reset/power-off registers with every value that must not act; and the
 *                     set-up.
 *
 * Needs one NVMe volume (>= 16 MiB) and one virtio-blk disk (>= 16 MiB); both are scribbled on.
 * Command-line keys: flood_kib=N (bytes written one at a time, default 64), flood_rep_kib=N (with rep
 * outsb, default 1024), skip=platform (for quick runs),
 * exit=hang (what tests/hostile.rs uses: the guest then idles so the test can measure the VMM).
 */
#include "hostile.h"

const char probe_name[] = "hostile";

struct pci_fn g_fns[MAX_FNS];
uint32_t g_nfns;

void hfill(uintptr_t buf, uint32_t len, uint32_t seed)
{
	volatile uint32_t *p = (volatile uint32_t *)buf;
	for (uint32_t i = 0; i < len / 4; i++)
		p[i] = hpattern(i, seed);
}

int32_t hverify(uintptr_t buf, uint32_t len, uint32_t seed)
{
	const volatile uint32_t *p = (const volatile uint32_t *)buf;
	for (uint32_t i = 0; i < len / 4; i++)
		if (p[i] != hpattern(i, seed))
			return (int32_t)i;
	return -1;
}

/* ---------------------------------------------------------------- PCI helpers */
void pci_read_bar(uint8_t dev, uint32_t index, struct bar *out)
{
	uint16_t reg = (uint16_t)(0x10 + 4 * index);
	memset(out, 0, sizeof(*out));
	uint32_t lo = cfg_read32(dev, reg);
	if (lo & 1)
		return; /* I/O BAR: flint has none */
	bool is64 = ((lo >> 1) & 3) == 2;
	uint16_t cmd = cfg_read16(dev, 0x04);
	cfg_write16(dev, 0x04, cmd & ~2u);
	uint32_t hi = is64 ? cfg_read32(dev, reg + 4) : 0;
	cfg_write32(dev, reg, 0xFFFFFFFFu);
	uint32_t mlo = cfg_read32(dev, reg), mhi = 0xFFFFFFFFu;
	cfg_write32(dev, reg, lo);
	if (is64) {
		cfg_write32(dev, reg + 4, 0xFFFFFFFFu);
		mhi = cfg_read32(dev, reg + 4);
		cfg_write32(dev, reg + 4, hi);
	}
	cfg_write16(dev, 0x04, cmd);
	uint64_t mask = (uint64_t)mhi << 32 | (mlo & ~0xFu);
	out->is64 = is64;
	out->size = (mlo & ~0xFu) ? ~mask + 1 : 0;
	out->addr = (uint64_t)hi << 32 | (lo & ~0xFu);
}

void pci_write_bar64(uint8_t dev, uint32_t index, uint64_t addr)
{
	uint16_t reg = (uint16_t)(0x10 + 4 * index);
	cfg_write32(dev, reg, (uint32_t)addr);
	cfg_write32(dev, reg + 4, (uint32_t)(addr >> 32));
}

static void pci_scan(void)
{
	for (uint8_t dev = 0; dev < 32 && g_nfns < MAX_FNS; dev++) {
		uint32_t id = cfg_read32(dev, 0);
		if ((id & 0xFFFF) == 0xFFFF)
			continue;
		struct pci_fn *f = &g_fns[g_nfns++];
		f->dev = dev;
		f->id = id;
		f->class_rev = cfg_read32(dev, 0x08);
		for (uint32_t i = 0; i < 6; i++) {
			pci_read_bar(dev, i, &f->bars[i]);
			if (f->bars[i].is64)
				i++;
		}
	}
}

/* Whether [a, a + len) overlaps a BAR of any function. */
static bool overlaps_bar(uint64_t a, uint64_t len)
{
	for (uint32_t i = 0; i < g_nfns; i++)
		for (uint32_t b = 0; b < 6; b++) {
			const struct bar *r = &g_fns[i].bars[b];
			if (r->size && a < r->addr + r->size && r->addr < a + len)
				return true;
		}
	return false;
}

/* ---------------------------------------------------------------- the devices still serve */
static void still_serving(const char *name)
{
	char why[160] = "", why2[160] = "";
	static uint32_t seed = 1000;
	seed++;
	bool a = nvme_good_io(seed, why, sizeof(why));
	bool b = virtio_good_io(seed, why2, sizeof(why2));
	probe_check(name, a && b, "nvme: %s; virtio-blk: %s", a ? "ok" : why, b ? "ok" : why2);
}

/* ---------------------------------------------------------------- platform: ports */
/* Ports left alone, and why (docs/hostile-guests.md lists them too). */
static const struct {
	uint16_t first, last;
} g_port_skip[] = {
	{ 0x20, 0x21 },   /* master 8259 (KVM in-kernel, not flint) */
	{ 0x40, 0x43 },   /* PIT (KVM in-kernel): the probe's TSC calibration and a timer storm */
	{ 0x61, 0x61 },   /* PIT channel 2 gate (KVM in-kernel) */
	{ 0x64, 0x64 },   /* i8042 command port: 0xFE resets the machine */
	{ 0xA0, 0xA1 },   /* slave 8259 (KVM in-kernel) */
	{ 0x3F8, 0x3FF }, /* COM1: the console this probe reports on (flooded separately) */
	{ 0x4D0, 0x4D1 }, /* ELCR (KVM in-kernel) */
	{ 0x600, 0x605 }, /* ACPI PM: sleep control (S5 powers off), reset register */
	{ 0xCF8, 0xCFF }, /* PCI configuration mechanism #1 (attacked by the PCI cases) */
};

static bool port_skipped(uint32_t port)
{
	for (uint32_t i = 0; i < ARRAY_SIZE(g_port_skip); i++)
		if (port >= g_port_skip[i].first && port <= g_port_skip[i].last)
			return true;
	return false;
}

static void port_sweep(void)
{
	uint64_t t0 = rdtsc();
	uint32_t n = 0, ones = 0;
	for (uint32_t port = 0; port < 0x10000; port++) {
		if (port_skipped(port))
			continue;
		outb((uint16_t)port, (uint8_t)(port * 7 + 0x5A));
		if (inb((uint16_t)port) == 0xFF)
			ones++;
		if (port < 0x1000 && (port & 3) == 0 && !port_skipped(port + 3)) {
			outl((uint16_t)port, 0xDEADBEEFu ^ port);
			(void)inl((uint16_t)port);
			outw((uint16_t)(port + 2), 0xA55A);
			(void)inw((uint16_t)(port + 2));
		}
		n++;
	}
	probe_info("port_sweep", "ports=%u skipped=%u read_all_ones=%u ms=%u", n, 0x10000 - n, ones,
		   tsc_to_ms(rdtsc() - t0));
	probe_check("platform_port_sweep", n > 0xFF00, "only %u ports swept", n);
	still_serving("platform_port_sweep_then_io");
}

/* ---------------------------------------------------------------- platform: MMIO */
static uint32_t g_mmio_n, g_mmio_ones;

static void mmio_poke(uint32_t a)
{
	mmio_write32(a, 0xC0DE0000u ^ a);
	if (mmio_read32(a) == 0xFFFFFFFFu)
		g_mmio_ones++;
	g_mmio_n++;
}

static void mmio_range(uint32_t from, uint32_t to, uint32_t stride)
{
	for (uint64_t a = from; a < to; a += stride)
		if (!overlaps_bar(a, 4))
			mmio_poke((uint32_t)a);
}

static uint32_t low_ram_end(void)
{
	uint64_t end = 0;
	for (uint32_t i = 0; i < g_memmap_entries; i++) {
		const struct hvm_memmap_entry *e = &g_memmap[i];
		if (e->type == E820_RAM && e->addr < 0x100000000ull && e->addr + e->size > end)
			end = e->addr + e->size;
	}
	return end > 0xC0000000ull ? 0xC0000000u : (uint32_t)end;
}

static void mmio_sweep(void)
{
	uint64_t t0 = rdtsc();
	uint32_t ram_end = (low_ram_end() + 0xFFFFFu) & ~0xFFFFFu;
	/* An MMIO exit costs ~12-18 us on PVM hosts (and the probe's loop is emulated too), so: every
	 * page where devices and platform pieces sit close together, a stride elsewhere. */
	/* Between the end of RAM and the PCI window: nothing is there; one access per MiB. */
	mmio_range(ram_end, 0xC0000000u, 0x100000u);
	/* The 32-bit BAR window except the BARs: every page of the first 4 MiB (where flint puts the
	 * BARs), then every 64 KiB. */
	mmio_range(0xC0000000u, 0xC0400000u, PAGE);
	mmio_range(0xC0400000u, 0xE0000000u, 0x10000u);
	/* ECAM for buses 1-255 (flint decodes all 256 MiB; only bus 0 exists): every 64 KiB. */
	mmio_range(0xE0100000u, 0xF0000000u, 0x10000u);
	/* Past the boot marker: every page of the first MiB, then every 64 KiB up to the IOAPIC; every
	 * page between the IOAPIC and the LAPIC, and from the LAPIC up to KVM's identity-map and TSS
	 * pages (0xFFFBC000-0xFFFBFFFF), and the top 256 KiB. */
	mmio_range(0xF0001000u, 0xF0100000u, PAGE);
	mmio_range(0xF0100000u, 0xFEC00000u, 0x10000u);
	mmio_range(0xFEC01000u, 0xFEE00000u, PAGE);
	mmio_range(0xFEE01000u, 0xFFFBC000u, PAGE);
	mmio_range(0xFFFC0000u, 0xFFFFF000u, PAGE);
	probe_info("mmio_sweep", "accesses=%u read_all_ones=%u ram_end=0x%x ms=%u", g_mmio_n, g_mmio_ones, ram_end,
		   tsc_to_ms(rdtsc() - t0));
	probe_check("platform_mmio_sweep", g_mmio_n > 20000 && g_mmio_ones == g_mmio_n,
		    "%u accesses, %u read all ones: unclaimed MMIO must read all ones", g_mmio_n, g_mmio_ones);
	/* The LAPIC (skipped above) still answers and RAM is still RAM. */
	volatile uint32_t *scratch = (volatile uint32_t *)SCRATCH_MEM;
	scratch[0] = 0x12345678u;
	probe_check("platform_mmio_sweep_machine_intact",
		    scratch[0] == 0x12345678u && (lapic_read(LAPIC_VERSION) & 0xFF) >= 0x10,
		    "RAM 0x%x LAPIC version 0x%x", scratch[0], lapic_read(LAPIC_VERSION));
	still_serving("platform_mmio_sweep_then_io");
}

/* ---------------------------------------------------------------- platform: serial flood */
/* One 64-byte line: "<tag> nnnnnnn " + letters + "\n" (tag FLOOD: written a byte at a time;
 * FLOODR: written with `rep outsb`). tests/hostile.rs checks every line arrived intact. */
static void flood_line(char *line, const char *tag, uint32_t i)
{
	int at = snprintf(line, 64, "%s %07u ", tag, i);
	for (int j = at; j < 63; j++)
		line[j] = (char)('a' + (i + (uint32_t)j) % 26);
	line[63] = '\n';
}

/* Written straight into the transmit register without waiting for the line status (a driver that
 * ignores THRE): first flood_kib KiB byte by byte, then flood_rep_kib KiB with `rep outsb`, 4 KiB per
 * instruction (KVM may hand the VMM many bytes in one exit). */
static void serial_flood(void)
{
	uint32_t kib = 64, rep_kib = 1024;
	cmdline_get_u32("flood_kib", &kib);
	cmdline_get_u32("flood_rep_kib", &rep_kib);
	probe_info("flood_lines", "%u", kib * 16);
	probe_info("flood_rep_lines", "%u", rep_kib * 16);
	uint64_t t0 = rdtsc();
	char line[64];
	for (uint32_t i = 0; i < kib * 16; i++) {
		flood_line(line, "FLOOD", i);
		for (uint32_t j = 0; j < 64; j++)
			outb(0x3F8, (uint8_t)line[j]);
	}
	uint32_t ms = tsc_to_ms(rdtsc() - t0);
	static char block[PAGE];
	t0 = rdtsc();
	for (uint32_t b = 0; b < rep_kib / 4; b++) {
		for (uint32_t l = 0; l < PAGE / 64; l++)
			flood_line(block + 64 * l, "FLOODR", b * (PAGE / 64) + l);
		const char *src = block;
		uint32_t count = PAGE;
		__asm__ volatile("cld; rep outsb" : "+S"(src), "+c"(count) : "d"(0x3F8) : "memory");
	}
	uint32_t rep_ms = tsc_to_ms(rdtsc() - t0);
	probe_info("flood", "bytes=%u ms=%u rep_bytes=%u rep_ms=%u", kib * 1024, ms, rep_kib * 1024, rep_ms);
	probe_ok("platform_serial_flood");
	still_serving("platform_serial_flood_then_io");
}

/* The registers that end the VM, written with every value that must not: i8042 commands other than
 * 0xFE (pulse reset), sleep types other than S5 through the sleep control register and PM1a control
 * (with SLP_EN), reset-register values other than the FADT's RESET_VALUE (1). Reaching the end of
 * this function is the check. */
static void power_registers_garbage(void)
{
	for (uint32_t cmd = 0; cmd < 0x100; cmd++) {
		if (cmd == 0xFE)
			continue;
		outb(0x64, (uint8_t)cmd);
		outb(0x60, (uint8_t)(cmd ^ 0x5A));
		(void)inb(0x60);
		(void)inb(0x64);
	}
	for (uint32_t typ = 0; typ < 8; typ++) {
		if (typ == 5)
			continue;
		outb(0x600, (uint8_t)(typ << 2 | 0x20));
		outw(0x604, (uint16_t)(typ << 10 | 1u << 13));
	}
	outb(0x605, 0xFF); /* the high byte of PM1a control on its own */
	for (uint32_t val = 0; val < 0x100; val++)
		if (val != 1)
			outb(0x602, (uint8_t)val);
	probe_ok("platform_power_registers_garbage");
	still_serving("platform_power_registers_garbage_then_io");
}

/* String port input (`rep insb` / `rep insl`): KVM's instruction emulator reads ahead, so one exit
 * may ask the VMM for many elements of the same port. Each element must be what a single `in`
 * returns. */
static void string_pio_in(void)
{
	uint8_t lsr = inb(0x3FD), b[16];
	memset(b, 0x11, sizeof(b));
	uint8_t *dst = b;
	uint32_t count = sizeof(b);
	__asm__ volatile("cld; rep insb" : "+D"(dst), "+c"(count) : "d"(0x3FD) : "memory");
	uint32_t bad_b = 0;
	for (uint32_t i = 0; i < sizeof(b); i++)
		if (b[i] != lsr)
			bad_b++;
	outl(CFG_ADDR, cf8(0, 0));
	uint32_t id = inl(CFG_DATA), l[8];
	memset(l, 0x11, sizeof(l));
	uint32_t *dl = l;
	count = 8;
	__asm__ volatile("cld; rep insl" : "+D"(dl), "+c"(count) : "d"(CFG_DATA) : "memory");
	uint32_t bad_l = 0;
	for (uint32_t i = 0; i < 8; i++)
		if (l[i] != id)
			bad_l++;
	probe_info("string_pio_in", "insb_lsr=0x%x got=%02x,%02x,%02x,%02x insl_id=0x%x got=0x%x,0x%x,0x%x", lsr, b[0],
		   b[1], b[2], b[15], id, l[0], l[1], l[7]);
	probe_check("platform_string_pio_in", bad_b == 0 && bad_l == 0,
		    "rep insb of the UART's line status: %u of 16 bytes differ from inb (0x%x); "
		    "rep insl of 0xCFC: %u of 8 dwords differ from inl (0x%x)",
		    bad_b, lsr, bad_l, id);
}

void probe_main(void)
{
	(void)tsc_khz(); /* calibrate now: the port sweep must not race the PIT */
	pci_scan();
	probe_info("functions", "%u", g_nfns);
	uint8_t nvme = 0xFF, vblk = 0xFF;
	for (uint32_t i = 0; i < g_nfns; i++) {
		if (g_fns[i].class_rev >> 8 == 0x010802 && nvme == 0xFF)
			nvme = g_fns[i].dev;
		if (g_fns[i].id == 0x10421AF4u && vblk == 0xFF)
			vblk = g_fns[i].dev;
	}
	if (!probe_check("devices_found", nvme != 0xFF && vblk != 0xFF, "nvme slot 0x%x, virtio-blk slot 0x%x", nvme,
			 vblk))
		return;
	bool a = nvme_init(nvme), b = virtio_init(vblk);
	if (!a || !b)
		return;
	still_serving("baseline_io");

	nvme_attacks();
	virtio_attacks();
	pci_attacks();
	smp_attacks();
	if (!cmdline_is("skip", "platform")) {
		string_pio_in();
		power_registers_garbage();
		port_sweep();
		mmio_sweep();
		serial_flood();
	}
	still_serving("final_io");
}
