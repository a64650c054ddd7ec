/*
 * Hostile virtio-blk cases (see hostile.c): a small polled driver for the first virtio-blk function
 * (no interrupts: MSI-X stays off and the driver sets VIRTQ_AVAIL_F_NO_INTERRUPT), then one attack per
 * case. Each case checks what the device did with the attack (IOERR in the status byte, the chain
 * returned unwritten with length 0, or DEVICE_NEEDS_RESET), then proves it still serves: a write and a
 * read-back on the same queue, or, when the device asked for a reset, after a reset and a full
 * re-initialisation (PROBE-INFO <case>_needs_reset=1 says which).
 */
#include "hostile.h"
#include "virtio.h"

#define QSZ 64

/* Layout of VIRTIO_MEM: descriptors, available ring, used ring, headers and status bytes, data. */
#define V_DESC (VIRTIO_MEM + 0x0000)
#define V_AVAIL (VIRTIO_MEM + 0x1000)
#define V_USED (VIRTIO_MEM + 0x2000)
#define V_HDR (VIRTIO_MEM + 0x3000)    /* 16 bytes per request slot */
#define V_STATUS (VIRTIO_MEM + 0x3800) /* 1 byte per request slot */
#define V_ITABLE (VIRTIO_MEM + 0x4000)
#define V_WBUF (VIRTIO_MEM + 0x10000)
#define V_RBUF (VIRTIO_MEM + 0x20000)

#define GOOD_SECTOR 4096 /* 2 MiB into the disk */

#define DESC ((volatile struct vdesc *)V_DESC)
#define AVAIL ((volatile uint16_t *)V_AVAIL) /* flags, idx, ring[QSZ] */
#define USED_IDX (*(volatile uint16_t *)(V_USED + 2))
#define USED_ELEM(i) ((volatile uint32_t *)(V_USED + 4 + 8 * ((i) % QSZ)))

static struct {
	struct virtio_pci vp;
	uintptr_t bar;
	uint16_t notify_off;
	uint64_t features;
	uint16_t avail_idx, used_idx;
	uint32_t used_len, used_id;
	uint32_t reinits;
	uint64_t capacity;
} v;

static struct virtio_pci *const vp = &v.vp;

uintptr_t virtio_bar(void) { return v.bar; }
uint8_t virtio_dev(void) { return v.vp.dev; }

/* The capabilities, all taken to be in BAR0 (flint's layout). */
static bool find_caps(void)
{
	struct virtio_cap cap;
	uint8_t ptr = pci_cap_first(vp->dev);
	for (uint32_t n = 0; ptr && n < 32; n++, ptr = pci_cap_next(vp->dev, ptr))
		if (virtio_cap_read(vp->dev, ptr, &cap))
			virtio_cap_record(vp, &cap, v.bar + cap.offset);
	return vp->common && vp->notify && vp->device;
}

static uint8_t negotiate(void) { return vp_negotiate(vp, v.features); }

/* Queue 0 at the given ring addresses, size QSZ, no MSI-X vector, enabled (not DRIVER_OK). */
static void setup_queue_at(uint64_t desc, uint64_t avail, uint64_t used)
{
	memset((void *)V_DESC, 0, 0x3000);
	AVAIL[0] = 1; /* VIRTQ_AVAIL_F_NO_INTERRUPT */
	v.avail_idx = v.used_idx = 0;
	vp_write16(vp, C_MSIX, 0xFFFF);
	v.notify_off = vp_queue_setup(vp, 0, QSZ, desc, avail, used, 0xFFFF);
}

static void notify(void) { vp_notify(vp, v.notify_off); }

/* Reset and the whole initialisation; returns the status read back (S_READY when it worked). */
static uint8_t reinit(void)
{
	v.reinits++;
	uint8_t s = negotiate();
	if (s != (S_ACK | S_DRIVER | S_FEATURES_OK))
		return s;
	setup_queue_at(V_DESC, V_AVAIL, V_USED);
	vp_write8(vp, C_STATUS, S_READY);
	return vp_read8(vp, C_STATUS);
}

