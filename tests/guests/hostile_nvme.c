/*
 * Hostile NVMe cases (see hostile.c): a small polled driver for the first NVMe controller, then one
 * attack per case, each checked for the status NVMe 1.4 mandates (or for being ignored), and followed
 * by a good write + read-back on I/O queue 1.
 */
#include "hostile.h"
#include "nvme.h"

#define CC_ENABLE (CC_EN | CC_IOSQES(6) | CC_IOCQES(4))

/* Layout of NVME_MEM. */
#define O_ASQ 0x00000
#define O_ACQ 0x01000
#define O_SQ1 0x02000
#define O_CQ1 0x03000
#define O_SQ2 0x04000
#define O_CQ2 0x05000
#define O_SHADOW 0x06000
#define O_EVENTIDX 0x07000
#define O_LIST_A 0x08000
#define O_IDENT 0x0A000
#define O_WBUF 0x10000
#define O_RBUF 0x20000

#define ADMIN_ENTRIES 16
#define IO_ENTRIES 64
#define GOOD_IO_OFF 0x100000ull /* disk byte offset of the good I/O */

static struct {
	uint8_t dev;
	uintptr_t bar;
	uintptr_t mem;
	struct nvme_queue admin, io;
	uint16_t cid;
	uint32_t lba_shift, mdts_bytes;
	uint64_t nsze;
	uint16_t aer_cid;
	bool aer_done;
	uint32_t aer_dw0;
	bool shadow;
} n;

uintptr_t nvme_bar(void) { return n.bar; }
uint8_t nvme_dev(void) { return n.dev; }

/* Doorbell stride 0 (CAP.DSTRD: flint's). */
static uintptr_t db_addr(uint32_t qid, bool cq) { return nvme_doorbell(n.bar, 0, (uint16_t)qid, cq); }

static void q_init(struct nvme_queue *q, uint16_t qid, uint32_t sq_off, uint32_t cq_off, uint16_t size)
{
	nvme_queue_init(q, qid, n.mem + sq_off, size, n.mem + cq_off, size, db_addr(qid, false), db_addr(qid, true));
}

/* Rings a doorbell; with shadow doorbells on (I/O queues) the shadow slot gets the value first. */
static void ring(struct nvme_queue *q, bool cq, uint32_t value)
{
	if (n.shadow && q->qid) {
		volatile uint32_t *slot = (volatile uint32_t *)(n.mem + O_SHADOW) + 2 * q->qid + (cq ? 1 : 0);
		*slot = value;
		mb();
	}
	mmio_write32(db_addr(q->qid, cq), value);
}

/* Puts a command at the tail (fresh command id) and rings. Returns the command id. */
static uint16_t submit(struct nvme_queue *q, uint32_t *s)
{
	uint16_t cid = nvme_sq_put(q, s, &n.cid);
	mb();
	ring(q, false, q->tail);
	return cid;
}

/* Waits (bounded) for command `cid`'s completion; other completions on the admin queue are the
 * Asynchronous Event Request's. */
static uint16_t wait_cid(struct nvme_queue *q, uint16_t cid, uint32_t ms, struct nvme_cqe *out)
{
	uint64_t dl = deadline_ms(ms);
	struct nvme_cqe e;
	for (;;) {
		if (nvme_cq_take(q, &e)) {
			ring(q, true, q->head);
			if (e.cid == cid) {
				if (out)
					*out = e;
				return e.status;
			}
			if (q->qid == 0 && e.cid == n.aer_cid) {
				n.aer_done = true;
				n.aer_dw0 = e.dw0;
			}
			continue;
		}
		if (deadline_passed(dl))
			return ST_TIMEOUT;
	}
}

static uint16_t exec(struct nvme_queue *q, uint32_t *s, struct nvme_cqe *out)
{
	uint16_t cid = submit(q, s);
	return wait_cid(q, cid, 2000, out);
}

static uint16_t admin(uint8_t opc, uint32_t nsid, uint64_t prp1, uint64_t prp2, uint32_t dw10, uint32_t dw11)
{
	uint32_t s[16];
	nvme_sqe_init(s, opc, nsid);
	nvme_sqe_prp(s, prp1, prp2);
	s[10] = dw10;
	s[11] = dw11;
	return exec(&n.admin, s, NULL);
}

