/*
 * virtio-blk probe: drives the first modern virtio-blk device on PCI bus 0 (1af4:1042) the way a
 * driver does (docs/virtio.md), one PROBE line per check:
 *
 *   pci       ids, class 01/00, revision 1; memory space + bus master; the vendor capabilities
 *             (common, notify with its multiplier, ISR, device config) inside BAR0; MSI-X.
 *   features  VERSION_1 offered; FEATURES_OK refused without VERSION_1; accepted with VERSION_1 +
 *             FLUSH + EVENT_IDX + INDIRECT_DESC (those offered); RO matches expect_readonly.
 *   config    capacity (expect_sectors), blk_size 512, seg_max >= 1.
 *   queue     a queue size that is not a power of two is refused (reads back the old size); 16
 *             accepted; MSI-X vector 1 for the queue, 0 for configuration; DRIVER_OK.
 *   msix      the first completion with the queue's vector masked sets its PBA bit; unmasking
 *             delivers it (seen in the LAPIC IRR with IF=0).
 *   data      pattern write (sectors 0-7 and the last 8), FLUSH, read back and compare (in read-only
 *             mode the test fills the file with the pattern and the write must fail with IOERR);
 *             a read through an indirect descriptor table; GET_ID (expect_id); DISCARD then read
 *             zeroes (when offered).
 *   errors    a read past the capacity and one straddling it -> IOERR; a data buffer outside guest
 *             RAM -> IOERR or dropped, and a descriptor loop -> IOERR or dropped, each followed by
 *             a good read.
 *   reset     status 0 reads back 0 and disables the queue; the whole initialisation again, then a
 *             read that returns the pattern.
 *
 * The data pattern (tests/virtio_blk.rs checks the disk file): the little-endian dword at byte offset
 * o of the disk (o a multiple of 4) is  pattern(o) = (o/4) * 0x9E3779B1 + 0x766C626B  (mod 2^32).
 *
 * Command-line keys: expect_sectors=N, expect_id=S, expect_readonly=0|1 (default 0),
 * expect_disks=N (virtio-blk functions on bus 0), exit=... (see the boot probe);
 * mode=flushloop [flush_seconds=N] and mode=fulldisk replace the data, error and reset checks with the
 * durability modes described at durability() below.
 *
 * bench=1 replaces the functional checks with a benchmark (see bench_main below): discovery,
 * negotiation and one polled queue, then timed phases whose results are PROBE-INFO bench_* lines.
 * The capabilities may sit in any BAR (QEMU's virtio-blk-pci puts them in BAR 4), so the same
 * probe runs under QEMU with -device virtio-blk-pci,disable-legacy=on.
 */
#include "probe.h"
#include "bench.h"
#include "records.h"
#include "virtio.h"

const char probe_name[] = "virtio_blk";

/* ---------------------------------------------------------------- virtio-blk definitions */
/* feature bits */
#define F_BLK_SEG_MAX 2
#define F_BLK_RO 5
#define F_BLK_BLK_SIZE 6
#define F_BLK_FLUSH 9
#define F_BLK_DISCARD 13
#define F_BLK_WRITE_ZEROES 14

#define QSZ 16
#define VEC_CONFIG 0x50
#define VEC_QUEUE 0x51

/* Guest RAM the device sees: ring (descriptors, available ring; used ring on the next page),
 * request header, status bytes, data buffers, an indirect table. */
static uint8_t g_ring[2 * 4096] __attribute__((aligned(4096)));
static struct blk_req g_hdr __attribute__((aligned(16)));
static volatile uint8_t g_status[16] __attribute__((aligned(16)));
static uint8_t g_buf[4096] __attribute__((aligned(4096)));
static uint8_t g_buf2[4096] __attribute__((aligned(4096)));
static struct vdesc g_itable[4] __attribute__((aligned(16)));

#define DESC ((volatile struct vdesc *)g_ring)
#define AVAIL ((volatile uint16_t *)(g_ring + 16 * QSZ)) /* flags, idx, ring[QSZ], used_event */
#define USED ((volatile uint8_t *)(g_ring + 4096))       /* flags, idx, {id, len}[QSZ], avail_event */

static struct {
	struct virtio_pci vp;
	uintptr_t bar;
	uint64_t bar_size;
	uint64_t bars[6], bar_sizes[6]; /* every BAR (0 if absent); a 64-bit one in its low slot */
	uint8_t msix_cap;
	uintptr_t msix_table, msix_pba;
	uint32_t msix_vectors;
	uint64_t offered, features, sectors;
	uint16_t avail_idx, used_idx, notify_off;
	bool readonly;
} v;
static struct virtio_pci *const vp = &v.vp;

static uint32_t pattern(uint64_t off) { return (uint32_t)(off / 4) * 0x9E3779B1u + 0x766C626Bu; }
static void fill_pattern(uint8_t *buf, uint64_t disk_off, uint32_t len)
{
	uint32_t *p = (uint32_t *)buf;
	for (uint32_t i = 0; i < len / 4; i++)
		p[i] = pattern(disk_off + 4 * i);
}
/* Byte index of the first dword that differs from the pattern, or -1. */
static int32_t check_pattern(const uint8_t *buf, uint64_t disk_off, uint32_t len)
{
	const uint32_t *p = (const uint32_t *)buf;
	for (uint32_t i = 0; i < len / 4; i++)
		if (p[i] != pattern(disk_off + 4 * i))
			return (int32_t)(4 * i);
	return -1;
}

static bool lapic_irr(uint32_t vec) { return lapic_read(0x200 + 0x10 * (vec / 32)) & (1u << (vec % 32)); }