bool virtio_init(uint8_t dev)
{
	vp->dev = dev;
	struct bar b;
	pci_read_bar(dev, 0, &b);
	v.bar = (uintptr_t)b.addr;
	cfg_write16(dev, 0x04, cfg_read16(dev, 0x04) | 0x6);
	bool caps = b.addr && b.addr < 0xFFFFF000u && find_caps();
	uint64_t offered = 0;
	uint8_t s = 0;
	if (caps) {
		vp_write8(vp, C_STATUS, 0);
		offered = vp_device_features(vp);
		v.features = offered & ((1ull << F_VERSION_1) | (1ull << F_INDIRECT));
		s = reinit();
		v.capacity = vp_device_read64(vp, 0);
	}
	probe_info("virtio", "slot=%02x bar=0x%x features=0x%llx", dev, (uint32_t)v.bar, offered);
	return probe_check("virtio_init", caps && s == S_READY && (v.features >> F_INDIRECT & 1),
			   "BAR0 0x%llx caps %u status 0x%x features 0x%llx (want VERSION_1 and INDIRECT_DESC)",
			   b.addr, caps, s, offered);
}

/* Publishes chain `head`, notifies, waits (bounded) for the next used element. */
static bool kick_wait(uint16_t head, uint32_t ms)
{
	AVAIL[2 + v.avail_idx % QSZ] = head;
	mb();
	AVAIL[1] = ++v.avail_idx;
	mb();
	notify();
	uint64_t dl = deadline_ms(ms);
	while (USED_IDX == v.used_idx)
		if (deadline_passed(dl))
			return false;
	volatile uint32_t *e = USED_ELEM(v.used_idx);
	v.used_id = e[0];
	v.used_len = e[1];
	v.used_idx++;
	return true;
}

static void set_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	vdesc_set(DESC, i, addr, len, flags, next);
}

static volatile struct blk_req *hdr(uint32_t slot) { return (volatile struct blk_req *)(V_HDR + 16 * slot); }
static volatile uint8_t *status_byte(uint32_t slot) { return (volatile uint8_t *)(V_STATUS + slot); }

/* A request of header, one data buffer, status at descriptors 0-2. Returns the status byte,
 * ST_UNTOUCHED if the chain came back unwritten, 0xFF on a timeout. */
static uint8_t request(uint32_t type, uint64_t sector, uint64_t data, uint32_t len)
{
	hdr(0)->type = type;
	hdr(0)->reserved = 0;
	hdr(0)->sector = sector;
	*status_byte(0) = ST_UNTOUCHED;
	set_desc(0, V_HDR, 16, D_NEXT, 1);
	set_desc(1, data, len, D_NEXT | (type == T_IN ? D_WRITE : 0), 2);
	set_desc(2, V_STATUS, 1, D_WRITE, 0);
	if (!kick_wait(0, 2000))
		return 0xFF;
	return *status_byte(0);
}

bool virtio_good_io(uint32_t seed, char *why, size_t n)
{
	uint8_t status = vp_read8(vp, C_STATUS);
	if (status != S_READY) {
		uint8_t s = reinit();
		if (s != S_READY) {
			snprintf(why, n, "status 0x%x, and 0x%x after a reset and re-initialisation", status, s);
			return false;
		}
	}
	hfill(V_WBUF, 2 * PAGE, seed);
	memset((void *)V_RBUF, 0xA5, 2 * PAGE);
	uint8_t w = request(T_OUT, GOOD_SECTOR, V_WBUF, 2 * PAGE);
	uint8_t r = request(T_IN, GOOD_SECTOR, V_RBUF, 2 * PAGE);
	int32_t bad = hverify(V_RBUF, 2 * PAGE, seed);
	if (w != ST_OK || r != ST_OK || bad >= 0) {
		snprintf(why, n, "write status %u read status %u (0xEE untouched, 0xFF timeout), first bad dword %d%s", w,
			 r, bad, status != S_READY ? " (after a re-initialisation)" : "");
		return false;
	}
	return true;
}

uintptr_t virtio_notify_addr(void) { return vp_notify_addr(vp, v.notify_off); }

