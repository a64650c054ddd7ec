/* Virtio over modern PCI: capabilities, feature negotiation, queue set-up (see virtio.h). */
#include "virtio.h"

bool virtio_cap_read(uint8_t dev, uint8_t ptr, struct virtio_cap *out)
{
	if (cfg_read8(dev, ptr) != 0x09)
		return false;
	out->type = cfg_read8(dev, ptr + 3);
	out->bar = cfg_read8(dev, ptr + 4);
	out->offset = cfg_read32(dev, ptr + 8);
	out->length = cfg_read32(dev, ptr + 12);
	out->notify_mult = out->type == CAP_NOTIFY ? cfg_read32(dev, ptr + 16) : 0;
	return true;
}

bool virtio_cap_record(struct virtio_pci *vp, const struct virtio_cap *cap, uintptr_t addr)
{
	if (cap->type < CAP_COMMON || cap->type > CAP_DEVICE || (vp->caps_seen & (1u << cap->type)))
		return false;
	vp->caps_seen |= 1u << cap->type;
	switch (cap->type) {
	case CAP_COMMON:
		vp->common = addr;
		vp->common_len = cap->length;
		break;
	case CAP_NOTIFY:
		vp->notify = addr;
		vp->notify_len = cap->length;
		vp->notify_mult = cap->notify_mult;
		break;
	case CAP_ISR:
		vp->isr = addr;
		break;
	default:
		vp->device = addr;
		vp->device_len = cap->length;
		break;
	}
	return true;
}

uint64_t vp_device_features(const struct virtio_pci *vp)
{
	vp_write32(vp, C_DFSELECT, 0);
	uint64_t lo = vp_read32(vp, C_DF);
	vp_write32(vp, C_DFSELECT, 1);
	return lo | (uint64_t)vp_read32(vp, C_DF) << 32;
}

void vp_driver_features(const struct virtio_pci *vp, uint64_t features)
{
	vp_write32(vp, C_GFSELECT, 0);
	vp_write32(vp, C_GF, (uint32_t)features);
	vp_write32(vp, C_GFSELECT, 1);
	vp_write32(vp, C_GF, (uint32_t)(features >> 32));
}

uint8_t vp_negotiate(const struct virtio_pci *vp, uint64_t features)
{
	vp_write8(vp, C_STATUS, 0);
	vp_write8(vp, C_STATUS, S_ACK);
	vp_write8(vp, C_STATUS, S_ACK | S_DRIVER);
	vp_driver_features(vp, features);
	vp_write8(vp, C_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
	return vp_read8(vp, C_STATUS);
}

uint16_t vp_queue_setup(const struct virtio_pci *vp, uint16_t index, uint16_t size, uint64_t desc, uint64_t avail,
			uint64_t used, uint16_t msix_vector)
{
	vp_write16(vp, C_Q_SELECT, index);
	vp_write16(vp, C_Q_SIZE, size);
	uint16_t notify_off = vp_read16(vp, C_Q_NOFF);
	vp_write64(vp, C_Q_DESC, desc);
	vp_write64(vp, C_Q_DRIVER, avail);
	vp_write64(vp, C_Q_DEVICE, used);
	vp_write16(vp, C_Q_MSIX, msix_vector);
	vp_write16(vp, C_Q_ENABLE, 1);
	return notify_off;
}
