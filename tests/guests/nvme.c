/*
 * NVMe probe: drives every NVMe controller on PCI bus 0 (class 01/08/02) the way a driver does
 * (docs/nvme.md, docs/pci.md), one PROBE line per check. For each controller, in order:
 *
 *   PCI       ids (vendor and subsystem vendor 0x1d0f), BAR0 sizing (64-bit memory BAR in the 32-bit
 *             window), memory space + bus master, the MSI-X capability (table and PBA inside BAR0),
 *             MSI-X enabled with vector 0 (admin queue) masked.
 *   bring-up  CAP (MQES, CQR, DSTRD 0, CSS NVM, MPSMIN 4 KiB), VS 1.4, an enable with a bad CC.IOSQES
 *             (CSTS.CFS), AQA/ASQ/ACQ, CC.EN with IOSQES 6 / IOCQES 4, CSTS.RDY.
 *   admin     Identify Controller (EBS identity: ids, model, serial, block-device name at 3072),
 *             Identify Namespace (size, LBA format, write protection), active namespace list = {1},
 *             Set Features Number of Queues (4 pairs), I/O queues: 1 = 64 entries with MSI-X (IV 1),
 *             2 = 8 entries polled, 3 = 16-entry SQ on a 4-entry polled CQ; an Asynchronous Event
 *             Request left outstanding; every Create/Delete error status; admin error statuses.
 *   data      writes of the pattern below on queue 1, each completion awaited through its MSI-X
 *             interrupt (IDT handler; the first one also seen in the LAPIC IRR with IF=0), Write
 *             Zeroes, Dataset Management deallocate, Flush; read back on the polled queue 2 (8
 *             entries: it wraps and flips its phase many times) and compared; a masked MSI-X vector
 *             leaves its PBA bit pending and fires on unmask; the polled queues never interrupt.
 *   errors    on queue 2, each followed by a good read that must still return the right data: LBA
 *             out of range, invalid opcode, invalid namespace, PRP outside RAM / in the PCI hole,
 *             PRP1 not dword aligned, a misaligned PRP list entry, a PRP list outside RAM, a looping
 *             PRP list chain, a transfer over MDTS, a tail doorbell beyond the queue (reported by the
 *             Asynchronous Event Request), a head doorbell beyond the queue; a write whose PRP2 is
 *             outside RAM must leave the disk untouched.
 *   queues    a full completion queue stalls its submission queue until the head doorbell frees a
 *             slot; Delete SQ/CQ (including deleting a CQ still in use and deleting twice).
 *   logs      Error Information and SMART / Health log pages.
 *   shutdown  I/O queues deleted, CC.SHN = 01b -> CSTS.SHST = 10b, CC.EN = 0 -> CSTS.RDY = 0.
 *
 * The data pattern (tests/nvme.rs checks it in the disk file afterwards): the little-endian dword at
 * byte offset o of the disk (o a multiple of 4) is
 *
 *     pattern(o, c) = (o/4) * 0x9E3779B1 + 0x6E766D65 + c * 0x01000193   (mod 2^32)
 *
 * where c is the controller's index (0 for the first NVMe function on the bus). It is written at
 * these byte ranges (all 4 KiB aligned, so valid for 512 and 4096-byte blocks):
 *
 *     R0 [0, 4K)          PRP1 only
 *     R1 [1M, 1M+8K)      PRP1 + PRP2 (two non-adjacent pages)
 *     R2 [2M, 2M+4K)      PRP1 at page offset 0x200 + PRP2
 *     R3 [4M, 4M+64K)     PRP1 + a PRP list (pages in reverse order in memory)
 *     R4 [end-4K, end)    the last blocks of the namespace
 *     R5 [6M, 6M+12K)     pattern, then Write Zeroes on [6M+4K, 6M+8K) and Dataset Management
 *                         deallocate on [6M+8K, 6M+12K): only the first 4 KiB keep the pattern
 *     Z  [8M, 8M+8K)      a write with PRP2 outside guest RAM (Data Transfer Error): stays zero
 *
 * With expect_readonly=1 every write-type command must fail with Namespace is Write Protected
 * (0/20h) and the reads compare against pattern(o, c) over all of R0..R5 (the test fills the file so).
 *
 * Command-line keys (for the first controller; the n-th one, n >= 1, uses the key with n appended,
 * e.g. expect_serial1=):
 *   expect_controllers=N     NVMe functions found on bus 0
 *   expect_serial=S          Identify Controller serial number (space padded to 20 bytes)
 *   expect_name=S            vendor-specific block-device name at bytes 3072..3103 (space padded)
 *   expect_blocks=N          Identify Namespace NSZE
 *   expect_block_size=N      LBA data size of the formatted LBA format
 *   expect_readonly=0|1      NSATTR write protection and the behaviour of writes (default 0)
 *   bench=1                  after the functional checks, a small benchmark of the first controller
 *                            (PROBE-INFO bench_* lines; no checks depend on timing)
 *   bench=seqwrite           instead of the functional checks (only PCI setup, bring-up and Identify
 *                            run), timed sequential writes on the first controller: the write rate
 *                            over time, for rate-limit tests (see bench_seqwrite below). Keys:
 *                            bench_seconds=N (default 7), bench_xfer_kib=K (default 512, at most
 *                            MDTS), bench_qd=Q (default 8, at most 32), bench_slice_ms=M (default 250)
 *   mode=flushloop           instead of the functional checks, on the first controller: generations
 *                            of the records of lib/records.h over the first 128 KiB, each written
 *                            (six commands: PRP1, PRP1+PRP2, PRP lists) and flushed, then
 *                            PROBE-INFO flushed=<g>, until killed or flush_seconds=N (default 20)
 *                            pass (see durability below)
 *   mode=fulldisk            instead of the functional checks: writes on a volume whose file cannot
 *                            grow (a full host filesystem) must fail with Capacity Exceeded and
 *                            leave the flushed records readable (see durability below)
 *   exit=...                 see the boot probe
 */
#include "probe.h"
#include "pci_cfg.h"
#include "bench.h"
#include "nvme.h"
#include "records.h"

const char probe_name[] = "nvme";

/* ---------------------------------------------------------------- PCI config space (0xCF8/0xCFC) */
#define MMIO32_START 0xC0000000u
#define MMIO32_END 0xE0000000u


#define PAGE 4096u
#define CMD_TIMEOUT_MS 5000

/* A PRP pointing past the end of guest RAM (RAM is far smaller than 12 GiB in the tests), and one
 * inside the 32-bit PCI hole where no BAR lives. */
#define PRP_OUTSIDE_RAM 0x300000000ull
#define PRP_PCI_HOLE 0xD0000000ull

/* ---------------------------------------------------------------- memory layout, per controller */
#define WORK_BASE 0x200000u
#define WORK_SIZE 0x80000u
#define MAX_CTRLS 8
#define OFF_ASQ 0x00000
#define OFF_ACQ 0x01000
#define OFF_SQ1 0x02000
#define OFF_CQ1 0x03000
#define OFF_SQ2 0x04000
#define OFF_CQ2 0x05000
#define OFF_SQ3 0x06000
#define OFF_CQ3 0x07000
#define OFF_IDENT 0x08000
#define OFF_LIST_A 0x09000
#define OFF_LIST_B 0x0A000
#define OFF_LOG 0x0B000
#define OFF_SHADOW 0x0C000
#define OFF_EVENTIDX 0x0D000
#define OFF_WBUF 0x10000 /* 16 pages */
#define OFF_RBUF 0x20000 /* 16 pages */
#define OFF_BENCH 0x30000 /* 32 pages */

#define ADMIN_ENTRIES 32
#define Q1_ENTRIES 64
#define Q2_ENTRIES 8
#define SQ3_ENTRIES 16
#define CQ3_ENTRIES 4

/* Interrupt vectors: controller i uses VEC_FIRST + 4i + MSI-X entry (entries 0..3). */
#define VEC_FIRST 0x40
#define VEC_COUNT 32

/* ---------------------------------------------------------------- interrupts */
extern const char nvme_irq_stubs[];
extern const char nvme_spurious_stub[];
static struct idt_entry g_idt[256];
static volatile uint32_t g_irqs[VEC_COUNT];

void nvme_irq(uint32_t vector);
void nvme_irq(uint32_t vector)
{
	if (vector >= VEC_FIRST && vector < VEC_FIRST + VEC_COUNT)
		g_irqs[vector - VEC_FIRST]++;
	lapic_write(0xB0, 0); /* EOI */
}

/* One 16-byte stub per vector VEC_FIRST..VEC_FIRST+31: push the vector, jump to the common part. */
__asm__(".text\n"
	".balign 16\n"
	".globl nvme_irq_stubs\n"
	"nvme_irq_stubs:\n"
	".set nvme_vec, 0x40\n"
	".rept 32\n"
	".balign 16\n"
	"pushl $nvme_vec\n"
	"jmp nvme_irq_common\n"
	".set nvme_vec, nvme_vec + 1\n"
	".endr\n"
	".balign 16\n"
	"nvme_irq_common:\n"
	"pushal\n"
	"pushl 32(%esp)\n"
	"call nvme_irq\n"
	"addl $4, %esp\n"
	"popal\n"
	"addl $4, %esp\n"
	".globl nvme_spurious_stub\n"
	"nvme_spurious_stub:\n"
	/* No iret: KVM's instruction emulator (which runs every ring-0 instruction on PVM hosts)
	 * implements it for real mode only. Rearrange EIP, CS, EFLAGS into EFLAGS, EIP and leave
	 * with popfl; ret (no privilege or CS change here). */
	"pushl %eax\n"
	"movl 4(%esp), %eax\n"  /* EIP */
	"xchgl %eax, 12(%esp)\n" /* EIP into the EFLAGS slot, EFLAGS into eax */
	"movl %eax, 8(%esp)\n"  /* EFLAGS into the CS slot */
	"popl %eax\n"
	"addl $4, %esp\n"
	"popfl\n"
	"ret\n");

/* A 256-entry IDT: the library's exception stubs, our MSI vectors, the spurious vector; the local
 * APIC software-enabled; the 8259s and LINT0 masked so that nothing but MSIs can arrive. */
static void interrupts_init(void)
{
	for (uint32_t i = 0; i < 32; i++)
		idt_set_gate(g_idt, i, exc_stub_table[i]);
	for (uint32_t i = 0; i < VEC_COUNT; i++)
		idt_set_gate(g_idt, VEC_FIRST + i, (uint32_t)(uintptr_t)nvme_irq_stubs + 16 * i);
	idt_set_gate(g_idt, 0xFF, (uint32_t)(uintptr_t)nvme_spurious_stub);
	idt_load(g_idt, ARRAY_SIZE(g_idt));
	outb(0x21, 0xFF);
	outb(0xA1, 0xFF);
	lapic_write(0x350, 1u << 16);                 /* LVT LINT0 masked */
	lapic_write(0x80, 0);                         /* TPR */
	lapic_write(0xF0, 0x100 | 0xFF);              /* SVR: enabled, spurious vector 0xFF */
}

static bool lapic_irr(uint32_t v) { return lapic_read(0x200 + 0x10 * (v / 32)) & (1u << (v % 32)); }
static bool lapic_isr(uint32_t v) { return lapic_read(0x100 + 0x10 * (v / 32)) & (1u << (v % 32)); }

static uint32_t irq_count(uint32_t v) { return g_irqs[v - VEC_FIRST]; }

/* Opens an interrupt window until vector v has fired more than `prev` times (bounded). */
static bool wait_irq(uint32_t v, uint32_t prev, uint32_t ms)
{
	uint64_t dl = deadline_ms(ms);
	for (;;) {
		__asm__ volatile("sti; nop; cli" ::: "memory");
		if (irq_count(v) != prev)
			return true;
		if (deadline_passed(dl))
			return false;
	}
}

/* ---------------------------------------------------------------- controller state */
struct sqe {
	uint32_t dw[16];
};