/* ---------------------------------------------------------------- discovery */
static bool find_device(void)
{
	uint32_t found = pci_find_functions(0x10421AF4u, &vp->dev);
	probe_info("vblk_functions", "%u", found);
	probe_expect_u32("vblk_device_count", "expect_disks", found);
	if (!found) {
		probe_fail("vblk_found", "no 1af4:1042 function on bus 0");
		return false;
	}
	probe_ok("vblk_found");
	probe_info("vblk_slot", "%02x", vp->dev);
	uint32_t class_rev = cfg_read32(vp->dev, 8), subsys = cfg_read32(vp->dev, 0x2C);
	probe_check("vblk_ids", class_rev == 0x01000001u && (subsys & 0xFFFF) == 0x1AF4,
		    "class/revision 0x%x (want 01/00/00 rev 1), subsystem 0x%x", class_rev, subsys);
	return true;
}

/* Sizes BAR `i` (memory decode must be off); returns the size of a memory BAR, 0 for none, and
 * whether it is 64-bit. */
static uint64_t size_bar(uint8_t i, bool *is64)
{
	uint16_t reg = (uint16_t)(0x10 + 4 * i);
	uint32_t lo = cfg_read32(vp->dev, reg);
	*is64 = false;
	if (lo & 1)
		return 0; /* I/O space */
	outl(CFG_ADDR, cf8(vp->dev, reg));
	outl(CFG_DATA, 0xFFFFFFFFu);
	uint32_t mask = inl(CFG_DATA);
	outl(CFG_DATA, lo);
	if (!(mask & ~0xFu))
		return 0;
	*is64 = ((lo >> 1) & 3) == 2;
	return (uint64_t)(~(mask & ~0xFu) + 1u);
}

static bool map_device(void)
{
	for (uint8_t i = 0; i < 6; i++) {
		bool is64;
		uint64_t size = size_bar(i, &is64);
		uint32_t lo = cfg_read32(vp->dev, (uint16_t)(0x10 + 4 * i));
		uint32_t hi = is64 && i < 5 ? cfg_read32(vp->dev, (uint16_t)(0x14 + 4 * i)) : 0;
		v.bars[i] = size ? ((uint64_t)hi << 32) | (lo & ~0xFu) : 0;
		v.bar_sizes[i] = size;
		if (is64)
			i++;
	}
	uint32_t lo = cfg_read32(vp->dev, 0x10), hi = cfg_read32(vp->dev, 0x14);
	uint64_t addr = v.bars[0];
	v.bar_size = v.bar_sizes[0];
	bool ok = ((lo >> 1) & 3) == 2 && addr && addr + v.bar_size <= 0x100000000ull;
	if (!cmdline_is("bench", "1"))
		probe_check("vblk_bar0", ok, "BAR0 0x%x:%x size 0x%llx: want a 64-bit BAR below 4 GiB", hi, lo,
			    v.bar_size);
	else if (!ok)
		probe_info("vblk_bar0", "0x%x:%x size 0x%llx (not flint's layout)", hi, lo, v.bar_size);
	v.bar = (uintptr_t)addr;
	cfg_write16(vp->dev, 0x04, cfg_read16(vp->dev, 0x04) | 0x6); /* memory space + bus master */
	return ok || cmdline_is("bench", "1");
}

/* The guest address of `off` in BAR `bar`, or 0 if that is not reachable (above 4 GiB, or past the
 * BAR's end). */
static uintptr_t bar_addr(uint8_t bar, uint64_t off, uint64_t len)
{
	if (bar > 5 || !v.bars[bar] || off + len > v.bar_sizes[bar] || v.bars[bar] + off + len > 0x100000000ull)
		return 0;
	return (uintptr_t)(v.bars[bar] + off);
}

static bool walk_caps(void)
{
	uint32_t n = 0;
	bool inside = true;
	char ids[96] = "";
	size_t len = 0;
	for (uint8_t ptr = pci_cap_first(vp->dev); ptr && n++ < 32; ptr = pci_cap_next(vp->dev, ptr)) {
		if (cfg_read8(vp->dev, ptr) == 0x11)
			v.msix_cap = ptr;
		struct virtio_cap cap;
		if (!virtio_cap_read(vp->dev, ptr, &cap))
			continue;
		if (len + 16 < sizeof(ids))
			len += (size_t)snprintf(ids + len, sizeof(ids) - len, "%s%u@%x+%x", len ? "," : "", cap.type,
						cap.offset, cap.length);
		uintptr_t a = bar_addr(cap.bar, cap.offset, cap.length);
		/* flint puts everything in BAR 0; other VMMs (bench=1) may not. */
		if (virtio_cap_record(vp, &cap, a) && (!a || (cap.bar != 0 && !cmdline_is("bench", "1"))))
			inside = false;
	}
	probe_info("vblk_caps", "%s", ids);
	bool all = virtio_caps_complete(vp);
	probe_check("vblk_caps", all && inside && vp->common_len >= 0x38 && vp->notify_mult == 4,
		    "types seen 0x%x, inside BAR0 %u, common length 0x%x, notify multiplier %u", vp->caps_seen, inside,
		    vp->common_len, vp->notify_mult);
	if (!all || !inside)
		return false;
	if (!v.msix_cap) {
		probe_fail("vblk_msix_cap", "no MSI-X capability");
		return true;
	}
	uint16_t control = cfg_read16(vp->dev, v.msix_cap + 2);
	uint32_t table = cfg_read32(vp->dev, v.msix_cap + 4), pba = cfg_read32(vp->dev, v.msix_cap + 8);
	v.msix_vectors = (control & 0x7FF) + 1u;
	uintptr_t table_at = bar_addr(table & 7, table & ~7u, 16u * v.msix_vectors);
	uintptr_t pba_at = bar_addr(pba & 7, pba & ~7u, 8);
	bool fits = table_at && pba_at;
	probe_check("vblk_msix_cap", fits && v.msix_vectors >= 2, "%u vectors, table 0x%x, PBA 0x%x", v.msix_vectors,
		    table, pba);
	if (!fits)
		return true;
	v.msix_table = table_at;
	v.msix_pba = pba_at;
	/* Entry 0: configuration changes, entry 1: the queue; both masked for now. */
	for (uint32_t e = 0; e < 2; e++) {
		mmio_write32(v.msix_table + 16 * e, 0xFEE00000u);
		mmio_write32(v.msix_table + 16 * e + 4, 0);
		mmio_write32(v.msix_table + 16 * e + 8, e ? VEC_QUEUE : VEC_CONFIG);
		mmio_write32(v.msix_table + 16 * e + 12, 1);
	}
	cfg_write16(vp->dev, v.msix_cap + 2, (uint16_t)((control | 0x8000) & ~0x4000));
	return true;
}

