/*
 * PCI configuration mechanism #1 (ports 0xCF8/0xCFC) for functions 0 of bus 0, as the device probes
 * use it. (pci.c, which also walks other functions, has its own bus/device/function variant.)
 */
#ifndef PCI_CFG_H
#define PCI_CFG_H

#include "io.h"

#define CFG_ADDR 0xCF8
#define CFG_DATA 0xCFC

static inline uint32_t cf8(uint8_t dev, uint16_t reg)
{
	return 0x80000000u | (uint32_t)dev << 11 | (reg & 0xFC);
}
static inline uint32_t cfg_read32(uint8_t dev, uint16_t reg)
{
	outl(CFG_ADDR, cf8(dev, reg));
	return inl(CFG_DATA);
}
static inline uint16_t cfg_read16(uint8_t dev, uint16_t reg)
{
	outl(CFG_ADDR, cf8(dev, reg));
	return inw(CFG_DATA + (reg & 2));
}
static inline uint8_t cfg_read8(uint8_t dev, uint16_t reg)
{
	outl(CFG_ADDR, cf8(dev, reg));
	return inb(CFG_DATA + (reg & 3));
}
static inline void cfg_write32(uint8_t dev, uint16_t reg, uint32_t v)
{
	outl(CFG_ADDR, cf8(dev, reg));
	outl(CFG_DATA, v);
}
static inline void cfg_write16(uint8_t dev, uint16_t reg, uint16_t v)
{
	outl(CFG_ADDR, cf8(dev, reg));
	outw(CFG_DATA + (reg & 2), v);
}

/* Counts the functions on bus 0 (slots 1-31; 0 is the host bridge) whose vendor and device ids
 * (dword 0) are `id`; the slot of the first goes to *first (untouched if there is none). */
static inline uint32_t pci_find_functions(uint32_t id, uint8_t *first)
{
	uint32_t found = 0;
	for (uint8_t dev = 1; dev < 32; dev++) {
		if (cfg_read32(dev, 0) != id)
			continue;
		if (!found)
			*first = dev;
		found++;
	}
	return found;
}

/* The capability list: the first entry (0 if the function has none) and the one after `ptr`. */
static inline uint8_t pci_cap_first(uint8_t dev) { return (cfg_read16(dev, 0x06) & 0x10) ? cfg_read8(dev, 0x34) : 0; }
static inline uint8_t pci_cap_next(uint8_t dev, uint8_t ptr) { return cfg_read8(dev, ptr + 1); }
/* Offset of capability `id` in the function's list (at most 48 entries: a looping list ends), 0 if
 * absent. */
static inline uint8_t pci_find_cap(uint8_t dev, uint8_t id)
{
	uint8_t ptr = pci_cap_first(dev);
	for (uint32_t n = 0; ptr && n < 48; n++) {
		if (cfg_read8(dev, ptr) == id)
			return ptr;
		ptr = pci_cap_next(dev, ptr);
	}
	return 0;
}

#endif