static uint16_t create_cq(uint16_t qid, uint64_t base, uint32_t entries)
{
	return admin(ADM_CREATE_CQ, 0, base, 0, (entries - 1) << 16 | qid, 1u); /* contiguous, polled */
}
static uint16_t create_sq(uint16_t qid, uint64_t base, uint32_t entries, uint16_t cqid)
{
	return admin(ADM_CREATE_SQ, 0, base, 0, (entries - 1) << 16 | qid, (uint32_t)cqid << 16 | 1u);
}

/* A read or write of `blocks` blocks at byte offset `off` on queue q. */
static uint16_t rw(struct nvme_queue *q, uint8_t opc, uint64_t lba, uint32_t blocks, uint64_t prp1, uint64_t prp2)
{
	uint32_t s[16];
	nvme_sqe_rw(s, opc, lba, blocks, prp1, prp2);
	return exec(q, s, NULL);
}

static const char *st_str(uint16_t st)
{
	static char buf[4][16]; /* four at a time in one message */
	static uint32_t i;
	return nvme_status_str(st, buf[i++ & 3], sizeof(buf[0]));
}

uint16_t nvme_identify(void) { return admin(ADM_IDENTIFY, 0, n.mem + O_IDENT, 0, 1, 0); }

/* ---------------------------------------------------------------- bring-up */
static bool wait_csts(uint32_t mask, uint32_t want, uint32_t ms)
{
	uint64_t dl = deadline_ms(ms);
	while ((mmio_read32(n.bar + REG_CSTS) & mask) != want)
		if (deadline_passed(dl))
			return false;
	return true;
}

static bool disable(void)
{
	mmio_write32(n.bar + REG_CC, 0);
	return wait_csts(CSTS_RDY, 0, 2000);
}

static void program_admin(uint64_t asq, uint64_t acq)
{
	mmio_write32(n.bar + REG_AQA, (ADMIN_ENTRIES - 1) << 16 | (ADMIN_ENTRIES - 1));
	mmio_write64(n.bar + REG_ASQ, asq);
	mmio_write64(n.bar + REG_ACQ, acq);
}

/* Controller reset, admin queues, enable, I/O queue pair 1 (polled), an Asynchronous Event Request. */
static bool bring_up(char *why, size_t len)
{
	n.shadow = false;
	if (!disable()) {
		snprintf(why, len, "CSTS.RDY stays set after CC.EN=0 (CSTS 0x%x)", mmio_read32(n.bar + REG_CSTS));
		return false;
	}
	q_init(&n.admin, 0, O_ASQ, O_ACQ, ADMIN_ENTRIES);
	program_admin(n.admin.sq, n.admin.cq);
	mmio_write32(n.bar + REG_CC, CC_ENABLE);
	if (!wait_csts(CSTS_RDY | CSTS_CFS, CSTS_RDY, 2000)) {
		snprintf(why, len, "not ready after CC.EN=1 (CSTS 0x%x)", mmio_read32(n.bar + REG_CSTS));
		return false;
	}
	q_init(&n.io, 1, O_SQ1, O_CQ1, IO_ENTRIES);
	uint16_t a = create_cq(1, n.io.cq, IO_ENTRIES), b = create_sq(1, n.io.sq, IO_ENTRIES, 1);
	if (a || b) {
		snprintf(why, len, "Create I/O CQ/SQ 1: %s %s", st_str(a), st_str(b));
		return false;
	}
	/* An Asynchronous Event Request left outstanding: invalid doorbell writes complete it. */
	uint32_t s[16];
	nvme_sqe_init(s, ADM_AER, 0);
	n.aer_done = false;
	n.aer_cid = submit(&n.admin, s);
	return true;
}

bool nvme_reinit(char *why, size_t len) { return bring_up(why, len); }

void nvme_enable_storm(uint32_t toggles)
{
	for (uint32_t i = 0; i < toggles; i++) {
		mmio_write32(n.bar + REG_CC, 0);
		mmio_write32(n.bar + REG_CC, CC_ENABLE);
	}
}