/* ---------------------------------------------------------------- initialisation */
static uint8_t negotiate(uint64_t features) { return vp_negotiate(vp, features); }

/* Queue 0: fresh ring, size QSZ, vector 1; DRIVER_OK. Returns the status read back. */
static uint8_t setup_queue(void)
{
	memset(g_ring, 0, sizeof(g_ring));
	v.avail_idx = v.used_idx = 0;
	vp_write16(vp, C_MSIX, 0);
	v.notify_off = vp_queue_setup(vp, 0, QSZ, (uintptr_t)DESC, (uintptr_t)AVAIL, (uintptr_t)USED, 1);
	vp_write8(vp, C_STATUS, S_READY);
	return vp_read8(vp, C_STATUS);
}

/* ---------------------------------------------------------------- requests */
static uint32_t g_used_len;

/* Publishes head descriptor `head`, notifies and waits for the used ring; returns false on timeout. */
static bool kick_and_wait(uint16_t head)
{
	AVAIL[2 + v.avail_idx % QSZ] = head;
	AVAIL[2 + QSZ] = v.used_idx; /* used_event: interrupt on the next completion */
	mb();
	AVAIL[1] = ++v.avail_idx;
	mb();
	vp_notify(vp, v.notify_off);
	uint64_t dl = deadline_ms(2000);
	while (*(volatile uint16_t *)(USED + 2) == v.used_idx)
		if (deadline_passed(dl))
			return false;
	uint32_t slot = v.used_idx % QSZ;
	g_used_len = *(volatile uint32_t *)(USED + 4 + 8 * slot + 4);
	v.used_idx++;
	return true;
}

static void set_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	vdesc_set(DESC, i, addr, len, flags, next);
}

/* A three-descriptor request (header, data, status); returns the status byte, ST_UNTOUCHED if the
 * device returned the chain without writing it, 0xFF on a timeout. */
static uint8_t request64(uint32_t type, uint64_t sector, uint64_t data, uint32_t len, bool device_writes)
{
	g_hdr.type = type;
	g_hdr.reserved = 0;
	g_hdr.sector = sector;
	g_status[0] = ST_UNTOUCHED;
	if (len) {
		set_desc(0, (uintptr_t)&g_hdr, 16, D_NEXT, 1);
		set_desc(1, data, len, D_NEXT | (device_writes ? D_WRITE : 0), 2);
		set_desc(2, (uintptr_t)g_status, 1, D_WRITE, 0);
	} else {
		set_desc(0, (uintptr_t)&g_hdr, 16, D_NEXT, 2);
		set_desc(2, (uintptr_t)g_status, 1, D_WRITE, 0);
	}
	if (!kick_and_wait(0))
		return 0xFF;
	return g_status[0];
}
static uint8_t request(uint32_t type, uint64_t sector, void *data, uint32_t len, bool device_writes)
{
	return request64(type, sector, (uintptr_t)data, len, device_writes);
}

/* Reads `len` bytes at `sector` into g_buf2 and compares with the pattern. */
static void read_verify(const char *name, uint64_t sector, uint32_t len)
{
	memset(g_buf2, 0, len);
	uint8_t st = request(T_IN, sector, g_buf2, len, true);
	int32_t bad = st == ST_OK ? check_pattern(g_buf2, sector * 512, len) : -1;
	probe_check(name, st == ST_OK && bad < 0 && g_used_len == len + 1,
		    "status %u, used length %u, first mismatch at byte %d of sector %llu", st, g_used_len, bad, sector);
}

/* ---------------------------------------------------------------- the checks */
static void check_msix_first_completion(void)
{
	if (!v.msix_table)
		return;
	/* The write that just completed raised vector 1, which is masked: its PBA bit is set. */
	uint64_t dl = deadline_ms(1000);
	bool pending;
	while (!(pending = mmio_read32(v.msix_pba) & 2) && !deadline_passed(dl))
		;
	probe_check("vblk_msix_pending", pending, "PBA 0x%x after a completion on a masked vector",
		    mmio_read32(v.msix_pba));
	/* Unmask: delivered to the LAPIC (software-enabled, IF=0 so it stays in the IRR). */
	lapic_write(0x350, 1u << 16);    /* LINT0 masked */
	lapic_write(0xF0, 0x100 | 0xFF); /* SVR: enabled, spurious vector 0xFF */
	mmio_write32(v.msix_table + 16 + 12, 0);
	dl = deadline_ms(1000);
	bool irr;
	while (!(irr = lapic_irr(VEC_QUEUE)) && !deadline_passed(dl))
		;
	probe_check("vblk_msix_irq", irr && !(mmio_read32(v.msix_pba) & 2), "vector 0x%x in IRR %u, PBA 0x%x",
		    VEC_QUEUE,
		    irr, mmio_read32(v.msix_pba));
}