bool virtio_reset_cycle(char *why, size_t n)
{
	uint8_t s = reinit();
	uint8_t r = s == S_READY ? request(T_IN, GOOD_SECTOR, V_RBUF, 512) : 0xFF;
	vp_write8(vp, C_STATUS, 0);
	if (s != S_READY || r != ST_OK) {
		snprintf(why, n, "status 0x%x after initialisation, read status %u", s, r);
		return false;
	}
	return true;
}

/* Reports a case: the attack's verdict, whether the device asked for a reset, then a good request. */
static void virtio_case(const char *name, bool attack_ok, const char *attack_why)
{
	uint8_t status = vp_read8(vp, C_STATUS);
	if (status & S_NEEDS_RESET) {
		char key[64];
		snprintf(key, sizeof(key), "%s_needs_reset", name);
		probe_info(key, "1");
	}
	char why[200] = "";
	bool io = virtio_good_io((uint32_t)(uintptr_t)name, why, sizeof(why));
	probe_check(name, attack_ok && io, "%s%s%s", attack_ok ? "" : attack_why, attack_ok || io ? "" : "; ",
		    io ? "" : why);
}

/* The device answered a malformed chain: IOERR, or returned it unwritten (length 0). */
static bool refused(bool done, uint8_t st) { return done && (st == ST_IOERR || (st == ST_UNTOUCHED && v.used_len == 0)); }

static void chain_cases(void)
{
	char why[160];
	/* A loop: 0 -> 1 -> 2 -> 0. */
	hdr(0)->type = T_IN;
	hdr(0)->sector = 0;
	*status_byte(0) = ST_UNTOUCHED;
	set_desc(0, V_HDR, 16, D_NEXT, 1);
	set_desc(1, V_RBUF, 512, D_NEXT | D_WRITE, 2);
	set_desc(2, V_STATUS, 1, D_WRITE | D_NEXT, 0);
	bool done = kick_wait(0, 2000);
	snprintf(why, sizeof(why), "done %u status %u used length %u", done, *status_byte(0), v.used_len);
	virtio_case("virtio_descriptor_loop", refused(done, *status_byte(0)), why);

	/* `next` beyond the ring, and the head itself beyond the ring. */
	set_desc(0, V_HDR, 16, D_NEXT, 0xFFFF);
	*status_byte(0) = ST_UNTOUCHED;
	bool a = kick_wait(0, 2000);
	uint8_t sa = *status_byte(0);
	bool b = kick_wait(QSZ + 5, 2000);
	/* A head index beyond the ring may be dropped, ignored or answered with NEEDS_RESET. */
	snprintf(why, sizeof(why), "next=0xFFFF: done %u status %u; head %u: returned %u status 0x%x", a, sa, QSZ + 5,
		 b, vp_read8(vp, C_STATUS));
	probe_info("virtio_head_out_of_range", "%s", why);
	virtio_case("virtio_next_out_of_range", refused(a, sa), why);

	/* Zero lengths: a zero-length header, a zero-length status, a zero-length data buffer. Any answer
	 * (IOERR, dropped, or OK for the empty read) will do as long as the chain comes back. */
	hdr(0)->type = T_IN;
	*status_byte(0) = ST_UNTOUCHED;
	set_desc(0, V_HDR, 0, D_NEXT, 1);
	set_desc(1, V_RBUF, 512, D_NEXT | D_WRITE, 2);
	set_desc(2, V_STATUS, 1, D_WRITE, 0);
	a = kick_wait(0, 2000);
	sa = *status_byte(0);
	set_desc(0, V_HDR, 16, D_NEXT, 1);
	set_desc(2, V_STATUS, 0, D_WRITE, 0);
	*status_byte(0) = ST_UNTOUCHED;
	b = kick_wait(0, 2000);
	uint8_t sb = *status_byte(0);
	set_desc(1, V_RBUF, 0, D_NEXT | D_WRITE, 2);
	set_desc(2, V_STATUS, 1, D_WRITE, 0);
	*status_byte(0) = ST_UNTOUCHED;
	bool c = kick_wait(0, 2000);
	uint8_t sc = *status_byte(0);
	snprintf(why, sizeof(why), "header: done %u status %u; status byte: done %u status %u; data: done %u status %u",
		 a, sa, b, sb, c, sc);
	probe_info("virtio_zero_length", "%s", why);
	virtio_case("virtio_zero_length", a && b && c && sa != ST_OK, why);

	/* Huge lengths on buffers that start in RAM. */
	uint8_t s1 = request(T_IN, 0, V_RBUF, 0xFFFFFFFFu);
	bool d1 = s1 != 0xFF;
	uint32_t l1 = v.used_len;
	uint8_t s2 = request(T_OUT, 0, 0x1000, 0x80000000u);
	bool d2 = s2 != 0xFF;
	uint8_t s3 = request(T_IN, 0, V_RBUF, 0xFFFFFE00u);
	bool d3 = s3 != 0xFF;
	snprintf(why, sizeof(why), "4 GiB - 1 read: status %u used length %u; 2 GiB write: status %u; 4 GiB - 512 "
				   "read: status %u",
		 s1, l1, s2, s3);
	virtio_case("virtio_huge_lengths", d1 && (s1 == ST_IOERR || (s1 == ST_UNTOUCHED && l1 == 0)) && refused(d2, s2) &&
						   refused(d3, s3),
		    why);
}