bool nvme_init(uint8_t dev)
{
	n.dev = dev;
	n.mem = NVME_MEM;
	struct bar b;
	pci_read_bar(dev, 0, &b);
	n.bar = (uintptr_t)b.addr;
	cfg_write16(dev, 0x04, cfg_read16(dev, 0x04) | 0x6);
	char why[120] = "";
	bool ok = b.addr && b.addr < 0xFFFFF000u && bring_up(why, sizeof(why));
	if (ok) {
		uintptr_t id = n.mem + O_IDENT;
		const volatile uint8_t *p = (const volatile uint8_t *)id;
		uint16_t st = admin(ADM_IDENTIFY, 0, id, 0, 1, 0);
		n.mdts_bytes = p[77] ? PAGE << p[77] : 0;
		uint16_t st2 = admin(ADM_IDENTIFY, 1, id, 0, 0, 0);
		n.nsze = *(const volatile uint32_t *)id | (uint64_t)*(const volatile uint32_t *)(id + 4) << 32;
		n.lba_shift = p[128 + 4 * (p[26] & 0xF) + 2];
		ok = !st && !st2 && (n.lba_shift == 9 || n.lba_shift == 12) && (n.nsze << n.lba_shift) >= 0x1000000ull;
		if (!ok)
			snprintf(why, sizeof(why), "Identify %s %s: %llu blocks of 2^%u bytes", st_str(st), st_str(st2),
				 n.nsze, n.lba_shift);
	}
	probe_info("nvme", "slot=%02x bar=0x%x mdts_bytes=%u blocks=%llu block_shift=%u", dev, (uint32_t)n.bar,
		   n.mdts_bytes, n.nsze, n.lba_shift);
	return probe_check("nvme_init", ok, "BAR0 0x%llx: %s", b.addr, why);
}

bool nvme_good_io(uint32_t seed, char *why, size_t len)
{
	uintptr_t wb = n.mem + O_WBUF, rb = n.mem + O_RBUF;
	uint32_t blocks = (2 * PAGE) >> n.lba_shift;
	uint64_t lba = GOOD_IO_OFF >> n.lba_shift;
	hfill(wb, 2 * PAGE, seed);
	memset((void *)rb, 0xA5, 2 * PAGE);
	/* PRP1 + PRP2 for the write, PRP1 + a one-entry PRP list for the read. */
	uint16_t w = rw(&n.io, IO_WRITE, lba, blocks, wb, wb + PAGE);
	uint64_t *list = (uint64_t *)(n.mem + O_LIST_A + 0x800);
	list[0] = rb + PAGE;
	uint16_t r = rw(&n.io, IO_READ, lba, blocks, rb, rb + PAGE);
	int32_t bad = hverify(rb, 2 * PAGE, seed);
	if (w || r || bad >= 0) {
		snprintf(why, len, "write %s read %s, first bad dword %d", st_str(w), st_str(r), bad);
		return false;
	}
	return true;
}

/* Reports a case: the attack's own verdict, then a good request. */
static void nvme_case(const char *name, bool attack_ok, const char *attack_why)
{
	char why[160] = "";
	bool io = nvme_good_io((uint32_t)(uintptr_t)name, why, sizeof(why));
	probe_check(name, attack_ok && io, "%s%s%s", attack_ok ? "" : attack_why, attack_ok || io ? "" : "; ",
		    io ? "" : why);
}

/* Collects `got == want` for several statuses into one verdict and description. */
struct expect {
	bool ok;
	char why[200];
	size_t len;
};
static void expect_st(struct expect *x, const char *what, uint16_t got, uint16_t want)
{
	if (got == want)
		return;
	x->ok = false;
	if (x->len < sizeof(x->why) - 1)
		x->len += (size_t)snprintf(x->why + x->len, sizeof(x->why) - x->len, "%s%s: %s want %s",
					   x->len ? "; " : "", what, st_str(got), st_str(want));
}

static uint64_t g_ram_end;

static uint64_t ram_end(void)
{
	if (!g_ram_end)
		for (uint32_t i = 0; i < g_memmap_entries; i++) {
			const struct hvm_memmap_entry *e = &g_memmap[i];
			if (e->type == E820_RAM && e->addr < 0x100000000ull && e->addr + e->size > g_ram_end)
				g_ram_end = e->addr + e->size;
		}
	return g_ram_end;
}

