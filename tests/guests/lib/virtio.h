/*
 * Virtio over modern PCI (virtio 1.x, section 4.1), as the probes' drivers use it: the vendor
 * capabilities that locate the structures, the common configuration registers, feature
 * negotiation, queue set-up and notification, and the split-ring descriptor. Shared by
 * virtio_blk.c, virtio_net.c and hostile_virtio.c; each keeps its own rings and policy (which BARs
 * it accepts, which features it wants, which MSI-X vectors it uses).
 *
 * Also the virtio-blk request header, types and status bytes (virtio_blk.c and hostile_virtio.c).
 */
#ifndef VIRTIO_H
#define VIRTIO_H

#include "probe.h"
#include "pci_cfg.h"

/* virtio_pci_cap.cfg_type */
#define CAP_COMMON 1
#define CAP_NOTIFY 2
#define CAP_ISR 3
#define CAP_DEVICE 4

/* Common configuration (struct virtio_pci_common_cfg) offsets. */
#define C_DFSELECT 0x00
#define C_DF 0x04
#define C_GFSELECT 0x08
#define C_GF 0x0C
#define C_MSIX 0x10
#define C_NUMQ 0x12
#define C_STATUS 0x14
#define C_Q_SELECT 0x16
#define C_Q_SIZE 0x18
#define C_Q_MSIX 0x1A
#define C_Q_ENABLE 0x1C
#define C_Q_NOFF 0x1E
#define C_Q_DESC 0x20
#define C_Q_DRIVER 0x28
#define C_Q_DEVICE 0x30

/* Device status bits. */
#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40
#define S_READY (S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK)

/* Transport feature bits. */
#define F_INDIRECT 28
#define F_EVENT_IDX 29
#define F_VERSION_1 32

/* Descriptor flags. */
#define D_NEXT 1
#define D_WRITE 2
#define D_INDIRECT 4

struct vdesc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
} PACKED;

/* virtio-blk: request header, types, status bytes; ST_UNTOUCHED is what the driver puts in the
 * status byte, so that a chain the device returned without writing it can be told apart. */
struct blk_req {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
} PACKED;
#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define T_DISCARD 11
#define T_WRITE_ZEROES 13
#define ST_OK 0
#define ST_IOERR 1
#define ST_UNSUPP 2
#define ST_UNTOUCHED 0xEE

/* One virtio function: where its structures are mapped (0 until found). */
struct virtio_pci {
	uint8_t dev;         /* slot on bus 0 */
	uint32_t caps_seen;  /* bit n: a capability of cfg_type n was recorded */
	uintptr_t common, notify, isr, device;
	uint32_t common_len, notify_len, device_len;
	uint32_t notify_mult; /* notify_off_multiplier */
};

/* One virtio vendor capability (PCI capability id 0x09) as read from configuration space. */
struct virtio_cap {
	uint8_t type, bar;
	uint32_t offset, length;
	uint32_t notify_mult; /* only for CAP_NOTIFY */
};

/* Reads the capability at `ptr`; false if it is not a virtio vendor capability. */
bool virtio_cap_read(uint8_t dev, uint8_t ptr, struct virtio_cap *out);
/* Records `cap`, mapped at `addr`, if it is the first of a known type (the driver uses the first
 * one of each, as the spec says). Returns whether it was recorded. */
bool virtio_cap_record(struct virtio_pci *vp, const struct virtio_cap *cap, uintptr_t addr);
/* Whether the common, notify, ISR and device capabilities were all recorded. */
static inline bool virtio_caps_complete(const struct virtio_pci *vp) { return (vp->caps_seen & 0x1E) == 0x1E; }

/* Common configuration registers. */
static inline uint8_t vp_read8(const struct virtio_pci *vp, uint32_t off) { return mmio_read8(vp->common + off); }
static inline uint16_t vp_read16(const struct virtio_pci *vp, uint32_t off) { return mmio_read16(vp->common + off); }
static inline uint32_t vp_read32(const struct virtio_pci *vp, uint32_t off) { return mmio_read32(vp->common + off); }
static inline void vp_write8(const struct virtio_pci *vp, uint32_t off, uint8_t x) { mmio_write8(vp->common + off, x); }
static inline void vp_write16(const struct virtio_pci *vp, uint32_t off, uint16_t x)
{
	mmio_write16(vp->common + off, x);
}
static inline void vp_write32(const struct virtio_pci *vp, uint32_t off, uint32_t x)
{
	mmio_write32(vp->common + off, x);
}
/* Two dword writes, low first (64-bit fields of the common configuration). */
static inline void vp_write64(const struct virtio_pci *vp, uint32_t off, uint64_t x)
{
	vp_write32(vp, off, (uint32_t)x);
	vp_write32(vp, off + 4, (uint32_t)(x >> 32));
}

static inline bool has_feature(uint64_t features, uint32_t bit) { return (features >> bit) & 1; }
/* The 64 feature bits the device offers. */
uint64_t vp_device_features(const struct virtio_pci *vp);
/* Writes the driver's 64 feature bits. */
void vp_driver_features(const struct virtio_pci *vp, uint64_t features);
/* Reset, ACKNOWLEDGE, DRIVER, the driver features, FEATURES_OK; returns the status read back. */
uint8_t vp_negotiate(const struct virtio_pci *vp, uint64_t features);
/* Selects queue `index` and programs its size, ring addresses and MSI-X vector, then enables it
 * (DRIVER_OK is the caller's). Returns the queue's notify offset. */
uint16_t vp_queue_setup(const struct virtio_pci *vp, uint16_t index, uint16_t size, uint64_t desc, uint64_t avail,
			uint64_t used, uint16_t msix_vector);
/* Where a queue with notify offset `notify_off` is notified. */
static inline uintptr_t vp_notify_addr(const struct virtio_pci *vp, uint16_t notify_off)
{
	return vp->notify + notify_off * vp->notify_mult;
}
/* Notifies a queue (flint tells the queues apart by address; the value written is 0). */
static inline void vp_notify(const struct virtio_pci *vp, uint16_t notify_off)
{
	mmio_write16(vp_notify_addr(vp, notify_off), 0);
}
/* The first 64 bits of the device configuration (virtio-blk: the capacity in sectors). */
static inline uint64_t vp_device_read64(const struct virtio_pci *vp, uint32_t off)
{
	return mmio_read32(vp->device + off) | (uint64_t)mmio_read32(vp->device + off + 4) << 32;
}

/* Fills descriptor `i` of a table. */
static inline void vdesc_set(volatile struct vdesc *table, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags,
			     uint16_t next)
{
	table[i].addr = addr;
	table[i].len = len;
	table[i].flags = flags;
	table[i].next = next;
}

#endif