static void check_data(void)
{
	uint64_t last = v.sectors >= 16 ? v.sectors - 8 : 0;
	if (!v.readonly) {
		fill_pattern(g_buf, 0, 4096);
		uint8_t st = request(T_OUT, 0, g_buf, 4096, false);
		bool first = st == ST_OK && g_used_len == 1;
		check_msix_first_completion();
		if (last) {
			fill_pattern(g_buf, last * 512, 4096);
			st = request(T_OUT, last, g_buf, 4096, false);
		}
		probe_check("vblk_write", first && st == ST_OK, "status %u (first write ok %u)", st, first);
	} else {
		/* A write on a read-only disk fails and changes nothing (read_verify below). */
		memset(g_buf, 0x5A, 4096);
		uint8_t st = request(T_OUT, 0, g_buf, 4096, false);
		probe_check("vblk_readonly_write", st == ST_IOERR, "status %u, want IOERR", st);
		check_msix_first_completion();
	}
	uint8_t st = request(T_FLUSH, 0, NULL, 0, false);
	probe_check("vblk_flush", st == ST_OK, "status %u", st);
	read_verify("vblk_read_verify", 0, 4096);
	if (last)
		read_verify("vblk_read_verify_last", last, 4096);

	/* The same read through an indirect table. */
	if (has_feature(v.features, F_INDIRECT)) {
		g_hdr.type = T_IN;
		g_hdr.sector = 2;
		g_status[0] = ST_UNTOUCHED;
		memset(g_buf2, 0, 1024);
		g_itable[0] = (struct vdesc){(uintptr_t)&g_hdr, 16, D_NEXT, 1};
		g_itable[1] = (struct vdesc){(uintptr_t)g_buf2, 1024, D_NEXT | D_WRITE, 2};
		g_itable[2] = (struct vdesc){(uintptr_t)g_status, 1, D_WRITE, 0};
		set_desc(3, (uintptr_t)g_itable, 3 * sizeof(struct vdesc), D_INDIRECT, 0);
		bool done = kick_and_wait(3);
		int32_t bad = check_pattern(g_buf2, 1024, 1024);
		probe_check("vblk_indirect_read", done && g_status[0] == ST_OK && bad < 0,
			    "done %u status %u mismatch at %d",
			    done, g_status[0], bad);
	}

	/* GET_ID */
	memset(g_buf2, 0, 32);
	st = request(T_GET_ID, 0, g_buf2, 20, true);
	char id[21];
	memcpy(id, g_buf2, 20);
	id[20] = 0;
	probe_info("vblk_id", "%s", id);
	char want[32];
	if (cmdline_get("expect_id", want, sizeof(want)))
		probe_check("vblk_get_id", st == ST_OK && strcmp(id, want) == 0, "status %u id '%s', want '%s'", st, id,
			    want);
	else
		probe_check("vblk_get_id", st == ST_OK && id[0], "status %u, id '%s'", st, id);

	/* Past the capacity: entirely, and straddling the end. */
	uint8_t past = request(T_IN, v.sectors, g_buf2, 512, true);
	uint8_t straddle = request(T_IN, v.sectors - 1, g_buf2, 1024, true);
	uint8_t huge = request(T_IN, 0xFFFFFFFFFFFFFFFFull, g_buf2, 512, true);
	probe_check("vblk_beyond_capacity", past == ST_IOERR && straddle == ST_IOERR && huge == ST_IOERR,
		    "status %u / %u / %u, want IOERR", past, straddle, huge);

	/* DISCARD sectors 16-23 after writing them; they read back as zeroes. */
	if (has_feature(v.features, F_BLK_DISCARD) && !v.readonly) {
		fill_pattern(g_buf, 16 * 512, 4096);
		uint8_t w = request(T_OUT, 16, g_buf, 4096, false);
		struct {
			uint64_t sector;
			uint32_t count, flags;
		} PACKED seg = {16, 8, 0};
		memcpy(g_buf, &seg, sizeof(seg));
		uint8_t d = request(T_DISCARD, 0, g_buf, sizeof(seg), false);
		memset(g_buf2, 0xFF, 4096);
		uint8_t r = request(T_IN, 16, g_buf2, 4096, true);
		uint32_t nonzero = 0;
		for (uint32_t i = 0; i < 4096 / 4; i++)
			nonzero |= ((uint32_t *)g_buf2)[i];
		probe_check("vblk_discard", w == ST_OK && d == ST_OK && r == ST_OK && !nonzero,
			    "write %u discard %u read %u, data %s", w, d, r, nonzero ? "not zero" : "zero");
	}
}

static void check_errors(void)
{
	/* Data buffers outside guest RAM: beyond 4 GiB + RAM, and in the PCI hole. */
	static const uint64_t bad_addrs[] = {0x4000000000ull, 0xD0000000ull};
	for (uint32_t i = 0; i < ARRAY_SIZE(bad_addrs); i++) {
		uint8_t st = request64(T_IN, 0, bad_addrs[i], 512, true);
		bool handled = st == ST_IOERR || (st == ST_UNTOUCHED && g_used_len == 0);
		char name[40];
		snprintf(name, sizeof(name), "vblk_bad_descriptor%u", i);
		probe_check(name, handled, "buffer at 0x%llx: status %u used length %u, want IOERR or dropped",
			    bad_addrs[i],
			    st, g_used_len);
		snprintf(name, sizeof(name), "vblk_after_bad_descriptor%u", i);
		read_verify(name, 0, 512);
	}
	/* A descriptor loop: 0 -> 1 -> 0. */
	g_hdr.type = T_IN;
	g_hdr.sector = 0;
	g_status[0] = ST_UNTOUCHED;
	set_desc(0, (uintptr_t)&g_hdr, 16, D_NEXT, 1);
	set_desc(1, (uintptr_t)g_buf2, 512, D_NEXT | D_WRITE, 0);
	bool done = kick_and_wait(0);
	probe_check("vblk_descriptor_loop", done && (g_status[0] == ST_IOERR || g_used_len == 0),
		    "done %u status %u used length %u", done, g_status[0], g_used_len);
	read_verify("vblk_after_descriptor_loop", 1, 512);
}