/* ---------------------------------------------------------------- the cases */
static void doorbell_cases(void)
{
	/* A tail beyond the queue: ignored, reported through the Asynchronous Event Request. */
	mmio_write32(db_addr(1, false), IO_ENTRIES + 10);
	uint64_t dl = deadline_ms(1000);
	struct nvme_cqe e;
	while (!n.aer_done && !deadline_passed(dl))
		if (nvme_cq_take(&n.admin, &e)) {
			ring(&n.admin, true, n.admin.head);
			if (e.cid == n.aer_cid)
				n.aer_done = true, n.aer_dw0 = e.dw0;
		}
	mmio_write32(db_addr(1, false), 0xFFFF);
	mmio_write32(db_addr(1, false), 0xFFFFFFFFu);
	char why[120];
	snprintf(why, sizeof(why), "Asynchronous Event Request %s, dword 0 0x%x: want type 0 (error) info 1 "
				   "(invalid doorbell value)",
		 n.aer_done ? "completed" : "not completed", n.aer_dw0);
	nvme_case("nvme_sq_tail_beyond_queue", n.aer_done && (n.aer_dw0 & 0xFFFF) == 0x0100, why);

	mmio_write32(db_addr(1, true), IO_ENTRIES + 10);
	mmio_write32(db_addr(1, true), 0xFFFFFFFFu);
	nvme_case("nvme_cq_head_beyond_queue", true, "");

	/* Doorbells of queues that do not exist: inside the doorbell range, past it, unaligned, odd
	 * widths; the admin queue's tail far beyond it. */
	mmio_write32(db_addr(5, false), 1);
	mmio_write32(db_addr(5, true), 1);
	mmio_write32(db_addr(16, false), 3);
	mmio_write32(db_addr(17, false), 3);
	mmio_write32(db_addr(200, true), 3);
	mmio_write8(db_addr(1, false) + 1, 0xFF);
	mmio_write16(db_addr(1, true) + 2, 0xFFFF);
	mmio_write32(db_addr(0, false), 1000);
	/* The admin queue still works: Identify. */
	uint16_t st = admin(ADM_IDENTIFY, 0, n.mem + O_IDENT, 0, 1, 0);
	snprintf(why, sizeof(why), "Identify after the admin tail doorbell was set to 1000: %s", st_str(st));
	nvme_case("nvme_doorbell_absent_queues", st == ST_OK, why);
}