/* Well-formed chains carrying bad requests. */
static void bad_request_case(void)
{
	char why[200];
	uint8_t unknown = request(0xFFFFFFFFu, 0, V_RBUF, 512);
	uint8_t odd = request(T_IN, 0, V_RBUF, 511);
	uint8_t last = request(T_IN, 0xFFFFFFFFFFFFFFFFull, V_RBUF, 512);
	/* GET_ID into a one-byte buffer: at most that byte may be written. */
	memset((void *)V_RBUF, 0xA5, 64);
	uint8_t id = request(T_GET_ID, 0, V_RBUF, 1);
	bool contained = *(volatile uint8_t *)(V_RBUF + 1) == 0xA5;
	/* DISCARD and WRITE_ZEROES (not negotiated) with a segment of 2^32 - 1 sectors at the end of
	 * the sector space and reserved flags. */
	volatile uint32_t *seg = (volatile uint32_t *)V_WBUF;
	seg[0] = 0xFFFFFFF8u;
	seg[1] = 0xFFFFFFFFu;
	seg[2] = 0xFFFFFFFFu;
	seg[3] = 0xFFFFFFFFu;
	uint8_t discard = request(T_DISCARD, 0, V_WBUF, 16);
	uint8_t zeroes = request(T_WRITE_ZEROES, 0, V_WBUF, 16);
	snprintf(why, sizeof(why), "type 0xFFFFFFFF: %u (want 2 UNSUPP); 511-byte read: %u; read of sector 2^64-1: %u; "
				   "GET_ID into 1 byte: %u, next byte kept %u; discard %u; write zeroes %u",
		 unknown, odd, last, id, contained, discard, zeroes);
	virtio_case("virtio_bad_requests",
		    unknown == 2 && odd == ST_IOERR && last == ST_IOERR && id != 0xFF && contained &&
			    (discard == ST_IOERR || discard == 2) && (zeroes == ST_IOERR || zeroes == 2),
		    why);
}