static void check_reset(void)
{
	vp_write8(vp, C_STATUS, 0);
	uint8_t status = vp_read8(vp, C_STATUS);
	vp_write16(vp, C_Q_SELECT, 0);
	uint16_t enabled = vp_read16(vp, C_Q_ENABLE), vec = vp_read16(vp, C_Q_MSIX);
	vp_write32(vp, C_GFSELECT, 1);
	uint32_t gf = vp_read32(vp, C_GF);
	probe_check("vblk_reset", status == 0 && enabled == 0 && vec == 0xFFFF && gf == 0,
		    "status %u, queue enable %u, vector 0x%x, driver features hi 0x%x after reset", status, enabled,
		    vec, gf);
	uint8_t s1 = negotiate(v.features);
	uint8_t s2 = setup_queue();
	probe_check("vblk_reinit", s1 == 0xB && s2 == 0xF, "status 0x%x then 0x%x", s1, s2);
	read_verify("vblk_read_after_reset", 0, 4096);
}

/* ---------------------------------------------------------------- durability (mode=flushloop|fulldisk) */
/*
 * The records of lib/records.h (record r at sector r), staged in guest RAM at DUR_BASE + 512 * r. A
 * generation writes records [0, n) with requests of 1, 2, 4, 1, 8 and 16 pages (one data
 * descriptor each), one request at a time, then FLUSH (VIRTIO_BLK_F_FLUSH is negotiated, so the
 * device is write-back and only FLUSH makes writes durable).
 *
 * mode=flushloop (256 records, 128 KiB): generations 1, 2, ... each followed, once its FLUSH
 * completed with VIRTIO_BLK_S_OK, by PROBE-INFO flushed=<g>, with no pause, until the VMM is killed
 * or flush_seconds (default 20) pass; then PROBE vblk_flushloop ok and PROBE-INFO generations=<g>.
 *
 * mode=fulldisk (a file that cannot grow past a few MiB):
 *   vblk_fulldisk_flushed       generation 1 of records [0, 64) written and flushed (flushed=1)
 *   vblk_fulldisk_write_error   64 KiB writes from sector 2048 on until one fails: VIRTIO_BLK_S_IOERR
 *                               before the end of the disk (PROBE-INFO fulldisk_written=<bytes>)
 *   vblk_fulldisk_retries       20 retries of that write fail the same way
 *   vblk_fulldisk_flush_after   FLUSH still succeeds
 *   vblk_fulldisk_read_flushed  the records read back as generation 1
 *   vblk_fulldisk_overwrite     generation 2 over the same records and FLUSH succeed (flushed=2) and
 *                               read back
 */
#define DUR_BASE 0x1000000u            /* 16 MiB: the record buffer (128 KiB) */
#define DUR_READ (DUR_BASE + 0x20000u)  /* read-back buffer */
#define DUR_END (DUR_BASE + 0x40000u)
#define DUR_FILL_XFER 0x10000u
static const uint8_t dur_chunks[] = {1, 2, 4, 1, 8, 16}; /* pages per request */

/* Reads or writes the first `pages` pages of records between sector 0 and `buf`; returns the first
 * status that is not OK. */
static uint8_t dur_records_io(uint32_t type, uintptr_t buf, uint32_t pages)
{
	uint32_t done = 0;
	for (uint32_t n = 0; n < ARRAY_SIZE(dur_chunks) && done < pages; n++) {
		uint8_t st = request64(type, done * 8u, buf + done * 4096u, dur_chunks[n] * 4096u, type == T_IN);
		if (st != ST_OK)
			return st;
		done += dur_chunks[n];
	}
	return ST_OK;
}

static bool dur_generation(uint32_t n, uint32_t g, const char *name)
{
	for (uint32_t r = 0; r < n; r++)
		rec_stamp((uint32_t *)(uintptr_t)(DUR_BASE + r * REC_BYTES), r, g);
	uint8_t st = dur_records_io(T_OUT, DUR_BASE, n * REC_BYTES / 4096u);
	if (st != ST_OK) {
		probe_fail(name, "generation %u: a write got status %u", g, st);
		return false;
	}
	st = request(T_FLUSH, 0, NULL, 0, false);
	if (st != ST_OK) {
		probe_fail(name, "generation %u: FLUSH got status %u", g, st);
		return false;
	}
	probe_info("flushed", "%u", g);
	return true;
}

static bool dur_read_back(uint32_t n, uint32_t g, char *why, size_t len)
{
	memset((void *)DUR_READ, 0, n * REC_BYTES);
	uint8_t st = dur_records_io(T_IN, DUR_READ, n * REC_BYTES / 4096u);
	if (st != ST_OK) {
		snprintf(why, len, "read status %u", st);
		return false;
	}
	for (uint32_t r = 0; r < n; r++) {
		const volatile uint32_t *p = (const volatile uint32_t *)(uintptr_t)(DUR_READ + r * REC_BYTES);
		int32_t bad = rec_check(p, r, g);
		if (bad >= 0) {
			snprintf(why, len, "record %u dword %d is 0x%08x, want generation %u", r, bad, p[bad], g);
			return false;
		}
	}
	return true;
}