static void queue_id_cases(void)
{
	struct expect x = { true, "", 0 };
	expect_st(&x, "create CQ 0", create_cq(0, n.mem + O_CQ2, 16), ST_INVALID_QID);
	expect_st(&x, "create CQ 0xFFFF", create_cq(0xFFFF, n.mem + O_CQ2, 16), ST_INVALID_QID);
	expect_st(&x, "create CQ 17", create_cq(17, n.mem + O_CQ2, 16), ST_INVALID_QID);
	expect_st(&x, "create CQ 1 again", create_cq(1, n.mem + O_CQ2, 16), ST_INVALID_QID);
	expect_st(&x, "create SQ 0", create_sq(0, n.mem + O_SQ2, 16, 1), ST_INVALID_QID);
	expect_st(&x, "create SQ 0xFFFF", create_sq(0xFFFF, n.mem + O_SQ2, 16, 1), ST_INVALID_QID);
	expect_st(&x, "create SQ 2 on CQ 0xFFFF", create_sq(2, n.mem + O_SQ2, 16, 0xFFFF), ST_INVALID_CQ);
	expect_st(&x, "create SQ 2 on CQ 0", create_sq(2, n.mem + O_SQ2, 16, 0), ST_INVALID_CQ);
	expect_st(&x, "delete SQ 0xFFFF", admin(ADM_DELETE_SQ, 0, 0, 0, 0xFFFF, 0), ST_INVALID_QID);
	expect_st(&x, "delete SQ 0", admin(ADM_DELETE_SQ, 0, 0, 0, 0, 0), ST_INVALID_QID);
	expect_st(&x, "delete CQ 0", admin(ADM_DELETE_CQ, 0, 0, 0, 0, 0), ST_INVALID_QID);
	expect_st(&x, "delete CQ 9", admin(ADM_DELETE_CQ, 0, 0, 0, 9, 0), ST_INVALID_QID);
	nvme_case("nvme_queue_ids_out_of_range", x.ok, x.why);

	x = (struct expect){ true, "", 0 };
	expect_st(&x, "CQ of 1 entry", create_cq(2, n.mem + O_CQ2, 1), ST_INVALID_QSIZE);
	expect_st(&x, "CQ of 65536 entries", create_cq(2, n.mem + O_CQ2, 65536), ST_INVALID_QSIZE);
	expect_st(&x, "CQ of 1025 entries", create_cq(2, n.mem + O_CQ2, 1025), ST_INVALID_QSIZE);
	nvme_case("nvme_queue_sizes_invalid", x.ok, x.why);

	uint64_t end = ram_end();
	x = (struct expect){ true, "", 0 };
	expect_st(&x, "CQ past RAM", create_cq(2, ADDR_OUTSIDE_RAM, 16), ST_INVALID_FIELD);
	expect_st(&x, "CQ in the PCI hole", create_cq(2, ADDR_PCI_HOLE, 16), ST_INVALID_FIELD);
	expect_st(&x, "CQ running off the end of RAM", create_cq(2, end - PAGE, 1024), ST_INVALID_FIELD);
	expect_st(&x, "CQ at 2^64 - 4 KiB", create_cq(2, 0xFFFFFFFFFFFFF000ull, 1024), ST_INVALID_FIELD);
	expect_st(&x, "CQ 2 in RAM", create_cq(2, n.mem + O_CQ2, 16), ST_OK);
	expect_st(&x, "SQ past RAM", create_sq(2, ADDR_OUTSIDE_RAM, 16, 2), ST_INVALID_FIELD);
	expect_st(&x, "SQ running off the end of RAM", create_sq(2, end - PAGE, 1024, 2), ST_INVALID_FIELD);
	expect_st(&x, "delete CQ 2", admin(ADM_DELETE_CQ, 0, 0, 0, 2, 0), ST_OK);
	nvme_case("nvme_queues_outside_ram", x.ok, x.why);
	probe_info("nvme_ram_end", "0x%llx", end);
}

