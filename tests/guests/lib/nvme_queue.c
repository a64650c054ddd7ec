/* NVMe commands and queues in guest RAM (see nvme.h). */
#include "nvme.h"

void nvme_queue_init(struct nvme_queue *q, uint16_t qid, uintptr_t sq, uint16_t sq_size, uintptr_t cq,
		     uint16_t cq_size, uintptr_t sq_db, uintptr_t cq_db)
{
	q->sq = sq;
	q->cq = cq;
	q->qid = qid;
	q->sq_size = sq_size;
	q->cq_size = cq_size;
	q->tail = q->head = 0;
	q->phase = 1;
	q->vec = 0;
	q->sq_db = sq_db;
	q->cq_db = cq_db;
	memset((void *)sq, 0, (size_t)sq_size * 64);
	memset((void *)cq, 0, (size_t)cq_size * 16);
}

void nvme_sqe_init(uint32_t *sqe, uint8_t opc, uint32_t nsid)
{
	memset(sqe, 0, 64);
	sqe[0] = opc;
	sqe[1] = nsid;
}

void nvme_sqe_prp(uint32_t *sqe, uint64_t prp1, uint64_t prp2)
{
	sqe[6] = (uint32_t)prp1;
	sqe[7] = (uint32_t)(prp1 >> 32);
	sqe[8] = (uint32_t)prp2;
	sqe[9] = (uint32_t)(prp2 >> 32);
}

void nvme_sqe_rw(uint32_t *sqe, uint8_t opc, uint64_t lba, uint32_t blocks, uint64_t prp1, uint64_t prp2)
{
	nvme_sqe_init(sqe, opc, 1);
	nvme_sqe_prp(sqe, prp1, prp2);
	sqe[10] = (uint32_t)lba;
	sqe[11] = (uint32_t)(lba >> 32);
	sqe[12] = blocks - 1;
}

uint16_t nvme_sq_put(struct nvme_queue *q, uint32_t *sqe, uint16_t *cid_counter)
{
	uint16_t cid = ++*cid_counter;
	if (cid == 0xFFFF || cid == 0)
		cid = *cid_counter = 1;
	sqe[0] = (sqe[0] & 0xFFFF) | (uint32_t)cid << 16;
	volatile uint32_t *slot = nvme_sq_tail_entry(q);
	for (uint32_t i = 0; i < 16; i++)
		slot[i] = sqe[i];
	nvme_sq_advance(q);
	return cid;
}

const char *nvme_status_str(uint16_t st, char *buf, size_t n)
{
	if (st == ST_TIMEOUT)
		snprintf(buf, n, "timeout");
	else
		snprintf(buf, n, "%u/%02xh", st >> 8, st & 0xFF);
	return buf;
}