static void durability(void)
{
	if (!probe_check("vblk_dur_memory", memmap_is_ram(DUR_BASE, DUR_END - DUR_BASE), "0x%x+0x%x is not RAM",
			 DUR_BASE, DUR_END - DUR_BASE))
		return;
	probe_check("vblk_flush_feature", has_feature(v.features, F_BLK_FLUSH),
		    "VIRTIO_BLK_F_FLUSH not negotiated (0x%llx)",
		    v.features);
	for (uint32_t r = 0; r < 256; r++)
		rec_init((uint32_t *)(uintptr_t)(DUR_BASE + r * REC_BYTES), r);
	if (cmdline_is("mode", "flushloop")) {
		uint32_t seconds = 20, g = 0;
		cmdline_get_u32("flush_seconds", &seconds);
		uint64_t end = deadline_ms(seconds * 1000u);
		while (!deadline_passed(end))
			if (!dur_generation(256, ++g, "vblk_flushloop"))
				return;
		probe_info("generations", "%u", g);
		probe_check("vblk_flushloop", g > 0, "no generation in %u s", seconds);
		return;
	}

	char why[160] = "";
	if (!dur_generation(64, 1, "vblk_fulldisk_flushed"))
		return;
	probe_ok("vblk_fulldisk_flushed");
	uint64_t sector = 2048, written = 0;
	uint8_t st = ST_OK;
	while ((sector + DUR_FILL_XFER / 512) <= v.sectors) {
		st = request64(T_OUT, sector, DUR_BASE, DUR_FILL_XFER, false);
		if (st != ST_OK)
			break;
		written += DUR_FILL_XFER;
		sector += DUR_FILL_XFER / 512;
	}
	probe_info("fulldisk_written", "%llu", written);
	probe_check("vblk_fulldisk_write_error", st == ST_IOERR,
		    "the write at sector %llu: status %u, want IOERR before the end of the disk", sector, st);
	if (st == ST_IOERR) {
		uint32_t same = 0;
		for (uint32_t i = 0; i < 20; i++)
			same += request64(T_OUT, sector, DUR_BASE, DUR_FILL_XFER, false) == ST_IOERR;
		probe_check("vblk_fulldisk_retries", same == 20, "%u of 20 retries failed with IOERR", same);
	}
	st = request(T_FLUSH, 0, NULL, 0, false);
	probe_check("vblk_fulldisk_flush_after", st == ST_OK, "FLUSH after the failed write: status %u", st);
	probe_check("vblk_fulldisk_read_flushed", dur_read_back(64, 1, why, sizeof(why)), "%s", why);
	bool ok = dur_generation(64, 2, "vblk_fulldisk_overwrite") && dur_read_back(64, 2, why, sizeof(why));
	if (ok || why[0])
		probe_check("vblk_fulldisk_overwrite", ok, "generation 2: %s", why);
}

/* ---------------------------------------------------------------- benchmark (bench=1) */
/*
 * After discovery and negotiation (VERSION_1, FLUSH, EVENT_IDX, SEG_MAX, BLK_SIZE where offered), one
 * queue of BENCH_QSZ entries in RAM at BENCH_BASE, polled: the queue's MSI-X vector stays masked
 * and used_event is kept just behind the used index, so the device never has to interrupt. Each
 * request is three descriptors (header, one data buffer, status), prepared once per phase; per
 * request the probe writes only the sector, the status byte and the available ring, and notifies
 * only when avail_event says the device is waiting (as Linux's virtio_ring does). Phases:
 *
 *   seqread         bench_xfer_kib (default 1024) reads, bench_seq_qd (default 1) at a time, over the
 *                   whole disk
 *   seqwrite        the same, writes (the data is whatever is in the buffer)
 *   randread_qd1    4 KiB reads at random 4 KiB-aligned offsets, one at a time
 *   randread_qd32   the same with 32 outstanding
 *
 * bench_seq_ops=N requests per sequential phase (default 2048), bench_ops=N per random phase
 * (default 10000), bench_phases=a+b+... runs only the named phases, bench_gap_ms=N (default 0)
 * idles that long after each phase's line (so a host-side sampler of the VMM's CPU time sees each
 * phase apart). Each prints
 *   PROBE-INFO bench_<phase>=ops=N bytes=N us=N iops=N mbps=N errors=N qd=N xfer=N notifies=N
 * (us from the TSC; mbps is decimal MB/s) and PROBE bench_no_errors checks every status.
 */
#define BENCH_BASE 0x1000000u        /* 16 MiB: ring, headers, status bytes */
#define BENCH_BUF (BENCH_BASE + 0x100000u) /* data buffers: qd x xfer */
#define BENCH_QSZ 128u
#define BENCH_MAX_QD 32u
#define BENCH_MAX_XFER (4u << 20)

#define B_DESC ((volatile struct vdesc *)BENCH_BASE)
#define B_AVAIL ((volatile uint16_t *)(BENCH_BASE + 0x1000)) /* flags, idx, ring[], used_event */
#define B_USED ((volatile uint8_t *)(BENCH_BASE + 0x2000))   /* flags, idx, {id, len}[], avail_event */
#define B_HDR ((volatile struct blk_req *)(BENCH_BASE + 0x3000))
#define B_STATUS ((volatile uint8_t *)(BENCH_BASE + 0x3800))

static uint16_t b_avail, b_used;

static uint8_t bench_setup_queue(void)
{
	memset((void *)BENCH_BASE, 0, 0x4000);
	b_avail = b_used = 0;
	vp_write16(vp, C_MSIX, 0);
	v.notify_off = vp_queue_setup(vp, 0, BENCH_QSZ, (uintptr_t)B_DESC, (uintptr_t)B_AVAIL, (uintptr_t)B_USED, 1);
	vp_write8(vp, C_STATUS, S_READY);
	return vp_read8(vp, C_STATUS);
}

/* Keeps up to qd requests of xfer bytes outstanding until ops completed. Returns false on a stall
 * (nothing completed for 5 s). */