static void prp_cases(void)
{
	uintptr_t rb = n.mem + O_RBUF;
	uint64_t end = ram_end();
	uint32_t page_blocks = PAGE >> n.lba_shift;
	struct expect x = { true, "", 0 };
	expect_st(&x, "PRP1 past RAM", rw(&n.io, IO_READ, 0, page_blocks, ADDR_OUTSIDE_RAM, 0), ST_DATA_TRANSFER);
	expect_st(&x, "PRP1 in the PCI hole", rw(&n.io, IO_READ, 0, page_blocks, ADDR_PCI_HOLE, 0), ST_DATA_TRANSFER);
	expect_st(&x, "PRP2 at the end of RAM", rw(&n.io, IO_READ, 0, 2 * page_blocks, end - PAGE, end),
		  ST_DATA_TRANSFER);
	expect_st(&x, "PRP1 on the last page of RAM", rw(&n.io, IO_READ, 0, page_blocks, end - PAGE, 0), ST_OK);
	nvme_case("nvme_prp_outside_ram", x.ok, x.why);

	/* A PRP list outside RAM, a list whose entries run off RAM, a list whose chain loops to itself. */
	uint64_t *list = (uint64_t *)(n.mem + O_LIST_A);
	x = (struct expect){ true, "", 0 };
	expect_st(&x, "list past RAM", rw(&n.io, IO_READ, 0, 4 * page_blocks, rb, ADDR_OUTSIDE_RAM), ST_DATA_TRANSFER);
	*(volatile uint64_t *)(uintptr_t)(end - 8) = ADDR_OUTSIDE_RAM; /* a chain pointer out of RAM */
	expect_st(&x, "list chaining out of RAM", rw(&n.io, IO_READ, 0, 4 * page_blocks, rb, end - 8), ST_DATA_TRANSFER);
	list[0] = rb + PAGE;
	list[1] = end;
	list[2] = rb + 2 * PAGE;
	expect_st(&x, "list entry past RAM", rw(&n.io, IO_READ, 0, 4 * page_blocks, rb, n.mem + O_LIST_A),
		  ST_DATA_TRANSFER);
	/* The list starts 16 bytes before the end of its page: one data entry, then a chain pointer
	 * back to the same page: a loop. */
	uint64_t *tail = (uint64_t *)(n.mem + O_LIST_A + PAGE - 16);
	tail[0] = rb + PAGE;
	tail[1] = n.mem + O_LIST_A;
	expect_st(&x, "looping chain", rw(&n.io, IO_READ, 0, 8 * page_blocks, rb, n.mem + O_LIST_A + PAGE - 16),
		  ST_DATA_TRANSFER);
	nvme_case("nvme_prp_list_outside_ram_and_loop", x.ok, x.why);

	/* MDTS + 1 block (every list entry is a page in RAM, so only the size is wrong), the largest
	 * NLB, and an LBA range that wraps 2^64. */
	x = (struct expect){ true, "", 0 };
	for (uint32_t i = 0; i < 512; i++)
		list[i] = rb;
	if (n.mdts_bytes) {
		uint32_t blocks = (n.mdts_bytes >> n.lba_shift) + 1;
		expect_st(&x, "read of MDTS + 1 block", rw(&n.io, IO_READ, 0, blocks, rb, n.mem + O_LIST_A),
			  ST_INVALID_FIELD);
		expect_st(&x, "write of MDTS + 1 block", rw(&n.io, IO_WRITE, 0, blocks, rb, n.mem + O_LIST_A),
			  ST_INVALID_FIELD);
	}
	expect_st(&x, "read of 65536 blocks", rw(&n.io, IO_READ, 0, 65536, rb, n.mem + O_LIST_A), ST_INVALID_FIELD);
	expect_st(&x, "LBA 2^64 - 1", rw(&n.io, IO_READ, 0xFFFFFFFFFFFFFFFFull, 2, rb, 0), ST_LBA_RANGE);
	nvme_case("nvme_mdts_plus_one", x.ok, x.why);

	/* Garbage commands: every byte 0xFF (opcode 0xFF), fused bits, an SGL. */
	uint32_t s[16];
	x = (struct expect){ true, "", 0 };
	/* All ones has the fused and PSDT bits set too: Invalid Field. */
	memset(s, 0xFF, sizeof(s));
	expect_st(&x, "all-ones I/O command", exec(&n.io, s, NULL), ST_INVALID_FIELD);
	memset(s, 0xFF, sizeof(s));
	expect_st(&x, "all-ones admin command", exec(&n.admin, s, NULL), ST_INVALID_FIELD);
	memset(s, 0xFF, sizeof(s));
	s[0] = 0xFF;
	expect_st(&x, "opcode 0xFF, other dwords all ones", exec(&n.io, s, NULL), ST_INVALID_OPCODE);
	nvme_sqe_init(s, IO_READ, 1);
	s[0] |= 1u << 8;
	expect_st(&x, "fused read", exec(&n.io, s, NULL), ST_INVALID_FIELD);
	nvme_sqe_init(s, IO_READ, 1);
	s[0] |= 1u << 14;
	expect_st(&x, "SGL read", exec(&n.io, s, NULL), ST_INVALID_FIELD);
	nvme_case("nvme_garbage_commands", x.ok, x.why);
}

