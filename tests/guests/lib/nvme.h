/*
 * NVMe (1.4) as the probes' drivers use it: controller registers, opcodes, status codes, and
 * submission/completion queues in guest RAM (building commands, putting them at the tail, taking
 * completions by phase tag). Shared by nvme.c and hostile_nvme.c; each keeps its own controller
 * state, memory layout, doorbell policy (shadow doorbells, when to ring) and waiting (interrupts or
 * polling).
 */
#ifndef NVME_H
#define NVME_H

#include "probe.h"

/* Controller registers (BAR0). */
#define REG_CAP 0x00
#define REG_VS 0x08
#define REG_CC 0x14
#define REG_CSTS 0x1C
#define REG_AQA 0x24
#define REG_ASQ 0x28
#define REG_ACQ 0x30
#define REG_DOORBELLS 0x1000

#define CC_EN 1u
#define CC_IOSQES(n) ((uint32_t)(n) << 16)
#define CC_IOCQES(n) ((uint32_t)(n) << 20)
#define CC_SHN_NORMAL (1u << 14)
#define CSTS_RDY 1u
#define CSTS_CFS 2u
#define CSTS_SHST(v) (((v) >> 2) & 3)

/* Admin opcodes */
#define ADM_DELETE_SQ 0x00
#define ADM_CREATE_SQ 0x01
#define ADM_GET_LOG 0x02
#define ADM_DELETE_CQ 0x04
#define ADM_CREATE_CQ 0x05
#define ADM_IDENTIFY 0x06
#define ADM_SET_FEATURES 0x09
#define ADM_AER 0x0C
#define ADM_DBBUF 0x7C
/* NVM opcodes */
#define IO_FLUSH 0x00
#define IO_WRITE 0x01
#define IO_READ 0x02
#define IO_WRITE_ZEROES 0x08
#define IO_DSM 0x09

/* Status as (SCT << 8) | SC; TIMEOUT when no completion arrived. */
#define ST_OK 0x000
#define ST_INVALID_OPCODE 0x001
#define ST_INVALID_FIELD 0x002
#define ST_DATA_TRANSFER 0x004
#define ST_INVALID_NS 0x00B
#define ST_SEQUENCE 0x00C
#define ST_PRP_OFFSET 0x013
#define ST_WRITE_PROTECTED 0x020
#define ST_LBA_RANGE 0x080
#define ST_CAPACITY_EXCEEDED 0x081
#define ST_INVALID_CQ 0x100
#define ST_INVALID_QID 0x101
#define ST_INVALID_QSIZE 0x102
#define ST_INVALID_VECTOR 0x108
#define ST_INVALID_DELETION 0x10C
#define ST_TIMEOUT 0xFFFF

/* A submission queue and its completion queue (one each: the probes never share a CQ between two
 * SQs they drive at the same time). */
struct nvme_queue {
	uintptr_t sq, cq;
	uintptr_t sq_db, cq_db;
	uint16_t qid, sq_size, cq_size, tail, head;
	uint8_t phase;
	uint32_t vec; /* LAPIC vector of its MSI-X entry, 0 for a polled queue */
};

struct nvme_cqe {
	uint32_t dw0;
	uint16_t sqhd, sqid, cid;
	uint16_t status; /* SCT << 8 | SC */
	bool dnr;
};

/* Doorbell of queue `qid` (its CQ head doorbell if `cq`) with CAP.DSTRD `dstrd`. */
static inline uintptr_t nvme_doorbell(uintptr_t bar, uint32_t dstrd, uint16_t qid, bool cq)
{
	return bar + REG_DOORBELLS + (2u * qid + (cq ? 1 : 0)) * (4u << dstrd);
}

/* Empty rings at `sq` and `cq` (zeroed), tail and head 0, phase 1, polled. */
void nvme_queue_init(struct nvme_queue *q, uint16_t qid, uintptr_t sq, uint16_t sq_size, uintptr_t cq,
		     uint16_t cq_size, uintptr_t sq_db, uintptr_t cq_db);

/* Commands are 16 dwords. */
void nvme_sqe_init(uint32_t *sqe, uint8_t opc, uint32_t nsid);
void nvme_sqe_prp(uint32_t *sqe, uint64_t prp1, uint64_t prp2);
/* A read or write (or other LBA-range command) of `blocks` blocks at `lba` on namespace 1. */
void nvme_sqe_rw(uint32_t *sqe, uint8_t opc, uint64_t lba, uint32_t blocks, uint64_t prp1, uint64_t prp2);

/* The SQ entry at the tail, and moving the tail past it (for drivers that write or patch entries in
 * place, as the benchmarks do). */
static inline volatile uint32_t *nvme_sq_tail_entry(const struct nvme_queue *q)
{
	return (volatile uint32_t *)(q->sq + (uint32_t)q->tail * 64);
}
static inline void nvme_sq_advance(struct nvme_queue *q)
{
	if (++q->tail == q->sq_size)
		q->tail = 0;
}
/* Dwords 10-11 of a command in the SQ: its starting LBA. */
static inline void nvme_sqe_set_lba(volatile uint32_t *sqe, uint64_t lba)
{
	sqe[10] = (uint32_t)lba;
	sqe[11] = (uint32_t)(lba >> 32);
}

/* Gives the command a fresh command id from `*cid_counter` (never 0 or 0xFFFF), copies it into the
 * SQ at the tail and advances the tail. Rings nothing. Returns the command id. */
uint16_t nvme_sq_put(struct nvme_queue *q, uint32_t *sqe, uint16_t *cid_counter);
/* Takes the next completion if one is there (phase tag matches) and advances the head; rings
 * nothing. Inline: the benchmarks reap with it, and every guest instruction is emulated. */
static inline bool nvme_cq_take(struct nvme_queue *q, struct nvme_cqe *e)
{
	volatile uint32_t *ent = (volatile uint32_t *)(q->cq + (uint32_t)q->head * 16);
	uint32_t dw3 = ent[3];
	if (((dw3 >> 16) & 1) != q->phase)
		return false;
	barrier();
	e->dw0 = ent[0];
	uint32_t dw2 = ent[2];
	e->sqhd = (uint16_t)dw2;
	e->sqid = (uint16_t)(dw2 >> 16);
	e->cid = (uint16_t)dw3;
	e->status = (uint16_t)((((dw3 >> 25) & 7) << 8) | ((dw3 >> 17) & 0xFF));
	e->dnr = (dw3 >> 31) & 1;
	if (++q->head == q->cq_size) {
		q->head = 0;
		q->phase ^= 1;
	}
	return true;
}

/* "SCT/SCh", or "timeout". */
const char *nvme_status_str(uint16_t st, char *buf, size_t n);

#endif