static bool bench_run(const char *name, uint32_t type, uint32_t xfer, uint32_t qd, bool random, uint32_t ops,
		      uint32_t *errors)
{
	uint64_t disk = v.sectors * 512;
	uint32_t units = (uint32_t)(disk >> 12);
	bool event_idx = has_feature(v.features, F_EVENT_IDX);
	uint16_t dflags = D_NEXT | (type == T_IN ? D_WRITE : 0);
	for (uint32_t i = 0; i < qd; i++) {
		B_HDR[i].type = type;
		B_HDR[i].reserved = 0;
		B_DESC[3 * i] = (struct vdesc){(uintptr_t)&B_HDR[i], 16, D_NEXT, (uint16_t)(3 * i + 1)};
		B_DESC[3 * i + 1] = (struct vdesc){BENCH_BUF + i * xfer, xfer, dflags, (uint16_t)(3 * i + 2)};
		B_DESC[3 * i + 2] = (struct vdesc){(uintptr_t)&B_STATUS[i], 1, D_WRITE, 0};
	}
	uint16_t free_slots[BENCH_MAX_QD];
	uint32_t nfree = 0;
	for (uint32_t i = 0; i < qd; i++)
		free_slots[nfree++] = (uint16_t)(qd - 1 - i);
	uint32_t submitted = 0, completed = 0, errs = 0, notifies = 0;
	struct bench_offsets offsets = { random, units, xfer, 0, disk, 0 };
	uint64_t t0 = rdtsc(), progress = t0, stall = (uint64_t)tsc_khz() * 5000;
	uintptr_t notify = vp_notify_addr(vp, v.notify_off);
	volatile uint16_t *used_idx = (volatile uint16_t *)(B_USED + 2);
	volatile uint16_t *avail_event = (volatile uint16_t *)(B_USED + 4 + 8 * BENCH_QSZ);
	bool stalled = false;
	B_AVAIL[2 + BENCH_QSZ] = (uint16_t)(b_used - 1); /* used_event: never reached */
	while (completed < ops) {
		uint16_t old = b_avail;
		while (nfree && submitted < ops) {
			uint32_t slot = free_slots[--nfree];
			uint64_t off = bench_next_offset(&offsets);
			B_HDR[slot].sector = off >> 9;
			B_STATUS[slot] = ST_UNTOUCHED;
			B_AVAIL[2 + b_avail % BENCH_QSZ] = (uint16_t)(3 * slot);
			b_avail++;
			submitted++;
		}
		if (b_avail != old) {
			mb();
			B_AVAIL[1] = b_avail;
			mb();
			/* vring_need_event(avail_event, new, old) */
			if (!event_idx || (uint16_t)(b_avail - *avail_event - 1) < (uint16_t)(b_avail - old)) {
				mmio_write16(notify, 0);
				notifies++;
			}
		}
		uint32_t reaped = 0;
		while (*used_idx != b_used) {
			uint32_t id = *(volatile uint32_t *)(B_USED + 4 + 8 * (b_used % BENCH_QSZ));
			uint32_t slot = id / 3;
			if (slot >= qd || B_STATUS[slot] != ST_OK)
				errs++;
			else
				free_slots[nfree++] = (uint16_t)slot;
			b_used++;
			reaped++;
		}
		if (reaped) {
			B_AVAIL[2 + BENCH_QSZ] = (uint16_t)(b_used - 1);
			completed += reaped;
			progress = rdtsc();
			if (!nfree && submitted < ops) { /* every slot failed: give up */
				stalled = true;
				break;
			}
		} else if (rdtsc() - progress > stall) {
			stalled = true;
			break;
		}
	}
	if (stalled)
		errs += ops - completed;
	uint32_t us = tsc_to_us(rdtsc() - t0);
	if (!us)
		us = 1;
	uint64_t bytes = (uint64_t)completed * xfer;
	char key[48];
	snprintf(key, sizeof(key), "bench_%s", name);
	probe_info(key, "ops=%u bytes=%llu us=%u iops=%llu mbps=%llu errors=%u qd=%u xfer=%u notifies=%u%s", completed,
		   bytes, us, udiv64((uint64_t)completed * 1000000u, us, NULL), udiv64(bytes, us, NULL), errs, qd, xfer,
		   notifies, stalled ? " stalled" : "");
	*errors += errs;
	uint32_t gap_ms = 0;
	if (cmdline_get_u32("bench_gap_ms", &gap_ms) && gap_ms)
		delay_ms(gap_ms);
	return !stalled;
}

static bool bench_wanted(const char *phase)
{
	char list[96];
	if (!cmdline_get("bench_phases", list, sizeof(list)))
		return true;
	size_t n = strlen(phase), len = strlen(list);
	for (size_t i = 0; i + n <= len; i++)
		if (!strncmp(list + i, phase, n) && (i == 0 || list[i - 1] == '+') &&
		    (list[i + n] == 0 || list[i + n] == '+'))
			return true;
	return false;
}