/* Admin and I/O commands whose sizes, offsets and pointers are garbage. */
static void command_garbage_case(void)
{
	uintptr_t buf = n.mem + O_IDENT;
	struct expect x = { true, "", 0 };
	expect_st(&x, "Get Log Page of 16 GiB", admin(ADM_GET_LOG, 0xFFFFFFFFu, buf, 0, 0xFFFF0000u | 1u, 0xFFFF),
		  ST_INVALID_FIELD);
	uint32_t s[16];
	nvme_sqe_init(s, ADM_GET_LOG, 0xFFFFFFFFu);
	s[6] = (uint32_t)buf;
	s[10] = 15u << 16 | 1u;  /* 64 bytes of the error log ... */
	s[12] = 0xFFFFFFFCu;      /* ... from offset 2^64 - 4 */
	s[13] = 0xFFFFFFFFu;
	expect_st(&x, "Get Log Page at offset 2^64 - 4", exec(&n.admin, s, NULL), ST_INVALID_FIELD);
	expect_st(&x, "Identify into a page past RAM", admin(ADM_IDENTIFY, 0, ADDR_OUTSIDE_RAM, 0, 1, 0),
		  ST_DATA_TRANSFER);
	expect_st(&x, "CQ with interrupt vector 0x7FF", admin(ADM_CREATE_CQ, 0, n.mem + O_CQ2, 0, 15u << 16 | 2u,
							       0x7FFu << 16 | 3u),
		  ST_INVALID_VECTOR);
	expect_st(&x, "Number of Queues 65536 after queues exist",
		  admin(ADM_SET_FEATURES, 0, 0, 0, 0x07, 0xFFFFFFFFu), ST_SEQUENCE);
	/* 256 deallocate ranges listed past RAM; Write Zeroes of 65536 blocks from the last block. */
	nvme_sqe_init(s, IO_DSM, 1);
	s[6] = (uint32_t)ADDR_OUTSIDE_RAM;
	s[7] = (uint32_t)(ADDR_OUTSIDE_RAM >> 32);
	s[10] = 255;
	s[11] = 1u << 2;
	expect_st(&x, "Dataset Management with 256 ranges past RAM", exec(&n.io, s, NULL), ST_DATA_TRANSFER);
	nvme_sqe_init(s, IO_WRITE_ZEROES, 1);
	s[10] = (uint32_t)(n.nsze - 1);
	s[11] = (uint32_t)((n.nsze - 1) >> 32);
	s[12] = 0xFFFF;
	expect_st(&x, "Write Zeroes of 65536 blocks from the last one", exec(&n.io, s, NULL), ST_LBA_RANGE);
	nvme_case("nvme_command_field_garbage", x.ok, x.why);
}

/* Commands on a queue pair that was deleted: the doorbell writes are ignored, nothing is fetched
 * from the old ring and nothing lands in the old completion queue or the buffer. */
static void deleted_queue_case(void)
{
	struct nvme_queue q2;
	struct expect x = { true, "", 0 };
	q_init(&q2, 2, O_SQ2, O_CQ2, 16);
	expect_st(&x, "create CQ 2", create_cq(2, q2.cq, 16), ST_OK);
	expect_st(&x, "create SQ 2", create_sq(2, q2.sq, 16, 2), ST_OK);
	uintptr_t rb = n.mem + O_RBUF;
	expect_st(&x, "read on queue 2", rw(&q2, IO_READ, 0, PAGE >> n.lba_shift, rb, 0), ST_OK);
	expect_st(&x, "delete SQ 2", admin(ADM_DELETE_SQ, 0, 0, 0, 2, 0), ST_OK);
	expect_st(&x, "delete CQ 2", admin(ADM_DELETE_CQ, 0, 0, 0, 2, 0), ST_OK);
	expect_st(&x, "delete SQ 2 again", admin(ADM_DELETE_SQ, 0, 0, 0, 2, 0), ST_INVALID_QID);
	memset((void *)rb, 0x5A, PAGE);
	uint32_t s[16];
	nvme_sqe_init(s, IO_READ, 1);
	s[6] = (uint32_t)rb;
	(void)submit(&q2, s);
	mmio_write32(db_addr(2, true), 1);
	struct nvme_cqe e;
	uint64_t dl = deadline_ms(100);
	bool completed = false;
	while (!deadline_passed(dl))
		if (nvme_cq_take(&q2, &e))
			completed = true;
	bool untouched = *(volatile uint32_t *)rb == 0x5A5A5A5Au;
	if (completed || !untouched) {
		x.ok = false;
		snprintf(x.why + x.len, sizeof(x.why) - x.len, "; deleted queue: completion posted %u, buffer written %u",
			 completed, !untouched);
	}
	nvme_case("nvme_commands_on_deleted_queue", x.ok, x.why);
}

/* Shadow doorbell buffers outside RAM are refused; a valid pair with garbage values in it is
 * survived. */
