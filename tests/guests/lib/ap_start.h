/*
 * Starting application processors: the trampoline (lib/ap_trampoline.S, which the probe links
 * together with its own `ap_entry32`) and the xAPIC ICR commands of INIT-SIPI-SIPI.
 */
#ifndef AP_START_H
#define AP_START_H

#include "probe.h"

/* Low memory the probes leave free (README: 0x10000-0x1FFFF); SIPI vector = page number. */
#define AP_TRAMPOLINE_BASE 0x10000u
#define AP_SIPI_VECTOR (AP_TRAMPOLINE_BASE >> 12)

#define ICR_INIT 0x00000500u
#define ICR_STARTUP 0x00000600u
#define ICR_LEVEL_ASSERT 0x00004000u
#define ICR_ALL_BUT_SELF 0x000C0000u

extern const uint8_t ap_tramp_start[], ap_tramp_end[];

static inline uint32_t ap_trampoline_size(void) { return (uint32_t)(ap_tramp_end - ap_tramp_start); }
/* Copies the trampoline to AP_TRAMPOLINE_BASE: do this before the SIPIs. */
static inline void ap_trampoline_install(void)
{
	memcpy((void *)AP_TRAMPOLINE_BASE, ap_tramp_start, ap_trampoline_size());
}

#endif