static void bench_main(void)
{
	uint32_t xfer_kib = 1024, seq_ops = 2048, ops = 10000, errors = 0, seq_qd = 1;
	cmdline_get_u32("bench_xfer_kib", &xfer_kib);
	cmdline_get_u32("bench_seq_qd", &seq_qd);
	cmdline_get_u32("bench_seq_ops", &seq_ops);
	cmdline_get_u32("bench_ops", &ops);
	uint32_t xfer = xfer_kib * 1024u;
	v.offered = vp_device_features(vp);
	uint64_t want = (1ull << F_VERSION_1) | (1ull << F_BLK_FLUSH) | (1ull << F_EVENT_IDX) | (1ull << F_BLK_SEG_MAX) |
			(1ull << F_BLK_BLK_SIZE) | (1ull << F_BLK_RO);
	v.features = v.offered & want;
	v.readonly = has_feature(v.features, F_BLK_RO);
	uint8_t s = negotiate(v.features);
	if (!probe_check("bench_features_ok", s == (S_ACK | S_DRIVER | S_FEATURES_OK), "status 0x%x", s))
		return;
	v.sectors = vp_device_read64(vp, 0);
	uint64_t disk = v.sectors * 512;
	probe_info("bench_disk", "bytes=%llu features=0x%llx", disk, v.features);
	if (!probe_check("bench_params",
		   xfer_kib && xfer % 512 == 0 && xfer <= BENCH_MAX_XFER && disk >= (uint64_t)xfer * 2 && disk >= 8192 &&
			   seq_qd >= 1 && seq_qd <= 16,
		   "bench_xfer_kib=%u (a multiple of 0.5, at most %u) bench_seq_qd=%u (1..16) on a disk of %llu bytes",
		   xfer_kib, BENCH_MAX_XFER / 1024, seq_qd, disk))
		return;
	uint32_t bufs = seq_qd * xfer > BENCH_MAX_QD * 4096u ? seq_qd * xfer : BENCH_MAX_QD * 4096u;
	uint32_t need = (uint32_t)(BENCH_BUF - BENCH_BASE) + bufs;
	if (!probe_check("bench_memory", memmap_is_ram(BENCH_BASE, need), "0x%x+0x%x is not RAM", BENCH_BASE, need))
		return;
	vp_write16(vp, C_Q_SELECT, 0);
	if (!probe_check("bench_queue_size", vp_read16(vp, C_Q_SIZE) >= BENCH_QSZ, "queue 0 holds %u, want %u",
			 vp_read16(vp, C_Q_SIZE),
			 BENCH_QSZ))
		return;
	s = bench_setup_queue();
	if (!probe_check("bench_driver_ok", s == 0xF, "status 0x%x", s))
		return;
	bool ok = true;
	if (ok && bench_wanted("seqread"))
		ok = bench_run("seqread", T_IN, xfer, seq_qd, false, seq_ops, &errors);
	if (ok && bench_wanted("seqwrite") && !v.readonly)
		ok = bench_run("seqwrite", T_OUT, xfer, seq_qd, false, seq_ops, &errors);
	if (ok && bench_wanted("randread_qd1"))
		ok = bench_run("randread_qd1", T_IN, 4096, 1, true, ops, &errors);
	if (ok && bench_wanted("randread_qd32"))
		ok = bench_run("randread_qd32", T_IN, 4096, BENCH_MAX_QD, true, ops, &errors);
	probe_check("bench_no_errors", errors == 0, "%u benchmark requests failed or never completed", errors);
	vp_write8(vp, C_STATUS, 0);
}

void probe_main(void)
{
	v.readonly = cmdline_is("expect_readonly", "1");
	if (!find_device() || !map_device() || !walk_caps())
		return;
	if (cmdline_is("bench", "1")) {
		bench_main();
		return;
	}

	/* Features */
	vp_write8(vp, C_STATUS, 0);
	probe_check("vblk_reset_initial", vp_read8(vp, C_STATUS) == 0, "status 0x%x after writing 0",
		    vp_read8(vp, C_STATUS));
	v.offered = vp_device_features(vp);
	probe_info("vblk_features", "0x%llx", v.offered);
	probe_check("vblk_version_1", has_feature(v.offered, F_VERSION_1), "VERSION_1 not offered (0x%llx)", v.offered);
	probe_check("vblk_ro_feature", has_feature(v.offered, F_BLK_RO) == v.readonly,
		    "RO offered %u, expect_readonly %u",
		    has_feature(v.offered, F_BLK_RO), v.readonly);
	uint8_t s = negotiate(v.offered & (1ull << F_BLK_FLUSH));
	probe_check("vblk_features_ok_needs_version_1", !(s & S_FEATURES_OK), "status 0x%x without VERSION_1", s);
	uint64_t want = (1ull << F_VERSION_1) | (1ull << F_BLK_FLUSH) | (1ull << F_EVENT_IDX) | (1ull << F_INDIRECT) |
			(1ull << F_BLK_DISCARD) | (1ull << F_BLK_SEG_MAX) | (1ull << F_BLK_BLK_SIZE) |
			(1ull << F_BLK_RO);
	v.features = v.offered & want;
	s = negotiate(v.features);
	probe_check("vblk_features_ok", s == (S_ACK | S_DRIVER | S_FEATURES_OK), "status 0x%x", s);

	/* Device configuration */
	v.sectors = vp_device_read64(vp, 0);
	uint32_t seg_max = mmio_read32(vp->device + 0x0C), blk_size = mmio_read32(vp->device + 0x14);
	probe_info("vblk_capacity", "%llu sectors, seg_max %u, blk_size %u", v.sectors, seg_max, blk_size);
	uint32_t expect;
	if (cmdline_get_u32("expect_sectors", &expect))
		probe_check("vblk_capacity", v.sectors == expect, "%llu sectors, want %u", v.sectors, expect);
	probe_check("vblk_config", blk_size == 512 && seg_max >= 1 && v.sectors >= 2, "blk_size %u seg_max %u",
		    blk_size,
		    seg_max);

	/* Queue configuration */
	vp_write16(vp, C_Q_SELECT, 0);
	uint16_t max = vp_read16(vp, C_Q_SIZE);
	probe_info("vblk_queue", "max size %u, %u queue(s)", max, vp_read16(vp, C_NUMQ));
	vp_write16(vp, C_Q_SIZE, 100);
	uint16_t after_bad = vp_read16(vp, C_Q_SIZE);
	vp_write16(vp, C_Q_SIZE, QSZ);
	uint16_t after_good = vp_read16(vp, C_Q_SIZE);
	probe_check("vblk_queue_size_not_pow2_rejected", after_bad == max && after_good == QSZ,
		    "max %u, after writing 100: %u, after writing %u: %u", max, after_bad, QSZ, after_good);
	s = setup_queue();
	vp_write16(vp, C_Q_SELECT, 0);
	uint16_t qvec = vp_read16(vp, C_Q_MSIX), cvec = vp_read16(vp, C_MSIX);
	probe_check("vblk_msix_vectors", qvec == 1 && cvec == 0, "queue vector %u, config vector %u", qvec, cvec);
	probe_check("vblk_driver_ok", s == 0xF, "status 0x%x", s);
	if (s != 0xF)
		return;

	if (cmdline_is("mode", "flushloop") || cmdline_is("mode", "fulldisk")) {
		durability();
		vp_write8(vp, C_STATUS, 0);
		return;
	}
	check_data();
	check_errors();
	check_reset();
	vp_write8(vp, C_STATUS, 0);
}