static void shadow_case(void)
{
	uintptr_t sh = n.mem + O_SHADOW, ei = n.mem + O_EVENTIDX;
	uint64_t end = ram_end();
	struct expect x = { true, "", 0 };
	expect_st(&x, "doorbells past RAM", admin(ADM_DBBUF, 0, ADDR_OUTSIDE_RAM, ei, 0, 0), ST_INVALID_FIELD);
	expect_st(&x, "event indexes past RAM", admin(ADM_DBBUF, 0, sh, ADDR_OUTSIDE_RAM, 0, 0), ST_INVALID_FIELD);
	expect_st(&x, "doorbells in the PCI hole", admin(ADM_DBBUF, 0, ADDR_PCI_HOLE, ei, 0, 0), ST_INVALID_FIELD);
	expect_st(&x, "doorbells on the first page past RAM", admin(ADM_DBBUF, 0, end, ei, 0, 0), ST_INVALID_FIELD);
	expect_st(&x, "both buffers on one page", admin(ADM_DBBUF, 0, sh, sh, 0, 0), ST_INVALID_FIELD);
	expect_st(&x, "doorbells not page aligned", admin(ADM_DBBUF, 0, sh + 8, ei, 0, 0), ST_INVALID_FIELD);
	nvme_case("nvme_shadow_doorbells_outside_ram", x.ok, x.why);

	x = (struct expect){ true, "", 0 };
	memset((void *)sh, 0, 2 * PAGE);
	expect_st(&x, "valid buffers", admin(ADM_DBBUF, 0, sh, ei, 0, 0), ST_OK);
	n.shadow = true;
	volatile uint32_t *slots = (volatile uint32_t *)sh;
	/* Garbage in queue 1's shadow tail and head, and in every other slot, then an MMIO ring. */
	for (uint32_t i = 4; i < 1024; i++)
		slots[i] = 0xFFFF0000u | i;
	slots[2] = 0xFFFFu;
	slots[3] = 0x7777u;
	mb();
	mmio_write32(db_addr(1, false), 0xFFFF);
	mmio_write32(db_addr(1, true), 0x7777);
	delay_ms(20);
	/* Back to the truth: the good request below rings the shadow slot and the doorbell. */
	slots[2] = n.io.tail;
	slots[3] = n.io.head;
	mb();
	nvme_case("nvme_shadow_doorbell_garbage", x.ok, x.why);
}

/* CC.EN toggled as fast as the guest can with commands in flight, an enable with the admin queues
 * outside RAM (CSTS.CFS), then the normal bring-up. */
static void storm_case(void)
{
	struct expect x = { true, "", 0 };
	uint32_t s[16];
	uintptr_t rb = n.mem + O_RBUF;
	for (uint32_t i = 0; i < IO_ENTRIES - 1; i++) {
		nvme_sqe_init(s, IO_READ, 1);
		s[6] = (uint32_t)rb;
		s[12] = (PAGE >> n.lba_shift) - 1;
		s[0] |= (i + 0x100) << 16;
		volatile uint32_t *slot = nvme_sq_tail_entry(&n.io);
		for (uint32_t j = 0; j < 16; j++)
			slot[j] = s[j];
		nvme_sq_advance(&n.io);
	}
	mb();
	ring(&n.io, false, n.io.tail);
	uint64_t t0 = rdtsc();
	for (uint32_t i = 0; i < 500; i++) {
		mmio_write32(n.bar + REG_CC, 0);
		mmio_write32(n.bar + REG_CC, CC_ENABLE);
	}
	probe_info("nvme_enable_storm", "toggles=500 ms=%u", tsc_to_ms(rdtsc() - t0));
	/* Admin queues outside RAM: the enable fails with CFS. */
	bool off = disable();
	program_admin(ADDR_OUTSIDE_RAM, ADDR_PCI_HOLE);
	mmio_write32(n.bar + REG_CC, CC_ENABLE);
	delay_ms(2);
	uint32_t csts = mmio_read32(n.bar + REG_CSTS);
	if (!off || (csts & (CSTS_RDY | CSTS_CFS)) != CSTS_CFS) {
		x.ok = false;
		snprintf(x.why, sizeof(x.why), "disable after the storm %u; enable with ASQ/ACQ outside RAM: CSTS 0x%x, "
					       "want CFS without RDY", off, csts);
	}
	char why[120] = "";
	if (!bring_up(why, sizeof(why))) {
		x.ok = false;
		snprintf(x.why + strlen(x.why), sizeof(x.why) - strlen(x.why), "; bring-up: %s", why);
	}
	nvme_case("nvme_enable_disable_storm", x.ok, x.why);
}

void nvme_attacks(void)
{
	doorbell_cases();
	queue_id_cases();
	prp_cases();
	command_garbage_case();
	deleted_queue_case();
	shadow_case();
	storm_case();
}
