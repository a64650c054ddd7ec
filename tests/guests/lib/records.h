/*
 * Self-describing 512-byte records for the durability modes of the block probes (nvme.c and
 * virtio_blk.c, mode=flushloop and mode=fulldisk; tests/durability.rs checks them in the disk file).
 *
 * Record r lives at disk byte offset 512 * r. Generation g of it is 128 little-endian dwords:
 *
 *     0: REC_MAGIC_HEAD   1: g   2: r   3: rec_tag(g, r)
 *     4..123: rec_fill(r, i) = (128 * r + i) * 0x9E3779B1 + 0x464C4E54   (the same in every generation)
 *     124: g   125: r   126: ~rec_tag(g, r)   127: REC_MAGIC_TAIL
 *
 * with rec_tag(g, r) = (g * 0x85EBCA6B) ^ (r * 0xC2B2AE35) ^ 0x27D4EB2F (mod 2^32). The generation
 * sits at both ends, so a record that is half one generation and half another does not read as
 * either. A record is one 512-byte sector: the unit a disk writes atomically. Only the 8 header and
 * trailer dwords change from one generation to the next, which keeps the probe's emulated stores few.
 */
#ifndef RECORDS_H
#define RECORDS_H

#include <stdint.h>

#define REC_BYTES 512u
#define REC_DWORDS (REC_BYTES / 4)
#define REC_MAGIC_HEAD 0x44555241u /* "ARUD" */
#define REC_MAGIC_TAIL 0x424C4F4Bu /* "KOLB" */

static inline uint32_t rec_tag(uint32_t g, uint32_t r) { return (g * 0x85EBCA6Bu) ^ (r * 0xC2B2AE35u) ^ 0x27D4EB2Fu; }
static inline uint32_t rec_fill(uint32_t r, uint32_t i) { return (128u * r + i) * 0x9E3779B1u + 0x464C4E54u; }

/* Writes the generation-independent middle of record r at p. */
static inline void rec_init(uint32_t *p, uint32_t r)
{
	for (uint32_t i = 4; i < REC_DWORDS - 4; i++)
		p[i] = rec_fill(r, i);
}

/* Makes the record at p (already rec_init'ed) generation g of record r. */
static inline void rec_stamp(uint32_t *p, uint32_t r, uint32_t g)
{
	uint32_t tag = rec_tag(g, r);
	p[0] = REC_MAGIC_HEAD;
	p[1] = g;
	p[2] = r;
	p[3] = tag;
	p[REC_DWORDS - 4] = g;
	p[REC_DWORDS - 3] = r;
	p[REC_DWORDS - 2] = ~tag;
	p[REC_DWORDS - 1] = REC_MAGIC_TAIL;
}

/* Returns -1 if p holds exactly generation g of record r, else the index of the first wrong dword. */
static inline int32_t rec_check(const volatile uint32_t *p, uint32_t r, uint32_t g)
{
	uint32_t tag = rec_tag(g, r);
	for (uint32_t i = 0; i < REC_DWORDS; i++) {
		uint32_t want = i == 0 ? REC_MAGIC_HEAD
			      : i == 1 ? g
			      : i == 2 ? r
			      : i == 3 ? tag
			      : i == REC_DWORDS - 4 ? g
			      : i == REC_DWORDS - 3 ? r
			      : i == REC_DWORDS - 2 ? ~tag
			      : i == REC_DWORDS - 1 ? REC_MAGIC_TAIL
						    : rec_fill(r, i);
		if (p[i] != want)
			return (int32_t)i;
	}
	return -1;
}

#endif