static void indirect_cases(void)
{
	char why[160];
	/* A table of 65536 descriptors (1 MiB), all chained: header, 65534 data buffers, status. */
	volatile struct vdesc *t = (volatile struct vdesc *)INDIRECT_MEM;
	hdr(0)->type = T_IN;
	hdr(0)->sector = 0;
	t[0].addr = V_HDR;
	t[0].len = 16;
	t[0].flags = D_NEXT;
	t[0].next = 1;
	for (uint32_t i = 1; i < 65535; i++) {
		t[i].addr = V_RBUF;
		t[i].len = 512;
		t[i].flags = D_NEXT | D_WRITE;
		t[i].next = (uint16_t)(i + 1);
	}
	t[65535].addr = V_STATUS;
	t[65535].len = 1;
	t[65535].flags = D_WRITE;
	t[65535].next = 0;
	*status_byte(0) = ST_UNTOUCHED;
	set_desc(0, INDIRECT_MEM, 65536 * 16, D_INDIRECT, 0);
	uint64_t t0 = rdtsc();
	bool a = kick_wait(0, 5000);
	uint8_t sa = *status_byte(0);
	uint32_t la = v.used_len;
	/* The same with 65535 (the most a table may hold): too long for seg_max. */
	t[65534].addr = V_STATUS;
	t[65534].len = 1;
	t[65534].flags = D_WRITE;
	*status_byte(0) = ST_UNTOUCHED;
	set_desc(0, INDIRECT_MEM, 65535 * 16, D_INDIRECT, 0);
	bool b = kick_wait(0, 5000);
	uint8_t sb = *status_byte(0);
	probe_info("virtio_indirect_65536_ms", "%u", tsc_to_ms(rdtsc() - t0));
	snprintf(why, sizeof(why), "65536 entries: done %u status %u length %u; 65535: done %u status %u length %u", a,
		 sa, la, b, sb, v.used_len);
	virtio_case("virtio_indirect_65536_descriptors", a && (sa == ST_IOERR || (sa == ST_UNTOUCHED && la == 0)) &&
								 refused(b, sb),
		    why);

	/* An indirect table inside an indirect table; an indirect descriptor that also has NEXT; a table
	 * whose length is not a multiple of 16; a table outside RAM. */
	volatile struct vdesc *it = (volatile struct vdesc *)V_ITABLE;
	it[0] = (struct vdesc){ V_HDR, 16, D_NEXT, 1 };
	it[1] = (struct vdesc){ INDIRECT_MEM, 3 * 16, D_INDIRECT, 0 };
	t[0] = (struct vdesc){ V_RBUF, 512, D_NEXT | D_WRITE, 1 };
	t[1] = (struct vdesc){ V_STATUS, 1, D_WRITE, 0 };
	*status_byte(0) = ST_UNTOUCHED;
	set_desc(0, V_ITABLE, 2 * 16, D_INDIRECT, 0);
	a = kick_wait(0, 2000);
	sa = *status_byte(0);
	la = v.used_len;
	set_desc(0, V_ITABLE, 2 * 16, D_INDIRECT | D_NEXT, 1);
	set_desc(1, V_STATUS, 1, D_WRITE, 0);
	b = kick_wait(0, 2000);
	set_desc(0, V_ITABLE, 2 * 16 + 7, D_INDIRECT, 0);
	bool c = kick_wait(0, 2000);
	set_desc(0, ADDR_OUTSIDE_RAM, 4 * 16, D_INDIRECT, 0);
	bool d = kick_wait(0, 2000);
	set_desc(0, V_ITABLE, 0xFFFFFFF0u, D_INDIRECT, 0);
	bool e = kick_wait(0, 2000);
	snprintf(why, sizeof(why), "nested: done %u status %u length %u; with NEXT %u; odd length %u; outside RAM %u; "
				   "4 GiB table %u",
		 a, sa, la, b, c, d, e);
	virtio_case("virtio_nested_indirect", refused(a, sa) && b && c && d && e, why);
}

/* avail->idx far ahead of the ring: the device cannot trust the ring any more. */
static void avail_jump_case(void)
{
	AVAIL[1] = (uint16_t)(v.avail_idx + 1000);
	mb();
	notify();
	uint64_t dl = deadline_ms(1000);
	uint8_t s;
	while (!((s = vp_read8(vp, C_STATUS)) & S_NEEDS_RESET) && !deadline_passed(dl))
		;
	char why[80];
	snprintf(why, sizeof(why), "status 0x%x 1 s after avail->idx jumped by 1000 (want DEVICE_NEEDS_RESET)", s);
	virtio_case("virtio_avail_index_jump", s & S_NEEDS_RESET, why);
}