struct ctrl {
	uint32_t idx;
	uint8_t dev;
	char pfx[8];
	uintptr_t bar;
	uint64_t bar_size;
	uint64_t cap;
	uint32_t dstrd;
	uintptr_t msix_table, msix_pba;
	uint32_t msix_vectors;
	uintptr_t mem;
	uint32_t vec_base;
	struct nvme_queue admin, q1, q2, q3;
	uint16_t cid;
	uint64_t nsze;
	uint32_t lba_shift;
	uint32_t mdts_bytes;
	uint32_t nsqa, ncqa;
	bool ro;
	uint32_t seed;
	/* outstanding Asynchronous Event Request */
	uint16_t aer_cid;
	bool aer_done;
	uint32_t aer_result;
	/* interrupt bookkeeping for queue 1 */
	uint32_t q1_cmds, q1_irqs, q1_missed;
	uint32_t reads, writes;
};

static struct ctrl g_ctrls[MAX_CTRLS];
static uint32_t g_nctrls;

/* ---------------------------------------------------------------- reporting with a per-controller prefix */
static struct ctrl *g_cur;

static bool check(const char *name, bool cond, const char *fmt, ...) PRINTF_LIKE(3, 4);
static bool check(const char *name, bool cond, const char *fmt, ...)
{
	char full[64], why[400];
	snprintf(full, sizeof(full), "%s_%s", g_cur->pfx, name);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	return probe_check(full, cond, "%s", why);
}
static void info(const char *name, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void info(const char *name, const char *fmt, ...)
{
	char full[64], val[400];
	snprintf(full, sizeof(full), "%s_%s", g_cur->pfx, name);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(val, sizeof(val), fmt, ap);
	va_end(ap);
	probe_info(full, "%s", val);
}
/* The controller's own spelling of a command-line key: key for the first, key<n> for the n-th. */
static bool ckey_find(const char *key, const char **v, size_t *n)
{
	char k[48];
	if (g_cur->idx == 0)
		snprintf(k, sizeof(k), "%s", key);
	else
		snprintf(k, sizeof(k), "%s%u", key, g_cur->idx);
	return cmdline_find(k, v, n);
}
static bool ckey_u32(const char *key, uint32_t *out)
{
	const char *v;
	size_t n;
	return ckey_find(key, &v, &n) && parse_u32(v, n, out);
}

static bool check_status(const char *name, uint16_t got, uint16_t want)
{
	char a[16], b[16];
	return check(name, got == want, "status %s, want %s", nvme_status_str(got, a, sizeof(a)),
		     nvme_status_str(want, b, sizeof(b)));
}

/* ---------------------------------------------------------------- registers and queues */
static uint32_t reg_read(struct ctrl *c, uint32_t off) { return mmio_read32(c->bar + off); }
static void reg_write(struct ctrl *c, uint32_t off, uint32_t v) { mmio_write32(c->bar + off, v); }
static uintptr_t doorbell(struct ctrl *c, uint32_t qid, bool cq)
{
	return nvme_doorbell(c->bar, c->dstrd, (uint16_t)qid, cq);
}

static void queue_init(struct ctrl *c, struct nvme_queue *q, uint16_t qid, uint32_t sq_off, uint16_t sq_size,
		       uint32_t cq_off, uint16_t cq_size, uint32_t vec)
{
	nvme_queue_init(q, qid, c->mem + sq_off, sq_size, c->mem + cq_off, cq_size, doorbell(c, qid, false),
			doorbell(c, qid, true));
	q->vec = vec;
}

/* Copies the command into the ring at the tail (with a fresh command id), advances the tail; rings
 * the doorbell if `ring`. Returns the command id. */
static uint16_t sq_put(struct ctrl *c, struct nvme_queue *q, struct sqe *s, bool ring)
{
	uint16_t cid = nvme_sq_put(q, s->dw, &c->cid);
	barrier();
	if (ring)
		mmio_write32(q->sq_db, q->tail);
	return cid;
}

/* Waits (bounded) for the next completion. */
static bool cq_wait(struct nvme_queue *q, struct nvme_cqe *e, uint32_t ms)
{
	uint64_t dl = 0;
	for (uint32_t n = 0;; n++) {
		if (nvme_cq_take(q, e))
			return true;
		if ((n & 63) == 0) {
			if (!dl)
				dl = deadline_ms(ms);
			else if (deadline_passed(dl))
				return false;
		}
	}
}

/* Handles a completion on the admin queue that is not the one awaited (the Asynchronous Event
 * Request). */
static void admin_stray(struct ctrl *c, const struct nvme_cqe *e)
{
	if (c->aer_cid && e->cid == c->aer_cid) {
		c->aer_done = true;
		c->aer_result = e->dw0;
		c->aer_cid = 0;
	} else {
		info("stray_completion", "qid=%u cid=%u status=0x%x", e->sqid, e->cid, e->status);
	}
}

/* Submits one command and waits for its completion. On an interrupt-driven queue the wait is for the
 * MSI-X interrupt first (counted), then the completion entry. */
static uint16_t exec(struct ctrl *c, struct nvme_queue *q, struct sqe *s, struct nvme_cqe *out)
{
	struct nvme_cqe e;
	uint32_t prev = q->vec ? irq_count(q->vec) : 0;
	uint16_t cid = sq_put(c, q, s, true);
	if (q->vec) {
		c->q1_cmds++;
		if (wait_irq(q->vec, prev, CMD_TIMEOUT_MS))
			c->q1_irqs += irq_count(q->vec) - prev;
		else
			c->q1_missed++;
	}
	for (;;) {
		if (!cq_wait(q, &e, CMD_TIMEOUT_MS))
			return ST_TIMEOUT;
		mmio_write32(q->cq_db, q->head);
		if (e.cid == cid)
			break;
		if (q->qid == 0)
			admin_stray(c, &e);
		else
			info("stray_completion", "qid=%u cid=%u status=0x%x", e.sqid, e.cid, e.status);
	}
	if (out)
		*out = e;
	return e.status;
}

/* ---------------------------------------------------------------- admin helpers */
static uint16_t identify(struct ctrl *c, uint32_t cns, uint32_t nsid, uintptr_t buf)
{
	struct sqe s;
	nvme_sqe_init(s.dw, ADM_IDENTIFY, nsid);
	nvme_sqe_prp(s.dw, buf, 0);
	s.dw[10] = cns;
	memset((void *)buf, 0xEE, PAGE);
	return exec(c, &c->admin, &s, NULL);
}

static uint16_t create_cq(struct ctrl *c, uint16_t qid, uint64_t base, uint32_t entries, bool contiguous, bool ien,
			  uint16_t iv)
{
	struct sqe s;
	nvme_sqe_init(s.dw, ADM_CREATE_CQ, 0);
	nvme_sqe_prp(s.dw, base, 0);
	s.dw[10] = (entries - 1) << 16 | qid;
	s.dw[11] = (uint32_t)iv << 16 | (ien ? 2u : 0u) | (contiguous ? 1u : 0u);
	return exec(c, &c->admin, &s, NULL);
}

static uint16_t create_sq(struct ctrl *c, uint16_t qid, uint64_t base, uint32_t entries, uint16_t cqid)
{
	struct sqe s;
	nvme_sqe_init(s.dw, ADM_CREATE_SQ, 0);
	nvme_sqe_prp(s.dw, base, 0);
	s.dw[10] = (entries - 1) << 16 | qid;
	s.dw[11] = (uint32_t)cqid << 16 | 1u; /* physically contiguous, priority urgent (ignored) */
	return exec(c, &c->admin, &s, NULL);
}

static uint16_t delete_queue(struct ctrl *c, uint8_t opc, uint16_t qid)
{
	struct sqe s;
	nvme_sqe_init(s.dw, opc, 0);
	s.dw[10] = qid;
	return exec(c, &c->admin, &s, NULL);
}

static uint16_t get_log(struct ctrl *c, uint8_t lid, uint32_t bytes, uintptr_t buf, bool rae)
{
	struct sqe s;
	nvme_sqe_init(s.dw, ADM_GET_LOG, 0xFFFFFFFFu);
	nvme_sqe_prp(s.dw, buf, 0);
	uint32_t numd = bytes / 4 - 1;
	s.dw[10] = (numd & 0xFFFF) << 16 | (rae ? 1u << 15 : 0) | lid;
	s.dw[11] = numd >> 16;
	return exec(c, &c->admin, &s, NULL);
}

/* ---------------------------------------------------------------- data pattern */
static inline uint32_t pattern(uint32_t word, uint32_t seed) { return word * 0x9E3779B1u + 0x6E766D65u + seed * 0x01000193u; }

/* Fills `len` bytes at buf with the pattern of disk byte offset `off`. */
static void fill(uintptr_t buf, uint64_t off, uint32_t len, uint32_t seed)
{
	uint32_t *p = (uint32_t *)buf;
	uint32_t w = (uint32_t)(off >> 2);
	for (uint32_t i = 0; i < len / 4; i++)
		p[i] = pattern(w + i, seed);
}

/* Compares `len` bytes at buf with the pattern of disk offset `off` (or with zeroes if `zero`). On a
 * mismatch, describes the first one in why. */
static bool verify(uintptr_t buf, uint64_t off, uint32_t len, uint32_t seed, bool zero, char *why, size_t n)
{
	const volatile uint32_t *p = (const volatile uint32_t *)buf;
	uint32_t w = (uint32_t)(off >> 2);
	for (uint32_t i = 0; i < len / 4; i++) {
		uint32_t want = zero ? 0 : pattern(w + i, seed);
		if (p[i] != want) {
			snprintf(why, n, "disk byte 0x%llx: read 0x%08x, want 0x%08x", off + 4ull * i, p[i], want);
			return false;
		}
	}
	return true;
}

/* ---------------------------------------------------------------- I/O helpers */
static uint16_t rw(struct ctrl *c, struct nvme_queue *q, uint8_t opc, uint64_t off, uint32_t len, uint64_t prp1,
		   uint64_t prp2)
{
	struct sqe s;
	nvme_sqe_rw(s.dw, opc, off >> c->lba_shift, len >> c->lba_shift, prp1, prp2);
	if (opc == IO_READ)
		c->reads++;
	else if (opc == IO_WRITE)
		c->writes++;
	return exec(c, q, &s, NULL);
}

/* The byte ranges of the disk the probe writes (see the header). */
#define R0_OFF 0x0ull
#define R1_OFF 0x100000ull
#define R2_OFF 0x200000ull
#define R3_OFF 0x400000ull
#define R5_OFF 0x600000ull
#define Z_OFF 0x800000ull
#define R3_LEN 0x10000u
#define R5_LEN 0x3000u

static uint64_t disk_bytes(struct ctrl *c) { return c->nsze << c->lba_shift; }
static uint64_t r4_off(struct ctrl *c) { return disk_bytes(c) - PAGE; }

/* A good read of R0 into the read buffer, verified: the "controller still works" read after each
 * error case. */
static bool good_read(struct ctrl *c, struct nvme_queue *q, char *why, size_t n)
{
	uintptr_t rb = c->mem + OFF_RBUF;
	memset((void *)rb, 0xA5, PAGE);
	char a[16];
	uint16_t st = rw(c, q, IO_READ, R0_OFF, PAGE, rb, 0);
	if (st != ST_OK) {
		snprintf(why, n, "the good read after it: status %s", nvme_status_str(st, a, sizeof(a)));
		return false;
	}
	if (!verify(rb, R0_OFF, PAGE, c->seed, false, why, n))
		return false;
	return true;
}

/* Runs an I/O error case on queue 2: expects `want`, then a good read. */
static void io_error_case(struct ctrl *c, const char *name, struct sqe *s, uint16_t want)
{
	char a[16], b[16], why[160] = "";
	struct nvme_cqe e;
	uint16_t st = exec(c, &c->q2, s, &e);
	bool ok = st == want;
	if (!ok)
		snprintf(why, sizeof(why), "status %s, want %s", nvme_status_str(st, a, sizeof(a)),
			 nvme_status_str(want, b, sizeof(b)));
	else if (st != ST_OK && !e.dnr)
		ok = false, snprintf(why, sizeof(why), "status %s without Do Not Retry",
				     nvme_status_str(st, a, sizeof(a)));
	else if (!good_read(c, &c->q2, why, sizeof(why)))
		ok = false;
	check(name, ok, "%s", why);
}

/* ---------------------------------------------------------------- PCI side */
static void pci_setup(struct ctrl *c)
{
	uint32_t id = cfg_read32(c->dev, 0x00), sub = cfg_read32(c->dev, 0x2C);
	info("pci", "00:%02x.0 %04x:%04x subsystem %04x:%04x", c->dev, id & 0xFFFF, id >> 16, sub & 0xFFFF, sub >> 16);
	check("pci_ids", (id & 0xFFFF) == 0x1d0f && (sub & 0xFFFF) == 0x1d0f && (id >> 16) == 0x8061,
	      "vendor %04x device %04x subsystem vendor %04x, want 1d0f 8061 1d0f", id & 0xFFFF, id >> 16, sub & 0xFFFF);

	uint16_t cmd = cfg_read16(c->dev, 0x04);
	cfg_write16(c->dev, 0x04, cmd & ~7u);
	uint32_t lo = cfg_read32(c->dev, 0x10), hi = cfg_read32(c->dev, 0x14);
	cfg_write32(c->dev, 0x10, 0xFFFFFFFFu);
	cfg_write32(c->dev, 0x14, 0xFFFFFFFFu);
	uint32_t mlo = cfg_read32(c->dev, 0x10), mhi = cfg_read32(c->dev, 0x14);
	cfg_write32(c->dev, 0x10, lo);
	cfg_write32(c->dev, 0x14, hi);
	bool restored = cfg_read32(c->dev, 0x10) == lo && cfg_read32(c->dev, 0x14) == hi;
	uint64_t mask = (uint64_t)mhi << 32 | (mlo & ~0xFu);
	c->bar_size = mask ? ~mask + 1 : 0;
	uint64_t addr = (uint64_t)hi << 32 | (lo & ~0xFu);
	info("bar0", "addr=0x%llx size=0x%llx flags=0x%x", addr, c->bar_size, lo & 0xF);
	bool is64 = (lo & 0x7) == 0x4, pow2 = c->bar_size && !(c->bar_size & (c->bar_size - 1));
	bool in32 = addr >= MMIO32_START && addr + c->bar_size <= MMIO32_END;
	check("pci_bar0", restored && is64 && !(lo & 8) && pow2 && c->bar_size >= 0x4000 && in32 &&
			      !(addr & (c->bar_size - 1)),
	      "BAR0 0x%llx size 0x%llx flags 0x%x restored=%u: want a 64-bit non-prefetchable memory BAR of at least "
	      "16 KiB, naturally aligned, in the 32-bit window",
	      addr, c->bar_size, lo & 0xF, restored);
	/* Drive the controller wherever below 4 GiB its BAR is (QEMU's firmware puts it elsewhere). */
	c->bar = addr && addr + c->bar_size <= 0x100000000ull ? (uintptr_t)addr : 0;

	cfg_write16(c->dev, 0x04, (uint16_t)((cmd & ~0x400u) | 0x6)); /* memory space, bus master */
	uint16_t now = cfg_read16(c->dev, 0x04);
	check("pci_command", (now & 6) == 6, "command register 0x%x after enabling memory space and bus master", now);

	/* MSI-X capability. */
	uint8_t msix = 0, ptr = (cfg_read16(c->dev, 0x06) & 0x10) ? cfg_read8(c->dev, 0x34) : 0;
	for (uint32_t n = 0; ptr && n < 48; n++) {
		if (cfg_read8(c->dev, ptr) == 0x11) {
			msix = ptr;
			break;
		}
		ptr = cfg_read8(c->dev, ptr + 1);
	}
	if (!check("msix_cap", msix != 0, "no MSI-X capability"))
		return;
	uint16_t control = cfg_read16(c->dev, msix + 2);
	uint32_t table = cfg_read32(c->dev, msix + 4), pba = cfg_read32(c->dev, msix + 8);
	c->msix_vectors = (control & 0x7FF) + 1u;
	info("msix", "vectors=%u table=BAR%u+0x%x pba=BAR%u+0x%x", c->msix_vectors, table & 7, table & ~7u, pba & 7,
	     pba & ~7u);
	bool fits = (table & 7) == 0 && (pba & 7) == 0 && (table & ~7u) + 16ull * c->msix_vectors <= c->bar_size &&
		    (pba & ~7u) + 8ull * ((c->msix_vectors + 63) / 64) <= c->bar_size;
	check("msix_layout", fits && c->msix_vectors >= 4 && (table & ~7u) >= 0x1000,
	      "%u vectors, table BAR%u+0x%x, PBA BAR%u+0x%x: want >= 4 vectors, both in BAR0 past the doorbells",
	      c->msix_vectors, table & 7, table & ~7u, pba & 7, pba & ~7u);
	if (!fits || !c->bar)
		return;
	c->msix_table = c->bar + (table & ~7u);
	c->msix_pba = c->bar + (pba & ~7u);
	/* Enable MSI-X, function not masked. */
	cfg_write16(c->dev, msix + 2, (uint16_t)((control | 0x8000) & ~0x4000));
	uint16_t ctl = cfg_read16(c->dev, msix + 2);
	check("msix_enable", (ctl & 0xC000) == 0x8000, "message control 0x%x after enabling", ctl);
}

/* Programs MSI-X table entry `entry` to deliver vector `vec` to this CPU's LAPIC. */
static void msix_program(struct ctrl *c, uint32_t entry, uint32_t vec, bool masked)
{
	uintptr_t e = c->msix_table + 16 * entry;
	mmio_write32(e + 12, 1);
	mmio_write32(e + 0, LAPIC_BASE | (cpuid_apic_id() << 12));
	mmio_write32(e + 4, 0);
	mmio_write32(e + 8, vec);
	mmio_write32(e + 12, masked ? 1 : 0);
}
static void msix_mask(struct ctrl *c, uint32_t entry, bool masked) { mmio_write32(c->msix_table + 16 * entry + 12, masked ? 1 : 0); }
static bool msix_pending(struct ctrl *c, uint32_t entry)
{
	return mmio_read32(c->msix_pba + 4 * (entry / 32)) & (1u << (entry % 32));
}

/* ---------------------------------------------------------------- bring-up */
static bool wait_csts(struct ctrl *c, uint32_t mask, uint32_t want, uint32_t ms, uint32_t *last)
{
	uint64_t dl = deadline_ms(ms);
	for (;;) {
		uint32_t v = reg_read(c, REG_CSTS);
		*last = v;
		if ((v & mask) == want)
			return true;
		if (deadline_passed(dl))
			return false;
		delay_us(100);
	}
}

static bool bring_up(struct ctrl *c)
{
	c->cap = mmio_read64(c->bar + REG_CAP);
	uint32_t mqes = (uint32_t)(c->cap & 0xFFFF), cqr = (c->cap >> 16) & 1, to = (c->cap >> 24) & 0xFF;
	c->dstrd = (c->cap >> 32) & 0xF;
	uint32_t css = (c->cap >> 37) & 0xFF, mpsmin = (c->cap >> 48) & 0xF, mpsmax = (c->cap >> 52) & 0xF;
	info("cap", "0x%llx mqes=%u cqr=%u to=%u dstrd=%u css=0x%x mpsmin=%u mpsmax=%u", c->cap, mqes, cqr, to, c->dstrd,
	     css, mpsmin, mpsmax);
	check("cap", mqes >= Q1_ENTRIES - 1 && cqr == 1 && c->dstrd == 0 && (css & 1) && mpsmin == 0,
	      "MQES %u CQR %u DSTRD %u CSS 0x%x MPSMIN %u: want MQES >= 63, CQR 1, DSTRD 0, NVM, 4 KiB pages", mqes, cqr,
	      c->dstrd, css, mpsmin);
	uint32_t vs = reg_read(c, REG_VS);
	check("vs", vs == 0x10400, "VS 0x%x, want 0x10400 (1.4.0)", vs);
	uint32_t timeout = to ? to * 500u : 10000u, last;
	if (timeout > 20000)
		timeout = 20000;

	if (reg_read(c, REG_CC) & CC_EN) {
		reg_write(c, REG_CC, 0);
		wait_csts(c, CSTS_RDY, 0, timeout, &last);
	}
	queue_init(c, &c->admin, 0, OFF_ASQ, ADMIN_ENTRIES, OFF_ACQ, ADMIN_ENTRIES, 0);
	reg_write(c, REG_AQA, (ADMIN_ENTRIES - 1) << 16 | (ADMIN_ENTRIES - 1));
	mmio_write64(c->bar + REG_ASQ, c->admin.sq);
	mmio_write64(c->bar + REG_ACQ, c->admin.cq);
	uint32_t aqa = reg_read(c, REG_AQA);
	uint64_t asq = mmio_read64(c->bar + REG_ASQ), acq = mmio_read64(c->bar + REG_ACQ);
	check("admin_regs", aqa == ((ADMIN_ENTRIES - 1) << 16 | (ADMIN_ENTRIES - 1)) && asq == c->admin.sq &&
				    acq == c->admin.cq,
	      "AQA 0x%x ASQ 0x%llx ACQ 0x%llx do not read back", aqa, asq, acq);

	/* An enable with 32-byte submission queue entries must fail with CSTS.CFS (docs/nvme.md). */
	reg_write(c, REG_CC, CC_EN | CC_IOSQES(5) | CC_IOCQES(4));
	delay_ms(5);
	uint32_t bad = reg_read(c, REG_CSTS);
	reg_write(c, REG_CC, 0);
	bool cleared = wait_csts(c, CSTS_RDY | CSTS_CFS, 0, timeout, &last);
	check("enable_bad_cc", (bad & (CSTS_RDY | CSTS_CFS)) == CSTS_CFS && cleared,
	      "CC.EN with IOSQES 5: CSTS 0x%x (want CFS, not RDY); after CC.EN=0: CSTS 0x%x", bad, last);

	reg_write(c, REG_CC, CC_EN | CC_IOSQES(6) | CC_IOCQES(4));
	bool ready = wait_csts(c, CSTS_RDY | CSTS_CFS, CSTS_RDY, timeout, &last);
	return check("enable", ready, "CSTS 0x%x %u ms after CC.EN=1 (CC 0x%x)", last, timeout, reg_read(c, REG_CC));
}

static bool padded_eq(const uint8_t *field, size_t len, const char *want)
{
	size_t n = strlen(want);
	if (n > len || memcmp(field, want, n) != 0)
		return false;
	for (size_t i = n; i < len; i++)
		if (field[i] != ' ')
			return false;
	return true;
}

static void admin_identify(struct ctrl *c)
{
	uintptr_t buf = c->mem + OFF_IDENT;
	const uint8_t *b = (const uint8_t *)buf;
	uint16_t st = identify(c, 1, 0, buf);
	if (check_status("identify_ctrl", st, ST_OK)) {
		uint16_t vid = (uint16_t)(b[0] | b[1] << 8), ssvid = (uint16_t)(b[2] | b[3] << 8);
		info("id_model", "%.40s", (const char *)b + 24);
		info("id_serial", "%.20s", (const char *)b + 4);
		info("id_firmware", "%.8s", (const char *)b + 64);
		info("id_name", "%.32s", (const char *)b + 3072);
		c->mdts_bytes = b[77] ? PAGE << b[77] : 0;
		uint32_t nn = (uint32_t)b[516] | (uint32_t)b[517] << 8 | (uint32_t)b[518] << 16 | (uint32_t)b[519] << 24;
		uint16_t oacs = (uint16_t)(b[256] | b[257] << 8);
		info("id_fields", "mdts=%u oacs=0x%x sqes=0x%x cqes=0x%x nn=%u vwc=%u", b[77], oacs, b[512], b[513], nn,
		     b[525]);
		check("id_vendor", vid == 0x1d0f && ssvid == 0x1d0f, "VID %04x SSVID %04x, want 1d0f", vid, ssvid);
		check("id_model", padded_eq(b + 24, 40, "Amazon Elastic Block Store"),
		      "model \"%.40s\" is not \"Amazon Elastic Block Store\" space padded", (const char *)b + 24);
		check("id_entry_sizes", b[512] == 0x66 && b[513] == 0x44 && nn == 1,
		      "SQES 0x%x CQES 0x%x NN %u, want 0x66 0x44 1", b[512], b[513], nn);
		char want[40];
		const char *v;
		size_t n;
		if (ckey_find("expect_serial", &v, &n)) {
			snprintf(want, sizeof(want), "%.*s", (int)n, v);
			check("id_serial", padded_eq(b + 4, 20, want), "serial \"%.20s\", want \"%s\" space padded",
			      (const char *)b + 4, want);
		}
		if (ckey_find("expect_name", &v, &n)) {
			snprintf(want, sizeof(want), "%.*s", (int)n, v);
			check("id_name", padded_eq(b + 3072, 32, want), "bytes 3072.. \"%.32s\", want \"%s\" space padded",
			      (const char *)b + 3072, want);
		}
	}

	st = identify(c, 0, 1, buf);
	if (check_status("identify_ns", st, ST_OK)) {
		c->nsze = (uint64_t)(b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24) |
			  (uint64_t)(b[4] | b[5] << 8 | b[6] << 16 | (uint32_t)b[7] << 24) << 32;
		uint32_t flbas = b[26] & 0xF;
		c->lba_shift = b[128 + 4 * flbas + 2];
		uint32_t ms = (uint32_t)(b[128 + 4 * flbas] | b[129 + 4 * flbas] << 8);
		bool ro = b[99] & 1;
		info("ns", "nsze=%llu flbas=%u lbads=%u ms=%u nsattr=0x%x dlfeat=0x%x", c->nsze, b[26], c->lba_shift, ms,
		     b[99], b[33]);
		uint32_t want;
		if (ckey_u32("expect_blocks", &want))
			check("ns_blocks", c->nsze == want, "NSZE %llu, want %u", c->nsze, want);
		if (ckey_u32("expect_block_size", &want))
			check("ns_block_size", c->lba_shift < 32 && (1u << c->lba_shift) == want && ms == 0,
			      "LBA format %u: 2^%u-byte blocks, %u metadata bytes; want %u, no metadata", flbas,
			      c->lba_shift, ms, want);
		uint32_t want_ro = 0;
		ckey_u32("expect_readonly", &want_ro);
		c->ro = want_ro != 0;
		check("ns_write_protect", ro == c->ro, "NSATTR 0x%x, want write protected = %u", b[99], want_ro);
	}
	if (c->lba_shift < 9 || c->lba_shift > 12 || c->nsze << c->lba_shift < 0x1000000ull) {
		check("ns_usable", false, "namespace of %llu 2^%u-byte blocks: the probe needs 512 or 4096-byte blocks and "
					  "at least 16 MiB", c->nsze, c->lba_shift);
		c->nsze = 0;
	}

	st = identify(c, 2, 0, buf);
	const uint32_t *list = (const uint32_t *)buf;
	if (check_status("identify_ns_list", st, ST_OK))
		check("ns_list", list[0] == 1 && list[1] == 0, "active namespaces start %u, %u: want {1}", list[0],
		      list[1]);
	check_status("identify_bad_nsid", identify(c, 0, 2, buf), ST_INVALID_NS);
}

static bool create_queues(struct ctrl *c)
{
	struct sqe s;
	struct nvme_cqe e;
	nvme_sqe_init(s.dw, ADM_SET_FEATURES, 0);
	s.dw[10] = 0x07;
	s.dw[11] = 3u << 16 | 3u; /* 4 SQs, 4 CQs */
	uint16_t st = exec(c, &c->admin, &s, &e);
	c->nsqa = (e.dw0 & 0xFFFF) + 1;
	c->ncqa = (e.dw0 >> 16) + 1;
	if (st == ST_OK)
		info("queues_allocated", "sq=%u cq=%u", c->nsqa, c->ncqa);
	if (!check("set_num_queues", st == ST_OK && c->nsqa >= 4 && c->ncqa >= 4,
		   "status 0x%x, allocated %u SQs %u CQs: want at least 4 each", st, c->nsqa, c->ncqa))
		return false;

	/* Queue 1: interrupts through MSI-X entry 1; queues 2 and 3 polled (their entries are
	 * programmed and unmasked anyway: they must never fire). Entry 0 (admin) stays masked. */
	msix_program(c, 0, c->vec_base + 0, true);
	msix_program(c, 1, c->vec_base + 1, false);
	msix_program(c, 2, c->vec_base + 2, false);
	msix_program(c, 3, c->vec_base + 3, false);
	queue_init(c, &c->q1, 1, OFF_SQ1, Q1_ENTRIES, OFF_CQ1, Q1_ENTRIES, c->vec_base + 1);
	queue_init(c, &c->q2, 2, OFF_SQ2, Q2_ENTRIES, OFF_CQ2, Q2_ENTRIES, 0);
	queue_init(c, &c->q3, 3, OFF_SQ3, SQ3_ENTRIES, OFF_CQ3, CQ3_ENTRIES, 0);
	uint16_t st1 = create_cq(c, 1, c->q1.cq, Q1_ENTRIES, true, true, 1);
	uint16_t st2 = create_sq(c, 1, c->q1.sq, Q1_ENTRIES, 1);
	uint16_t st3 = create_cq(c, 2, c->q2.cq, Q2_ENTRIES, true, false, 2);
	uint16_t st4 = create_sq(c, 2, c->q2.sq, Q2_ENTRIES, 2);
	uint16_t st5 = create_cq(c, 3, c->q3.cq, CQ3_ENTRIES, true, false, 3);
	uint16_t st6 = create_sq(c, 3, c->q3.sq, SQ3_ENTRIES, 3);
	return check("create_io_queues", !(st1 | st2 | st3 | st4 | st5 | st6),
		     "statuses: CQ1 0x%x SQ1 0x%x CQ2 0x%x SQ2 0x%x CQ3 0x%x SQ3 0x%x", st1, st2, st3, st4, st5, st6);
}

/* Leaves an Asynchronous Event Request with the controller. */
static void submit_aer(struct ctrl *c)
{
	struct sqe s;
	nvme_sqe_init(s.dw, ADM_AER, 0);
	c->aer_done = false;
	c->aer_cid = sq_put(c, &c->admin, &s, true);
}

/* Waits (bounded) for the outstanding Asynchronous Event Request to complete. */
static bool wait_aer(struct ctrl *c, uint32_t ms)
{
	struct nvme_cqe e;
	uint64_t dl = deadline_ms(ms);
	while (!c->aer_done && !deadline_passed(dl)) {
		if (nvme_cq_take(&c->admin, &e)) {
			mmio_write32(c->admin.cq_db, c->admin.head);
			admin_stray(c, &e);
		}
	}
	return c->aer_done;
}

static void admin_errors(struct ctrl *c)
{
	uintptr_t spare = c->mem + OFF_LIST_B; /* a page-aligned page for queues that must not be created */
	check_status("create_sq_bad_cq", create_sq(c, 4, spare, 8, 4), ST_INVALID_CQ);
	check_status("create_sq_qid0", create_sq(c, 0, spare, 8, 1), ST_INVALID_QID);
	if (c->nsqa < 0xFFFF)
		check_status("create_sq_beyond_allocated", create_sq(c, (uint16_t)(c->nsqa + 1), spare, 8, 1),
			     ST_INVALID_QID);
	uint32_t mqes = (uint32_t)(c->cap & 0xFFFF);
	if (mqes < 0xFFFF)
		check_status("create_sq_too_big", create_sq(c, 4, spare, mqes + 2, 1), ST_INVALID_QSIZE);
	check_status("create_sq_size1", create_sq(c, 4, spare, 1, 1), ST_INVALID_QSIZE);
	check_status("create_cq_exists", create_cq(c, 1, spare, 8, true, false, 0), ST_INVALID_QID);
	check_status("create_cq_bad_vector", create_cq(c, 4, spare, 8, true, true, (uint16_t)c->msix_vectors),
		     ST_INVALID_VECTOR);
	check_status("create_cq_noncontiguous", create_cq(c, 4, spare, 8, false, false, 0), ST_INVALID_FIELD);
	struct sqe s;
	nvme_sqe_init(s.dw, ADM_SET_FEATURES, 0);
	s.dw[10] = 0x07;
	s.dw[11] = 0;
	check_status("set_num_queues_late", exec(c, &c->admin, &s, NULL), ST_SEQUENCE);
	nvme_sqe_init(s.dw, 0x03, 0); /* reserved admin opcode */
	check_status("admin_bad_opcode", exec(c, &c->admin, &s, NULL), ST_INVALID_OPCODE);
	uint16_t st = identify(c, 2, 0, c->mem + OFF_IDENT);
	check("admin_after_errors", st == ST_OK && *(volatile uint32_t *)(c->mem + OFF_IDENT) == 1,
	      "Identify after the error cases: status 0x%x", st);
}

/* ---------------------------------------------------------------- data path */

/* The first command on the MSI-X queue: its interrupt must show up in the LAPIC IRR while IF=0, then
 * reach the IDT handler once interrupts are enabled, and leave ISR clear after the EOI. */
static void first_interrupt(struct ctrl *c)
{
	struct nvme_queue *q = &c->q1;
	struct sqe s;
	struct nvme_cqe e;
	uintptr_t wb = c->mem + OFF_WBUF;
	fill(wb, R0_OFF, PAGE, c->seed);
	nvme_sqe_rw(s.dw, IO_WRITE, R0_OFF >> c->lba_shift, PAGE >> c->lba_shift, wb, 0);
	c->writes++;
	uint32_t prev = irq_count(q->vec);
	uint16_t cid = sq_put(c, q, &s, true);
	bool done = cq_wait(q, &e, CMD_TIMEOUT_MS);
	mmio_write32(q->cq_db, q->head);
	uint16_t want = c->ro ? ST_WRITE_PROTECTED : ST_OK;
	char a[16], b[16];
	check("write_prp1", done && e.cid == cid && e.status == want, "completion %s cid %u status %s, want %s",
	      done ? "seen" : "missing", e.cid, nvme_status_str(done ? e.status : ST_TIMEOUT, a, sizeof(a)),
	      nvme_status_str(want, b, sizeof(b)));
	/* The completion is posted before the interrupt is raised: allow a moment for the irqfd. */
	uint64_t dl = deadline_ms(1000);
	bool irr = false;
	while (!(irr = lapic_irr(q->vec)) && !deadline_passed(dl))
		delay_us(50);
	check("msix_irr", irr, "vector 0x%x not pending in the LAPIC IRR 1 s after the completion", q->vec);
	bool got = wait_irq(q->vec, prev, 1000);
	bool isr = lapic_isr(q->vec);
	check("msix_idt", got && irq_count(q->vec) == prev + 1 && !isr,
	      "handler for vector 0x%x ran %u times (want 1), ISR %s after EOI", q->vec, irq_count(q->vec) - prev,
	      isr ? "still set" : "clear");
	info("msix_method", "lapic_irr+idt vector=0x%x", q->vec);
}

/* Writes R0..R5 on the interrupt-driven queue (or, read-only, checks they are refused). */
static void write_phase(struct ctrl *c)
{
	struct nvme_queue *q = &c->q1;
	uintptr_t wb = c->mem + OFF_WBUF, la = c->mem + OFF_LIST_A;
	uint64_t *list = (uint64_t *)la;
	uint16_t want = c->ro ? ST_WRITE_PROTECTED : ST_OK;

	first_interrupt(c); /* R0, PRP1 only */

	/* R1: PRP1 + PRP2 on two non-adjacent pages. */
	fill(wb + 0 * PAGE, R1_OFF, PAGE, c->seed);
	fill(wb + 2 * PAGE, R1_OFF + PAGE, PAGE, c->seed);
	check_status("write_prp2", rw(c, q, IO_WRITE, R1_OFF, 2 * PAGE, wb, wb + 2 * PAGE), want);

	/* R2: PRP1 at page offset 0x200, the rest through PRP2. */
	fill(wb + 4 * PAGE + 0x200, R2_OFF, PAGE, c->seed);
	check_status("write_prp1_offset", rw(c, q, IO_WRITE, R2_OFF, PAGE, wb + 4 * PAGE + 0x200, wb + 5 * PAGE), want);

	/* R3: 64 KiB, PRP1 + a list of 15 entries; transfer page i lives at buffer page 15 - i. */
	for (uint32_t i = 0; i < 16; i++) {
		fill(wb + (15 - i) * PAGE, R3_OFF + i * PAGE, PAGE, c->seed);
		if (i)
			list[i - 1] = wb + (15 - i) * PAGE;
	}
	check_status("write_prp_list", rw(c, q, IO_WRITE, R3_OFF, R3_LEN, wb + 15 * PAGE, la), want);

	/* R4: the last 4 KiB of the namespace. */
	fill(wb, r4_off(c), PAGE, c->seed);
	check_status("write_last_lba", rw(c, q, IO_WRITE, r4_off(c), PAGE, wb, 0), want);

	/* R5: 12 KiB of pattern (PRP1 + a 2-entry list), then Write Zeroes and deallocate. */
	for (uint32_t i = 0; i < 3; i++)
		fill(wb + i * PAGE, R5_OFF + i * PAGE, PAGE, c->seed);
	list[0] = wb + PAGE;
	list[1] = wb + 2 * PAGE;
	check_status("write_12k", rw(c, q, IO_WRITE, R5_OFF, R5_LEN, wb, la), want);
	struct sqe s;
	nvme_sqe_rw(s.dw, IO_WRITE_ZEROES, (R5_OFF + PAGE) >> c->lba_shift, PAGE >> c->lba_shift, 0, 0);
	check_status("write_zeroes", exec(c, q, &s, NULL), want);
	uint32_t *range = (uint32_t *)(c->mem + OFF_LOG);
	memset(range, 0, 16);
	range[1] = PAGE >> c->lba_shift;                          /* length in blocks */
	range[2] = (uint32_t)((R5_OFF + 2 * PAGE) >> c->lba_shift); /* starting LBA */
	nvme_sqe_init(s.dw, IO_DSM, 1);
	nvme_sqe_prp(s.dw, c->mem + OFF_LOG, 0);
	s.dw[10] = 0;      /* one range */
	s.dw[11] = 1u << 2; /* deallocate */
	check_status("dsm_deallocate", exec(c, q, &s, NULL), want);

	nvme_sqe_init(s.dw, IO_FLUSH, 1);
	check_status("flush", exec(c, q, &s, NULL), ST_OK);
}

/* Reads everything back on the polled queue 2 and compares. */
static void read_phase(struct ctrl *c)
{
	struct nvme_queue *q = &c->q2;
	uintptr_t rb = c->mem + OFF_RBUF, la = c->mem + OFF_LIST_A, lb = c->mem + OFF_LIST_B;
	char why[160] = "", a[16];
	uint16_t st;
	bool ok;
#define READ_CHECK(name, expr)                                                                            \
	do {                                                                                              \
		why[0] = 0;                                                                               \
		ok = (expr);                                                                              \
		check(name, ok, "%s", why[0] ? why : "status not ok");                                   \
	} while (0)
#define STATUS_OK(st) \
	((st) == ST_OK || (snprintf(why, sizeof(why), "status %s", nvme_status_str(st, a, sizeof(a))), false))

	memset((void *)rb, 0xA5, 16 * PAGE);
	st = rw(c, q, IO_READ, R0_OFF, PAGE, rb + 3 * PAGE, 0);
	READ_CHECK("read_prp1", STATUS_OK(st) && verify(rb + 3 * PAGE, R0_OFF, PAGE, c->seed, false, why, sizeof(why)));

	st = rw(c, q, IO_READ, R1_OFF, 2 * PAGE, rb + 5 * PAGE, rb + 1 * PAGE);
	READ_CHECK("read_prp2", STATUS_OK(st) && verify(rb + 5 * PAGE, R1_OFF, PAGE, c->seed, false, why, sizeof(why)) &&
					verify(rb + 1 * PAGE, R1_OFF + PAGE, PAGE, c->seed, false, why, sizeof(why)));

	/* 4 KiB at page offset 0x604: 0x9FC bytes through PRP1, the rest through PRP2. */
	st = rw(c, q, IO_READ, R2_OFF, PAGE, rb + 7 * PAGE + 0x604, rb + 8 * PAGE);
	READ_CHECK("read_prp1_offset",
		   STATUS_OK(st) && verify(rb + 7 * PAGE + 0x604, R2_OFF, PAGE, c->seed, false, why, sizeof(why)));

	/* R3 through a chained PRP list: the first list starts 32 bytes before the end of its page (3
	 * data entries + a pointer to the next list page, which holds the other 12). */
	memset((void *)rb, 0xA5, 16 * PAGE);
	uint64_t *first = (uint64_t *)(la + PAGE - 32), *second = (uint64_t *)lb;
	for (uint32_t i = 1; i < 16; i++) {
		uint64_t page = rb + i * PAGE;
		if (i <= 3)
			first[i - 1] = page;
		else
			second[i - 4] = page;
	}
	first[3] = lb;
	st = rw(c, q, IO_READ, R3_OFF, R3_LEN, rb, la + PAGE - 32);
	READ_CHECK("read_prp_chain", STATUS_OK(st) && verify(rb, R3_OFF, R3_LEN, c->seed, false, why, sizeof(why)));

	st = rw(c, q, IO_READ, r4_off(c), PAGE, rb, 0);
	READ_CHECK("read_last_lba", STATUS_OK(st) && verify(rb, r4_off(c), PAGE, c->seed, false, why, sizeof(why)));

	uint64_t *list = (uint64_t *)la;
	list[0] = rb + PAGE;
	list[1] = rb + 2 * PAGE;
	memset((void *)rb, 0xA5, 3 * PAGE);
	st = rw(c, q, IO_READ, R5_OFF, R5_LEN, rb, la);
	READ_CHECK("read_zeroed", STATUS_OK(st) && verify(rb, R5_OFF, PAGE, c->seed, false, why, sizeof(why)) &&
					  verify(rb + PAGE, R5_OFF + PAGE, 2 * PAGE, c->seed, !c->ro, why, sizeof(why)));
#undef READ_CHECK
#undef STATUS_OK
}

/* A masked MSI-X vector: the completion leaves its PBA bit set and no interrupt; unmasking delivers
 * it and clears the bit. */
static void masked_vector(struct ctrl *c)
{
	struct nvme_queue *q = &c->q1;
	struct sqe s;
	struct nvme_cqe e;
	msix_mask(c, 1, true);
	uint32_t prev = irq_count(q->vec);
	nvme_sqe_rw(s.dw, IO_READ, R0_OFF, PAGE >> c->lba_shift, c->mem + OFF_RBUF, 0);
	c->reads++;
	sq_put(c, q, &s, true);
	bool done = cq_wait(q, &e, CMD_TIMEOUT_MS);
	mmio_write32(q->cq_db, q->head);
	uint64_t dl = deadline_ms(1000);
	bool pending = false;
	while (!(pending = msix_pending(c, 1)) && !deadline_passed(dl))
		delay_us(50);
	__asm__ volatile("sti; nop; nop; cli" ::: "memory");
	bool quiet = irq_count(q->vec) == prev && !lapic_irr(q->vec);
	msix_mask(c, 1, false);
	bool fired = wait_irq(q->vec, prev, 1000);
	bool cleared = !msix_pending(c, 1);
	check("msix_masked_pending", done && e.status == ST_OK && pending && quiet && fired && cleared,
	      "completion %s status 0x%x; masked: PBA %s, %s; after unmask: %s, PBA %s", done ? "seen" : "missing",
	      e.status, pending ? "set" : "clear", quiet ? "no interrupt" : "interrupt delivered",
	      fired ? "interrupt" : "no interrupt", cleared ? "clear" : "still set");
}

static void io_errors(struct ctrl *c)
{
	struct sqe s;
	uintptr_t rb = c->mem + OFF_RBUF, la = c->mem + OFF_LIST_A;
	uint64_t *list = (uint64_t *)la;
	uint32_t bs_shift = c->lba_shift;

	nvme_sqe_rw(s.dw, IO_READ, c->nsze - 1, 2, rb, 0);
	io_error_case(c, "err_lba_range", &s, ST_LBA_RANGE);

	nvme_sqe_rw(s.dw, IO_READ, 0, 1, rb, 0);
	s.dw[0] = 0x7E;
	io_error_case(c, "err_opcode", &s, ST_INVALID_OPCODE);

	nvme_sqe_rw(s.dw, IO_READ, 0, 1, rb, 0);
	s.dw[1] = 2;
	io_error_case(c, "err_nsid", &s, ST_INVALID_NS);

	nvme_sqe_rw(s.dw, IO_READ, 0, PAGE >> bs_shift, PRP_OUTSIDE_RAM, 0);
	io_error_case(c, "err_prp_outside_ram", &s, ST_DATA_TRANSFER);

	nvme_sqe_rw(s.dw, IO_READ, 0, PAGE >> bs_shift, PRP_PCI_HOLE, 0);
	io_error_case(c, "err_prp_pci_hole", &s, ST_DATA_TRANSFER);

	nvme_sqe_rw(s.dw, IO_READ, 0, 1, rb + 2, 0);
	io_error_case(c, "err_prp1_unaligned", &s, ST_PRP_OFFSET);

	/* 12 KiB: PRP1 + a list whose second entry is not page aligned. */
	list[0] = rb + PAGE;
	list[1] = rb + 2 * PAGE + 0x100;
	nvme_sqe_rw(s.dw, IO_READ, 0, (3 * PAGE) >> bs_shift, rb, la);
	io_error_case(c, "err_prp_list_entry_unaligned", &s, ST_PRP_OFFSET);

	nvme_sqe_rw(s.dw, IO_READ, 0, (3 * PAGE) >> bs_shift, rb, PRP_OUTSIDE_RAM);
	io_error_case(c, "err_prp_list_outside_ram", &s, ST_DATA_TRANSFER);

	/* 16 KiB: the list starts 16 bytes before the end of its page (one data entry + a chain
	 * pointer) and chains back to its own page. */
	uint64_t *tail = (uint64_t *)(la + PAGE - 16);
	tail[0] = rb + PAGE;
	tail[1] = la;
	nvme_sqe_rw(s.dw, IO_READ, 0, (4 * PAGE) >> bs_shift, rb, la + PAGE - 16);
	io_error_case(c, "err_prp_loop", &s, ST_DATA_TRANSFER);

	if (c->mdts_bytes && (c->mdts_bytes >> bs_shift) < 0xFFFF) {
		nvme_sqe_rw(s.dw, IO_READ, 0, (c->mdts_bytes >> bs_shift) + 1, rb, la);
		io_error_case(c, "err_over_mdts", &s, ST_INVALID_FIELD);
	}

	if (!c->ro) {
		/* A write to Z whose second page is outside RAM: Data Transfer Error, Z stays zero. */
		fill(rb, Z_OFF, PAGE, c->seed);
		nvme_sqe_rw(s.dw, IO_WRITE, Z_OFF >> bs_shift, (2 * PAGE) >> bs_shift, rb, PRP_OUTSIDE_RAM);
		c->writes++;
		io_error_case(c, "err_write_prp2_outside_ram", &s, ST_DATA_TRANSFER);
	} else {
		nvme_sqe_rw(s.dw, IO_WRITE, Z_OFF >> bs_shift, PAGE >> bs_shift, rb, 0);
		io_error_case(c, "err_write_readonly", &s, ST_WRITE_PROTECTED);
	}

	/* A tail doorbell beyond the queue: ignored, reported by the Asynchronous Event Request (error
	 * event, invalid doorbell write value, Error Information log); the queue keeps working. */
	char why[160] = "";
	mmio_write32(c->q2.sq_db, 200);
	bool aer = wait_aer(c, 2000);
	uint32_t r = c->aer_result;
	bool aer_ok = aer && (r & 7) == 0 && ((r >> 8) & 0xFF) == 1 && ((r >> 16) & 0xFF) == 1;
	check("aer_invalid_doorbell", aer_ok, "%s: result 0x%x, want type 0 (error) info 1 (invalid doorbell value) log 1",
	      aer ? "completed" : "no Asynchronous Event Request completion within 2 s", r);
	bool good = good_read(c, &c->q2, why, sizeof(why));
	check("err_sq_doorbell_beyond", good, "%s", why);

	/* A head doorbell beyond the completion queue: the controller keeps serving. */
	mmio_write32(c->q2.cq_db, 100);
	good = good_read(c, &c->q2, why, sizeof(why));
	check("err_cq_doorbell_beyond", good, "%s", why);
}

/* Submission queue 3 (16 entries) completes on CQ 3 (4 entries, 3 usable): 6 reads rung at once
 * stop after 3 until the head doorbell frees the slots. */
static void cq_full(struct ctrl *c)
{
	struct nvme_queue *q = &c->q3;
	struct sqe s;
	struct nvme_cqe e[6];
	uintptr_t rb = c->mem + OFF_RBUF;
	memset((void *)rb, 0xA5, 6 * PAGE);
	uint16_t cids[6];
	for (uint32_t i = 0; i < 6; i++) {
		nvme_sqe_rw(s.dw, IO_READ, (R3_OFF + i * PAGE) >> c->lba_shift, PAGE >> c->lba_shift, rb + i * PAGE, 0);
		c->reads++;
		cids[i] = sq_put(c, q, &s, i == 5);
	}
	uint32_t got = 0;
	while (got < 3 && cq_wait(q, &e[got], CMD_TIMEOUT_MS))
		got++;
	delay_ms(20);
	struct nvme_cqe extra;
	bool stalled = got == 3 && !nvme_cq_take(q, &extra);
	mmio_write32(q->cq_db, q->head);
	while (got < 6 && cq_wait(q, &e[got], CMD_TIMEOUT_MS)) {
		got++;
		mmio_write32(q->cq_db, q->head);
	}
	bool ok = stalled && got == 6;
	char why[160] = "";
	uint32_t seen = 0, max_sqhd = 0;
	/* Completions may come in any order (the spec does not promise submission order): match ids. */
	for (uint32_t i = 0; ok && i < 6; i++) {
		uint32_t k = 0;
		while (k < 6 && cids[k] != e[i].cid)
			k++;
		if (k == 6 || (seen & (1u << k)) || e[i].status != ST_OK || e[i].sqid != 3) {
			ok = false;
			snprintf(why, sizeof(why), "completion %u: cid %u sq %u status 0x%x (want one of cids %u..%u once, sq "
						   "3, status 0)", i, e[i].cid, e[i].sqid, e[i].status, cids[0], cids[5]);
		} else if (!verify(rb + k * PAGE, R3_OFF + k * PAGE, PAGE, c->seed, false, why, sizeof(why))) {
			ok = false;
		}
		seen |= 1u << k;
		if (e[i].sqhd > max_sqhd)
			max_sqhd = e[i].sqhd;
	}
	if (!why[0] && !ok)
		snprintf(why, sizeof(why), "%u of 6 completions; %s", got,
			 stalled ? "stalled at 3" : "did not stall at 3 with the CQ full");
	check("cq_full_resume", ok, "%s", why);
	check("cq_sq_head", got == 6 && max_sqhd == 6, "completions report SQ head up to %u, want 6", max_sqhd);
}

static void delete_queues(struct ctrl *c)
{
	char why[160] = "";
	check_status("delete_cq_in_use", delete_queue(c, ADM_DELETE_CQ, 3), ST_INVALID_DELETION);
	check_status("delete_sq", delete_queue(c, ADM_DELETE_SQ, 3), ST_OK);
	check_status("delete_cq", delete_queue(c, ADM_DELETE_CQ, 3), ST_OK);
	check_status("delete_sq_again", delete_queue(c, ADM_DELETE_SQ, 3), ST_INVALID_QID);
	check_status("delete_cq_again", delete_queue(c, ADM_DELETE_CQ, 3), ST_INVALID_QID);
	check_status("delete_admin_sq", delete_queue(c, ADM_DELETE_SQ, 0), ST_INVALID_QID);
	bool good = good_read(c, &c->q2, why, sizeof(why));
	check("io_after_delete", good, "%s", why);
}

static void logs(struct ctrl *c)
{
	uintptr_t buf = c->mem + OFF_LOG;
	const volatile uint32_t *d = (const volatile uint32_t *)buf;
	memset((void *)buf, 0xEE, PAGE);
	uint16_t st = get_log(c, 0x01, 64, buf, false);
	if (check_status("log_error_info", st, ST_OK)) {
		uint32_t count = d[0];
		uint32_t status = (d[3] & 0xFFFF) >> 1; /* Status Field, without the phase tag bit */
		info("log_error_info", "error_count=%u sqid=%u cid=%u status=%u/%02xh", count, d[2] & 0xFFFF, d[2] >> 16,
		     (status >> 8) & 7, status & 0xFF);
		check("log_error_count", count >= 10 && (d[1] == 0), "newest Error Information entry count %u", count);
	}
	memset((void *)buf, 0xEE, PAGE);
	st = get_log(c, 0x02, 512, buf, false);
	if (check_status("log_smart", st, ST_OK)) {
		uint32_t reads = d[16], writes = d[20];
		info("log_smart", "host_reads=%u host_writes=%u data_units_read=%u data_units_written=%u", reads, writes,
		     d[8], d[12]);
		uint32_t want_writes = c->ro ? 0 : c->writes - 1; /* the failed write is not counted */
		check("log_smart_counts", reads >= c->reads && writes >= want_writes,
		      "host read/write commands %u/%u, the probe issued at least %u/%u", reads, writes, c->reads,
		      want_writes);
	}
}

static void shutdown_notify(struct ctrl *c);
static void shutdown(struct ctrl *c)
{
	uint16_t a = delete_queue(c, ADM_DELETE_SQ, 1), b = delete_queue(c, ADM_DELETE_CQ, 1);
	uint16_t d = delete_queue(c, ADM_DELETE_SQ, 2), e = delete_queue(c, ADM_DELETE_CQ, 2);
	check("delete_io_queues", !(a | b | d | e), "statuses SQ1 0x%x CQ1 0x%x SQ2 0x%x CQ2 0x%x", a, b, d, e);
	shutdown_notify(c);
}

/* CC.SHN = 01b -> CSTS.SHST = 10b, then CC.EN = 0 -> CSTS.RDY = 0. */
static void shutdown_notify(struct ctrl *c)
{
	uint32_t last;
	reg_write(c, REG_CC, reg_read(c, REG_CC) | CC_SHN_NORMAL);
	bool done = wait_csts(c, 3u << 2, 2u << 2, 10000, &last);
	check("shutdown", done, "CSTS 0x%x (SHST %u) 10 s after CC.SHN=01b, want SHST 2", last, CSTS_SHST(last));
	reg_write(c, REG_CC, 0);
	bool off = wait_csts(c, CSTS_RDY, 0, 10000, &last);
	check("disable", off, "CSTS 0x%x after CC.EN=0", last);
}

static void bench(struct ctrl *c);
static void bench_seqwrite(struct ctrl *c);
static void durability(struct ctrl *c);

/* ---------------------------------------------------------------- per controller */
static void run_controller(struct ctrl *c)
{
	g_cur = c;
	pci_setup(c);
	if (!c->bar || !c->msix_table)
		return;
	if (!bring_up(c))
		return;
	admin_identify(c);
	if (!c->nsze)
		return;
	if (cmdline_is("mode", "flushloop") || cmdline_is("mode", "fulldisk")) {
		if (c->idx == 0)
			durability(c);
		return;
	}
	if (cmdline_is("bench", "seqwrite")) {
		if (c->idx == 0)
			bench_seqwrite(c);
		shutdown_notify(c);
		return;
	}
	if (!create_queues(c))
		return;
	submit_aer(c);
	admin_errors(c);
	write_phase(c);
	read_phase(c);
	masked_vector(c);
	io_errors(c);
	cq_full(c);
	delete_queues(c);
	check("msix_every_completion", c->q1_missed == 0 && c->q1_irqs == c->q1_cmds,
	      "queue 1: %u commands, %u interrupts, %u waits timed out", c->q1_cmds, c->q1_irqs, c->q1_missed);
	check("polled_no_interrupts", irq_count(c->vec_base + 2) == 0 && irq_count(c->vec_base + 3) == 0 &&
					      !lapic_irr(c->vec_base + 2) && !lapic_irr(c->vec_base + 3),
	      "polled queues raised %u and %u interrupts", irq_count(c->vec_base + 2), irq_count(c->vec_base + 3));
	check("msix_admin_pba", msix_pending(c, 0) && irq_count(c->vec_base) == 0,
	      "admin vector 0 is masked: want its PBA bit set after admin completions and no interrupt (PBA %u, %u "
	      "interrupts)",
	      msix_pending(c, 0) ? 1 : 0, irq_count(c->vec_base));
	logs(c);
	if (c->idx == 0 && cmdline_is("bench", "1"))
		bench(c);
	shutdown(c);
}

void probe_main(void)
{
	interrupts_init();
	for (uint8_t dev = 0; dev < 32 && g_nctrls < MAX_CTRLS; dev++) {
		uint32_t id = cfg_read32(dev, 0);
		if ((id & 0xFFFF) == 0xFFFF)
			continue;
		if (cfg_read32(dev, 0x08) >> 8 != 0x010802)
			continue;
		struct ctrl *c = &g_ctrls[g_nctrls];
		c->idx = g_nctrls++;
		c->dev = dev;
		c->seed = c->idx;
		c->mem = WORK_BASE + c->idx * WORK_SIZE;
		c->vec_base = VEC_FIRST + 4 * c->idx;
		if (c->idx == 0)
			snprintf(c->pfx, sizeof(c->pfx), "nvme");
		else
			snprintf(c->pfx, sizeof(c->pfx), "nvme%u", c->idx);
	}
	probe_info("controllers", "%u", g_nctrls);
	probe_expect_u32("nvme_controller_count", "expect_controllers", g_nctrls);
	if (g_nctrls && !probe_check("nvme_work_memory", memmap_is_ram(WORK_BASE, g_nctrls * WORK_SIZE),
				     "0x%x+0x%x is not RAM", WORK_BASE, g_nctrls * WORK_SIZE))
		return;
	for (uint32_t i = 0; i < g_nctrls; i++)
		run_controller(&g_ctrls[i]);
}

/* ---------------------------------------------------------------- benchmark (bench=1) */
/*
 * Runs on a polled 64-entry I/O queue (qid 3, created again after the functional checks) of the first
 * controller, first with MMIO doorbells, then with shadow doorbells (Doorbell Buffer Config):
 *   randread_qd1     4 KiB reads at random 4 KiB-aligned offsets, one at a time
 *   randread_qd32    the same with 32 outstanding (completions reaped in batches, one doorbell each)
 *   seqread_128k     128 KiB reads (PRP1 + a 31-entry PRP list), one at a time, from 16 MiB on
 *   seqwrite_128k    128 KiB writes over the same range (16 MiB .. end - 1 MiB: outside R0..Z)
 * Each prints PROBE-INFO bench_<name>[_shadow]=ops bytes us (TSC) iops MB/s errors and the MMIO
 * doorbell writes it needed. Counts: bench_ops=N (default 4000) for 4 KiB, N/8 for 128 KiB.
 */
static bool g_shadow;
static uint32_t g_mmio_doorbells;

static void bench_ring(struct ctrl *c, struct nvme_queue *q, bool cq, uint16_t value)
{
	if (g_shadow) {
		uint32_t slot = 2 * q->qid + (cq ? 1 : 0);
		volatile uint32_t *db = (volatile uint32_t *)(c->mem + OFF_SHADOW) + slot;
		volatile uint32_t *ei = (volatile uint32_t *)(c->mem + OFF_EVENTIDX) + slot;
		uint16_t old = (uint16_t)*db;
		*db = value;
		mb();
		uint16_t event = (uint16_t)*ei;
		/* Linux's nvme_dbbuf_need_event: ring if the new value passed the event index. */
		if ((uint16_t)(value - event - 1) >= (uint16_t)(value - old))
			return;
	}
	g_mmio_doorbells++;
	mmio_write32(cq ? q->cq_db : q->sq_db, value);
}

/* Keeps up to qd commands of xfer bytes outstanding until ops completed. Every entry of the ring is
 * prepared once; per command only the command id, data pointer and LBA are written (on PVM hosts each
 * guest instruction is emulated, so the guest's own cost per I/O matters). Returns false on a stall
 * (nothing completed for 5 s). */
static bool bench_run(struct ctrl *c, struct nvme_queue *q, const char *name, uint8_t opc, uint32_t xfer, uint32_t qd,
		      bool random, uint32_t ops, uint32_t *errors)
{
	uint64_t lo = 16 * 0x100000ull, hi = disk_bytes(c) - 0x100000ull; /* sequential range */
	uint32_t units = (uint32_t)(disk_bytes(c) >> 12);                 /* 4 KiB units, random range */
	uint32_t pages = xfer / PAGE, shift = c->lba_shift;
	uint64_t *list = (uint64_t *)(c->mem + OFF_LIST_A);
	uintptr_t buf = c->mem + OFF_BENCH;
	if (pages > 1) {
		qd = 1; /* one buffer, one PRP list */
		for (uint32_t i = 1; i < pages; i++)
			list[i - 1] = buf + i * PAGE;
	}
	struct sqe s;
	nvme_sqe_rw(s.dw, opc, 0, xfer >> shift, buf, pages == 2 ? buf + PAGE : pages > 2 ? (uintptr_t)list : 0);
	for (uint32_t i = 0; i < q->sq_size; i++)
		memcpy((void *)(q->sq + i * 64), &s, sizeof(s));
	uint16_t free_slots[32];
	uint32_t nfree = 0;
	for (uint32_t i = 0; i < qd; i++)
		free_slots[nfree++] = (uint16_t)i;
	uint32_t submitted = 0, completed = 0, errs = 0, doorbells0 = g_mmio_doorbells;
	struct bench_offsets offsets = { random, units, xfer, lo, hi, lo };
	uint64_t t0 = rdtsc(), progress = t0, stall = (uint64_t)tsc_khz() * 5000;
	struct nvme_cqe e;
	bool stalled = false;
	while (completed < ops) {
		uint32_t n = 0;
		while (nfree && submitted < ops) {
			uint32_t slot = free_slots[--nfree];
			uint64_t off = bench_next_offset(&offsets);
			volatile uint32_t *d = nvme_sq_tail_entry(q);
			d[0] = opc | slot << 16;
			if (pages == 1)
				d[6] = buf + slot * PAGE;
			nvme_sqe_set_lba(d, off >> shift);
			nvme_sq_advance(q);
			submitted++;
			n++;
		}
		if (n) {
			barrier();
			bench_ring(c, q, false, q->tail);
		}
		uint32_t reaped = 0;
		while (nvme_cq_take(q, &e)) {
			reaped++;
			if (e.status)
				errs++;
			if (e.cid < qd && nfree < qd)
				free_slots[nfree++] = e.cid;
		}
		if (reaped) {
			completed += reaped;
			bench_ring(c, q, true, q->head);
			progress = rdtsc();
		} else if (rdtsc() - progress > stall) {
			errs += ops - completed;
			stalled = true;
			break;
		}
	}
	uint64_t ticks = rdtsc() - t0;
	uint32_t us = tsc_to_us(ticks);
	if (!us)
		us = 1;
	uint64_t bytes = (uint64_t)completed * xfer;
	char key[48];
	snprintf(key, sizeof(key), "bench_%s%s", name, g_shadow ? "_shadow" : "");
	probe_info(key, "ops=%u bytes=%llu us=%u iops=%llu mbps=%llu errors=%u mmio_doorbells=%u qd=%u%s", completed,
		   bytes, us, udiv64((uint64_t)completed * 1000000u, us, NULL), udiv64(bytes, us, NULL), errs,
		   g_mmio_doorbells - doorbells0, qd, stalled ? " stalled" : "");
	*errors += errs;
	return !stalled;
}

static void bench(struct ctrl *c)
{
	uint32_t ops = 4000, errors = 0;
	cmdline_get_u32("bench_ops", &ops);
	if (ops < 8)
		ops = 8;
	struct nvme_queue *q = &c->q3;
	probe_info("bench_disk", "bytes=%llu block_size=%u", disk_bytes(c), 1u << c->lba_shift);
	/* Pass 0 with MMIO doorbells; pass 1 with shadow doorbells, configured before the queue is
	 * created, as Linux does (so both buffers start at zero for it). */
	for (uint32_t pass = 0; pass < 2; pass++) {
		if (pass == 1) {
			memset((void *)(c->mem + OFF_SHADOW), 0, 2 * PAGE);
			struct sqe s;
			nvme_sqe_init(s.dw, ADM_DBBUF, 0);
			nvme_sqe_prp(s.dw, c->mem + OFF_SHADOW, c->mem + OFF_EVENTIDX);
			uint16_t st = exec(c, &c->admin, &s, NULL);
			if (!check_status("bench_doorbell_buffer_config", st, ST_OK))
				break;
			g_shadow = true;
		}
		queue_init(c, q, 3, OFF_SQ3, Q1_ENTRIES, OFF_CQ3, Q1_ENTRIES, 0);
		uint16_t a = create_cq(c, 3, q->cq, Q1_ENTRIES, true, false, 0), b = create_sq(c, 3, q->sq, Q1_ENTRIES, 3);
		if (!check("bench_queue", !(a | b), "Create I/O CQ/SQ 3 for the benchmark: 0x%x 0x%x", a, b))
			break;
		bool ok = bench_run(c, q, "randread_qd1", IO_READ, PAGE, 1, true, ops, &errors) &&
			  bench_run(c, q, "randread_qd32", IO_READ, PAGE, 32, true, ops, &errors) &&
			  bench_run(c, q, "seqread_128k", IO_READ, 32 * PAGE, 1, false, ops / 8, &errors) &&
			  (c->ro || bench_run(c, q, "seqwrite_128k", IO_WRITE, 32 * PAGE, 1, false, ops / 8, &errors));
		(void)ok;
		a = delete_queue(c, ADM_DELETE_SQ, 3);
		b = delete_queue(c, ADM_DELETE_CQ, 3);
		check("bench_delete_queue", !(a | b), "Delete I/O SQ/CQ 3: 0x%x 0x%x", a, b);
	}
	g_shadow = false;
	check("bench_no_errors", errors == 0, "%u benchmark commands failed or never completed", errors);
}

/* ---------------------------------------------------------------- benchmark (bench=seqwrite) */
/*
 * Sequential writes of bench_xfer_kib KiB (PRP1 + a PRP list) with bench_qd commands outstanding, on a
 * polled 64-entry I/O queue (qid 3) of the first controller, for bench_seconds of TSC time, over the
 * range 16 MiB .. end - 1 MiB (outside R0..Z), wrapping around. Each slot has its own buffer and PRP
 * list (at BENCH_SW_BASE, above the per-controller work areas). The data is whatever is in the
 * buffers: nothing checks it.
 *
 * The run is cut into slices of bench_slice_ms: a slice ends at the first completion after its nominal
 * end (so every slice ends at a completion and the next one starts there), and bytes count at
 * completion. The slices are recorded and printed after the run (printing would slow the run down):
 *
 *   PROBE-INFO bench_seqwrite_slice_<i>=start_us=<from the start> us=<length> ops=<N> bytes=<N>
 *   PROBE-INFO bench_seqwrite=ops=<N> bytes=<N> us=<N> errors=<N> xfer=<bytes> qd=<N> slices=<N>
 *   PROBE bench_seqwrite ok|FAIL     (FAIL on a failed command or a stall: nothing completed for 5 s)
 */
#define BENCH_SW_BASE 0x1000000u /* 16 MiB: buffers, then the PRP lists */
#define BENCH_SW_MAX_QD 32u
#define BENCH_SW_MAX_XFER 0x80000u /* 512 KiB per slot */
#define BENCH_SW_MAX_SLICES 1024u

static struct bench_slice g_sw_slices[BENCH_SW_MAX_SLICES];

static void bench_seqwrite(struct ctrl *c)
{
	uint32_t seconds = 7, xfer_kib = 512, qd = 8, slice_ms = 250;
	cmdline_get_u32("bench_seconds", &seconds);
	cmdline_get_u32("bench_xfer_kib", &xfer_kib);
	cmdline_get_u32("bench_qd", &qd);
	cmdline_get_u32("bench_slice_ms", &slice_ms);
	uint32_t mdts = c->mdts_bytes ? c->mdts_bytes : BENCH_SW_MAX_XFER;
	if (mdts > BENCH_SW_MAX_XFER)
		mdts = BENCH_SW_MAX_XFER;
	uint32_t xfer = xfer_kib * 1024u, shift = c->lba_shift;
	if (!probe_check("bench_seqwrite_params",
			 xfer_kib && xfer_kib <= mdts / 1024 && xfer % PAGE == 0 && qd >= 1 && qd <= BENCH_SW_MAX_QD &&
				 seconds >= 1 && seconds <= 3600 && slice_ms >= 1,
			 "bench_xfer_kib=%u (a multiple of 4, at most %u) bench_qd=%u (1..%u) bench_seconds=%u "
			 "bench_slice_ms=%u",
			 xfer_kib, mdts / 1024, qd, BENCH_SW_MAX_QD, seconds, slice_ms))
		return;
	uint64_t lists = BENCH_SW_BASE + (uint64_t)qd * xfer;
	if (!probe_check("bench_seqwrite_memory", memmap_is_ram(BENCH_SW_BASE, lists + qd * PAGE - BENCH_SW_BASE),
			 "0x%x+0x%llx is not RAM", BENCH_SW_BASE, lists + qd * PAGE - BENCH_SW_BASE))
		return;
	uint64_t lo = 16 * 0x100000ull, hi = disk_bytes(c) - 0x100000ull;
	if (!probe_check("bench_seqwrite_disk", hi > lo + xfer, "disk of %llu bytes: want more than 17 MiB + %u",
			 disk_bytes(c), xfer))
		return;
	probe_info("bench_disk", "bytes=%llu block_size=%u", disk_bytes(c), 1u << shift);

	/* Set Features Number of Queues, then one polled I/O queue pair (qid 3, 64 entries). */
	struct sqe s;
	nvme_sqe_init(s.dw, ADM_SET_FEATURES, 0);
	s.dw[10] = 0x07;
	s.dw[11] = 3u << 16 | 3u;
	uint16_t st = exec(c, &c->admin, &s, NULL);
	if (!check_status("bench_set_num_queues", st, ST_OK))
		return;
	struct nvme_queue *q = &c->q3;
	queue_init(c, q, 3, OFF_SQ3, Q1_ENTRIES, OFF_CQ3, Q1_ENTRIES, 0);
	uint16_t a = create_cq(c, 3, q->cq, Q1_ENTRIES, true, false, 0), b = create_sq(c, 3, q->sq, Q1_ENTRIES, 3);
	if (!check("bench_queue", !(a | b), "Create I/O CQ/SQ 3 for the benchmark: 0x%x 0x%x", a, b))
		return;

	/* Per slot: a buffer of xfer bytes and its PRP list (entries for pages 1..n-1). */
	uint32_t pages = xfer / PAGE;
	for (uint32_t slot = 0; slot < qd; slot++) {
		uint32_t buf = BENCH_SW_BASE + slot * xfer;
		uint64_t *list = (uint64_t *)(uintptr_t)(lists + slot * PAGE);
		for (uint32_t i = 1; i < pages; i++)
			list[i - 1] = buf + i * PAGE;
	}
	nvme_sqe_rw(s.dw, IO_WRITE, 0, xfer >> shift, BENCH_SW_BASE, 0);
	for (uint32_t i = 0; i < q->sq_size; i++)
		memcpy((void *)(q->sq + i * 64), &s, sizeof(s));

	uint16_t free_slots[BENCH_SW_MAX_QD];
	uint32_t nfree = 0;
	for (uint32_t i = 0; i < qd; i++)
		free_slots[nfree++] = (uint16_t)(qd - 1 - i);
	uint32_t completed = 0, outstanding = 0, errs = 0;
	struct bench_offsets offsets = { false, 0, xfer, lo, hi, lo };
	uint64_t run_ticks = (uint64_t)tsc_khz() * 1000u * seconds;
	struct bench_slices sl;
	bench_slices_start(&sl, g_sw_slices, BENCH_SW_MAX_SLICES, slice_ms);
	bool stalled = false;
	struct nvme_cqe e;
	for (;;) {
		bool submitting = bench_slices_elapsed(&sl) < run_ticks;
		if (!submitting && !outstanding)
			break;
		uint32_t n = 0;
		while (submitting && nfree) {
			uint32_t slot = free_slots[--nfree];
			uint64_t off = bench_next_offset(&offsets);
			volatile uint32_t *d = nvme_sq_tail_entry(q);
			d[0] = IO_WRITE | slot << 16;
			d[6] = BENCH_SW_BASE + slot * xfer;
			d[7] = 0;
			if (pages == 2) {
				d[8] = BENCH_SW_BASE + slot * xfer + PAGE;
			} else if (pages > 2) {
				d[8] = (uint32_t)(lists + slot * PAGE);
			} else {
				d[8] = 0;
			}
			d[9] = 0;
			nvme_sqe_set_lba(d, off >> shift);
			nvme_sq_advance(q);
			outstanding++;
			n++;
		}
		if (n) {
			barrier();
			mmio_write32(q->sq_db, q->tail);
		}
		uint32_t reaped = 0;
		while (nvme_cq_take(q, &e)) {
			reaped++;
			if (e.status)
				errs++;
			else
				bench_slices_count(&sl, xfer);
			if (e.cid < qd && nfree < qd)
				free_slots[nfree++] = e.cid;
		}
		bool alive = bench_slices_poll(&sl, reaped); /* the completion time before the doorbell */
		if (reaped) {
			mmio_write32(q->cq_db, q->head);
			completed += reaped;
			outstanding = reaped > outstanding ? 0 : outstanding - reaped;
		} else if (!alive) {
			errs += outstanding;
			stalled = true;
			break;
		}
	}
	bench_slices_finish(&sl, stalled, "bench_seqwrite", "ops");
	uint32_t us = tsc_to_us(bench_slices_elapsed(&sl));
	probe_info("bench_seqwrite", "ops=%u bytes=%llu us=%u errors=%u xfer=%u qd=%u slices=%u%s", completed, sl.bytes,
		   us, errs, xfer, qd, sl.n, stalled ? " stalled" : "");
	probe_check("bench_seqwrite", !errs && !stalled && completed, "%u writes failed%s", errs,
		    stalled ? " or never completed (stalled: nothing completed for 5 s)" : "");
	if (!stalled) {
		a = delete_queue(c, ADM_DELETE_SQ, 3);
		b = delete_queue(c, ADM_DELETE_CQ, 3);
		check("bench_delete_queue", !(a | b), "Delete I/O SQ/CQ 3: 0x%x 0x%x", a, b);
	}
}

/* ---------------------------------------------------------------- durability (mode=flushloop|fulldisk) */
/*
 * Both modes use one polled I/O queue pair (qid 1, 64 entries) on the first controller, and the
 * records of lib/records.h: record r at disk byte 512 * r, staged in guest RAM at DUR_BASE + 512 * r.
 * A "generation" writes records [0, n) in commands of 1, 2, 4, 1, 8 and 16 pages (PRP1 only, PRP1 +
 * PRP2, PRP lists), all submitted with one doorbell, waits for every completion, then Flush.
 *
 * mode=flushloop (128 KiB, 256 records): generation 1, 2, ... each followed by
 *     PROBE-INFO flushed=<g>       printed only once Flush completed with success
 * with no pause, until the VMM is killed (tests/durability.rs sends SIGKILL) or flush_seconds pass;
 * then PROBE nvme_flushloop ok and PROBE-INFO generations=<g>. A failed write or flush is a FAIL.
 *
 * mode=fulldisk (on a file that cannot grow past a few MiB):
 *   nvme_fulldisk_flushed       generation 1 of records [0, 64) written and flushed (flushed=1)
 *   nvme_fulldisk_write_error   64 KiB writes from 1 MiB on until one fails: it must fail with
 *                               Capacity Exceeded (0/81h) before the end of the disk
 *                               (PROBE-INFO fulldisk_written=<bytes that succeeded first>)
 *   nvme_fulldisk_retries       20 retries of that write fail the same way
 *   nvme_fulldisk_flush_after   Flush still succeeds
 *   nvme_fulldisk_read_flushed  the records read back as generation 1
 *   nvme_fulldisk_overwrite     generation 2 over the same (already allocated) records and Flush
 *                               succeed (flushed=2), and read back
 * then a normal shutdown. The test checks the file holds generation 2 of records [0, 64).
 */
#define DUR_BASE 0x1000000u                 /* 16 MiB: the record buffer (128 KiB) */
#define DUR_READ (DUR_BASE + 0x20000u)       /* read-back buffer (128 KiB) */
#define DUR_LISTS (DUR_BASE + 0x40000u)      /* one PRP list page per command */
#define DUR_END (DUR_BASE + 0x50000u)
#define DUR_FILL_XFER 0x10000u               /* 64 KiB writes while filling the disk */
#define DUR_RETRIES 20u                      /* retries of the write that failed */
static const uint8_t dur_chunks[] = {1, 2, 4, 1, 8, 16}; /* pages per write command */

static bool dur_queue(struct ctrl *c)
{
	struct sqe s;
	nvme_sqe_init(s.dw, ADM_SET_FEATURES, 0);
	s.dw[10] = 0x07;
	s.dw[11] = 0; /* one SQ, one CQ */
	uint16_t st = exec(c, &c->admin, &s, NULL);
	queue_init(c, &c->q1, 1, OFF_SQ1, Q1_ENTRIES, OFF_CQ1, Q1_ENTRIES, 0);
	uint16_t a = create_cq(c, 1, c->q1.cq, Q1_ENTRIES, true, false, 0);
	uint16_t b = create_sq(c, 1, c->q1.sq, Q1_ENTRIES, 1);
	return check("dur_queue", !(st | a | b), "Set Features 0x%x, Create I/O CQ 0x%x, SQ 0x%x", st, a, b);
}

/* Fills the write command for `pages` pages of guest RAM at `buf` to disk byte `off`; a PRP list,
 * if needed, goes to list page `list`. */
static void dur_sqe(struct ctrl *c, struct sqe *s, uint8_t opc, uint64_t off, uintptr_t buf, uint32_t pages,
		    uint32_t list)
{
	uint64_t prp2 = 0;
	if (pages == 2) {
		prp2 = buf + PAGE;
	} else if (pages > 2) {
		uint64_t *l = (uint64_t *)(uintptr_t)(DUR_LISTS + list * PAGE);
		for (uint32_t i = 1; i < pages; i++)
			l[i - 1] = buf + i * PAGE;
		prp2 = DUR_LISTS + list * PAGE;
	}
	nvme_sqe_rw(s->dw, opc, off >> c->lba_shift, (pages * PAGE) >> c->lba_shift, buf, prp2);
}

/* Submits `n` commands with one doorbell and waits for all of them; returns the first failed status
 * (ST_OK if none). */
static uint16_t dur_batch(struct ctrl *c, struct sqe *cmds, uint32_t n)
{
	struct nvme_queue *q = &c->q1;
	for (uint32_t i = 0; i < n; i++)
		sq_put(c, q, &cmds[i], false);
	barrier();
	mmio_write32(q->sq_db, q->tail);
	uint16_t first = ST_OK;
	struct nvme_cqe e;
	for (uint32_t i = 0; i < n; i++) {
		if (!cq_wait(q, &e, CMD_TIMEOUT_MS))
			return ST_TIMEOUT;
		if (e.status != ST_OK && first == ST_OK)
			first = e.status;
	}
	mmio_write32(q->cq_db, q->head);
	return first;
}

/* Reads or writes the first `pages` pages of records between disk offset 0 and `buf`, in the chunk
 * sizes of dur_chunks (pages is a sum of a prefix of them). */
static uint16_t dur_records_io(struct ctrl *c, uint8_t opc, uintptr_t buf, uint32_t pages)
{
	struct sqe cmds[ARRAY_SIZE(dur_chunks)];
	uint32_t n = 0, done = 0;
	for (; n < ARRAY_SIZE(dur_chunks) && done < pages; n++) {
		dur_sqe(c, &cmds[n], opc, (uint64_t)done * PAGE, buf + done * PAGE, dur_chunks[n], n);
		done += dur_chunks[n];
	}
	return dur_batch(c, cmds, n);
}

static uint16_t dur_flush(struct ctrl *c)
{
	struct sqe s;
	nvme_sqe_init(s.dw, IO_FLUSH, 1);
	return exec(c, &c->q1, &s, NULL);
}

/* Stamps generation g into records [0, n) and writes and flushes them; prints flushed=<g> on success. */
static bool dur_generation(struct ctrl *c, uint32_t n, uint32_t g, const char *name)
{
	char a[16];
	for (uint32_t r = 0; r < n; r++)
		rec_stamp((uint32_t *)(uintptr_t)(DUR_BASE + r * REC_BYTES), r, g);
	uint16_t st = dur_records_io(c, IO_WRITE, DUR_BASE, n * REC_BYTES / PAGE);
	if (st != ST_OK)
		return check(name, false, "generation %u: a write failed with status %s", g,
			     nvme_status_str(st, a, sizeof(a)));
	st = dur_flush(c);
	if (st != ST_OK)
		return check(name, false, "generation %u: Flush failed with status %s", g,
			     nvme_status_str(st, a, sizeof(a)));
	probe_info("flushed", "%u", g);
	return true;
}

/* Reads records [0, n) back and compares them with generation g. */
static bool dur_read_back(struct ctrl *c, uint32_t n, uint32_t g, char *why, size_t len)
{
	char a[16];
	memset((void *)DUR_READ, 0, n * REC_BYTES);
	uint16_t st = dur_records_io(c, IO_READ, DUR_READ, n * REC_BYTES / PAGE);
	if (st != ST_OK) {
		snprintf(why, len, "read status %s", nvme_status_str(st, a, sizeof(a)));
		return false;
	}
	for (uint32_t r = 0; r < n; r++) {
		int32_t bad = rec_check((const volatile uint32_t *)(uintptr_t)(DUR_READ + r * REC_BYTES), r, g);
		if (bad >= 0) {
			snprintf(why, len, "record %u dword %d is 0x%08x, want generation %u", r, bad,
				 ((const volatile uint32_t *)(uintptr_t)(DUR_READ + r * REC_BYTES))[bad], g);
			return false;
		}
	}
	return true;
}

static void dur_flushloop(struct ctrl *c)
{
	uint32_t seconds = 20, g = 0;
	cmdline_get_u32("flush_seconds", &seconds);
	uint64_t end = deadline_ms(seconds * 1000u);
	while (!deadline_passed(end))
		if (!dur_generation(c, 256, ++g, "flushloop"))
			return;
	probe_info("generations", "%u", g);
	check("flushloop", g > 0, "no generation in %u s", seconds);
}

static void dur_fulldisk(struct ctrl *c)
{
	char a[16], why[160] = "";
	if (!dur_generation(c, 64, 1, "fulldisk_flushed"))
		return;
	check("fulldisk_flushed", true, "%s", "");

	/* Fill the disk from 1 MiB on until the host file system says no. */
	struct sqe s;
	uint64_t off = 0x100000ull, written = 0;
	uint16_t st = ST_OK;
	while (off + DUR_FILL_XFER <= disk_bytes(c)) {
		dur_sqe(c, &s, IO_WRITE, off, DUR_BASE, DUR_FILL_XFER / PAGE, 0);
		st = dur_batch(c, &s, 1);
		if (st != ST_OK)
			break;
		written += DUR_FILL_XFER;
		off += DUR_FILL_XFER;
	}
	probe_info("fulldisk_written", "%llu", written);
	if (check("fulldisk_write_error", st == ST_CAPACITY_EXCEEDED,
		  "the write at byte 0x%llx: status %s, want Capacity Exceeded (0/81h) before the end of the disk",
		  off, nvme_status_str(st, a, sizeof(a)))) {
		/* A driver may retry as often as it likes: every retry fails the same way. */
		uint32_t same = 0;
		for (uint32_t i = 0; i < DUR_RETRIES; i++) {
			dur_sqe(c, &s, IO_WRITE, off, DUR_BASE, DUR_FILL_XFER / PAGE, 0);
			same += dur_batch(c, &s, 1) == ST_CAPACITY_EXCEEDED;
		}
		check("fulldisk_retries", same == DUR_RETRIES, "%u of %u retries failed with Capacity Exceeded", same,
		      DUR_RETRIES);
	}

	st = dur_flush(c);
	check("fulldisk_flush_after", st == ST_OK, "Flush after the failed write: status %s",
	      nvme_status_str(st, a, sizeof(a)));
	check("fulldisk_read_flushed", dur_read_back(c, 64, 1, why, sizeof(why)), "%s", why);
	bool ok = dur_generation(c, 64, 2, "fulldisk_overwrite") && dur_read_back(c, 64, 2, why, sizeof(why));
	if (ok || why[0])
		check("fulldisk_overwrite", ok, "generation 2: %s", why);
}

static void durability(struct ctrl *c)
{
	if (!probe_check("dur_memory", memmap_is_ram(DUR_BASE, DUR_END - DUR_BASE), "0x%x+0x%x is not RAM", DUR_BASE,
			 DUR_END - DUR_BASE))
		return;
	if (!dur_queue(c))
		return;
	for (uint32_t r = 0; r < 256; r++)
		rec_init((uint32_t *)(uintptr_t)(DUR_BASE + r * REC_BYTES), r);
	if (cmdline_is("mode", "flushloop"))
		dur_flushloop(c);
	else
		dur_fulldisk(c);
	shutdown_notify(c);
}
