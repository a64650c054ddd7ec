/*
 * The hostile-guest probe (hostile*.c): shared declarations. See hostile.c for what it does and
 * docs/hostile-guests.md for the table of cases.
 */
#ifndef HOSTILE_H
#define HOSTILE_H

#include "probe.h"
#include "pci_cfg.h"

#define PAGE 4096u

/* Addresses no guest RAM backs in the tests (RAM is 256 MiB): past the end of RAM above 4 GiB, and
 * in the 32-bit PCI window where no BAR lives. */
#define ADDR_OUTSIDE_RAM 0x300000000ull
#define ADDR_PCI_HOLE 0xD8000000ull

/* Work areas in guest RAM (the image, its stack and .bss end well below 4 MiB). */
#define NVME_MEM 0x00400000u  /* 512 KiB */
#define VIRTIO_MEM 0x00500000u /* 1 MiB */
#define INDIRECT_MEM 0x00600000u /* 1 MiB + a page: a 65536-entry indirect table */
#define BIG_MEM 0x00800000u     /* 4 MiB: buffers for large requests */
#define SCRATCH_MEM 0x00C00000u /* pages whose contents a check verifies */

/* One memory BAR of a function on bus 0. */
struct bar {
	uint64_t addr, size;
	bool is64;
};
struct pci_fn {
	uint8_t dev;
	uint32_t id, class_rev;
	struct bar bars[6];
};
#define MAX_FNS 32
extern struct pci_fn g_fns[MAX_FNS];
extern uint32_t g_nfns;

/* Reads a BAR's address and size (memory decode switched off while sizing, then restored). */
void pci_read_bar(uint8_t dev, uint32_t index, struct bar *out);
/* Writes a 64-bit memory BAR's address (both dwords). */
void pci_write_bar64(uint8_t dev, uint32_t index, uint64_t addr);

/* NVMe (hostile_nvme.c): the first NVMe controller. */
bool nvme_init(uint8_t dev);
/* Writes a pattern (seeded) and reads it back through I/O queue 1; on failure describes it. */
bool nvme_good_io(uint32_t seed, char *why, size_t n);
void nvme_attacks(void);
uintptr_t nvme_bar(void);
/* Controller reset and the whole bring-up again (admin queues, I/O queue pair 1). */
bool nvme_reinit(char *why, size_t n);
/* CC.EN 1 -> 0 -> 1, `toggles` times, without waiting for CSTS. */
void nvme_enable_storm(uint32_t toggles);
/* Identify Controller on the admin queue; returns the status. */
uint16_t nvme_identify(void);
uint8_t nvme_dev(void);

/* virtio-blk (hostile_virtio.c): the first virtio-blk function. */
bool virtio_init(uint8_t dev);
/* Resets and re-initialises the device, then writes and reads back a pattern. */
bool virtio_good_io(uint32_t seed, char *why, size_t n);
void virtio_attacks(void);
uintptr_t virtio_bar(void);
/* Where queue 0's notifications go. */
uintptr_t virtio_notify_addr(void);
/* Initialisation, one good read, reset. */
bool virtio_reset_cycle(char *why, size_t n);
uint8_t virtio_dev(void);

/* PCI (hostile_pci.c) */
void pci_attacks(void);

/* A second vCPU attacking while the first uses the devices (hostile_smp.c). */
void smp_attacks(void);

/* Pattern helpers: dword i of a buffer filled with seed s. */
static inline uint32_t hpattern(uint32_t i, uint32_t s) { return i * 0x9E3779B1u + 0x686F7374u + s * 0x01000193u; }
void hfill(uintptr_t buf, uint32_t len, uint32_t seed);
/* Index of the first dword that differs, or -1. */
int32_t hverify(uintptr_t buf, uint32_t len, uint32_t seed);

#endif