/* Queue sizes that are not powers of two (or too big, or zero) are refused. */
static void queue_size_case(void)
{
	negotiate();
	vp_write16(vp, C_Q_SELECT, 0);
	uint16_t max = vp_read16(vp, C_Q_SIZE);
	static const uint16_t bad[] = { 0, 3, 100, 255, 257, 0xFFFF, 0x8000 };
	char why[120] = "";
	bool ok = true;
	for (uint32_t i = 0; i < ARRAY_SIZE(bad); i++) {
		vp_write16(vp, C_Q_SIZE, bad[i]);
		uint16_t got = vp_read16(vp, C_Q_SIZE);
		if (got != max && ok) {
			ok = false;
			snprintf(why, sizeof(why), "queue size %u accepted (reads %u, max %u)", bad[i], got, max);
		}
	}
	/* A queue that does not exist: its registers read size 0 and ignore writes. */
	vp_write16(vp, C_Q_SELECT, 0x7FFF);
	vp_write16(vp, C_Q_SIZE, 16);
	vp_write64(vp, C_Q_DESC, ADDR_OUTSIDE_RAM);
	vp_write16(vp, C_Q_ENABLE, 1);
	uint16_t ghost = vp_read16(vp, C_Q_SIZE);
	if (ghost && ok) {
		ok = false;
		snprintf(why, sizeof(why), "queue 0x7FFF has size %u", ghost);
	}
	vp_write8(vp, C_STATUS, 0);
	virtio_case("virtio_queue_size_not_power_of_two", ok, why);
}

/* A request published and notified before DRIVER_OK must not be consumed then. */
static void notify_before_driver_ok_case(void)
{
	negotiate();
	setup_queue_at(V_DESC, V_AVAIL, V_USED);
	hfill(V_WBUF, PAGE, 77);
	hdr(0)->type = T_OUT;
	hdr(0)->sector = GOOD_SECTOR;
	*status_byte(0) = ST_UNTOUCHED;
	set_desc(0, V_HDR, 16, D_NEXT, 1);
	set_desc(1, V_WBUF, PAGE, D_NEXT, 2);
	set_desc(2, V_STATUS, 1, D_WRITE, 0);
	AVAIL[2] = 0;
	mb();
	AVAIL[1] = ++v.avail_idx;
	mb();
	notify();
	mmio_write32(vp->notify + 5 * vp->notify_mult, 0xFFFFFFFFu); /* a queue that does not exist */
	mmio_write8(vp->notify + 1, 0xFF);                          /* an unaligned byte */
	delay_ms(50);
	uint16_t used_before = USED_IDX;
	uint8_t st_before = *status_byte(0);
	vp_write8(vp, C_STATUS, S_READY);
	notify();
	uint64_t dl = deadline_ms(2000);
	while (USED_IDX == 0 && !deadline_passed(dl))
		;
	v.used_idx = USED_IDX;
	char why[160];
	snprintf(why, sizeof(why), "before DRIVER_OK: used idx %u status byte %u; after: used idx %u status %u "
				   "(device status 0x%x)",
		 used_before, st_before, USED_IDX, *status_byte(0), vp_read8(vp, C_STATUS));
	virtio_case("virtio_notify_before_driver_ok",
		    used_before == 0 && st_before == ST_UNTOUCHED && USED_IDX == 1 && *status_byte(0) == ST_OK, why);
}

/* Rings outside RAM: DRIVER_OK does not stick or the device asks for a reset; nothing else. */
static void ring_outside_ram_case(void)
{
	static const uint64_t bad[][3] = {
		{ ADDR_OUTSIDE_RAM, V_AVAIL, V_USED },
		{ V_DESC, ADDR_PCI_HOLE, V_USED },
		{ V_DESC, V_AVAIL, 0xFFFFFFFFFFFFF000ull },
		{ V_DESC + 1, V_AVAIL + 1, V_USED + 1 }, /* misaligned */
	};
	char why[160] = "";
	bool ok = true;
	for (uint32_t i = 0; i < ARRAY_SIZE(bad); i++) {
		negotiate();
		setup_queue_at(bad[i][0], bad[i][1], bad[i][2]);
		vp_write8(vp, C_STATUS, S_READY);
		notify();
		delay_ms(5);
		uint8_t s = vp_read8(vp, C_STATUS);
		if (s == S_READY && ok) {
			ok = false;
			snprintf(why, sizeof(why), "rings 0x%llx/0x%llx/0x%llx: status 0x%x, want NEEDS_RESET or no DRIVER_OK",
				 bad[i][0], bad[i][1], bad[i][2], s);
		}
	}
	virtio_case("virtio_rings_outside_ram", ok, why);
}

