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

#endif