/* Eight 512 KiB reads in flight, then a reset: the reset returns, the device is idle and usable. */
static void reset_during_io_case(void)
{
	for (uint32_t i = 0; i < 8; i++) {
		uint16_t d = (uint16_t)(3 * i);
		hdr(i)->type = T_IN;
		hdr(i)->reserved = 0;
		hdr(i)->sector = i * 1024;
		*status_byte(i) = ST_UNTOUCHED;
		set_desc(d, V_HDR + 16 * i, 16, D_NEXT, d + 1);
		set_desc(d + 1, BIG_MEM + i * 0x80000u, 0x80000u, D_NEXT | D_WRITE, d + 2);
		set_desc(d + 2, V_STATUS + i, 1, D_WRITE, 0);
		AVAIL[2 + (v.avail_idx + i) % QSZ] = d;
	}
	mb();
	v.avail_idx += 8;
	AVAIL[1] = v.avail_idx;
	mb();
	notify();
	uint64_t t0 = rdtsc();
	vp_write8(vp, C_STATUS, 0);
	uint8_t s = vp_read8(vp, C_STATUS);
	uint32_t us = tsc_to_us(rdtsc() - t0);
	uint16_t done = USED_IDX - v.used_idx;
	/* Nothing moves after the reset returned. */
	delay_ms(20);
	uint16_t later = USED_IDX - v.used_idx;
	probe_info("virtio_reset_during_io", "completed_before_reset=%u reset_us=%u", done, us);
	char why[120];
	snprintf(why, sizeof(why), "status 0x%x after the reset; used idx moved by %u, then by %u after it returned", s,
		 done, later);
	virtio_case("virtio_reset_during_io", s == 0 && later == done, why);
}

/* Garbage in the common and device configuration: out-of-range selectors, vectors, status values,
 * read-only fields. */
static void config_garbage_case(void)
{
	vp_write32(vp, C_DFSELECT, 0xFFFFFFFFu);
	uint32_t df = vp_read32(vp, C_DF);
	vp_write32(vp, C_GFSELECT, 0xFFFFFFFFu);
	vp_write32(vp, C_GF, 0xFFFFFFFFu);
	vp_write16(vp, C_MSIX, 0x1234);
	vp_write16(vp, C_Q_SELECT, 0);
	vp_write16(vp, C_Q_MSIX, 0x7FF);
	vp_write16(vp, C_Q_SIZE, 0x1000);
	for (uint32_t off = 0; off < 0x40; off += 4)
		mmio_write32(vp->device + off, 0xFFFFFFFFu);
	mmio_write32(vp->device + 0xFFC, 0xFFFFFFFFu);
	for (uint32_t off = 0x38; off < 0x100; off += 4)
		mmio_write32(vp->common + off, 0xFFFFFFFFu);
	vp_write8(vp, C_STATUS, 0xFF);
	uint8_t s = vp_read8(vp, C_STATUS);
	uint64_t cap = vp_device_read64(vp, 0);
	char why[120];
	snprintf(why, sizeof(why), "feature word 0xFFFFFFFF reads 0x%x; status after writing 0xFF: 0x%x; capacity %llu "
				   "(was %llu)",
		 df, s, cap, v.capacity);
	virtio_case("virtio_config_garbage", df == 0 && cap == v.capacity, why);
}

void virtio_attacks(void)
{
	chain_cases();
	bad_request_case();
	indirect_cases();
	avail_jump_case();
	queue_size_case();
	notify_before_driver_ok_case();
	ring_outside_ram_case();
	reset_during_io_case();
	config_garbage_case();
	probe_info("virtio_reinits", "%u", v.reinits);
}
