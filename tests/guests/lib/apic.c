/* xAPIC (MMIO at 0xFEE00000) helpers. */
#include "probe.h"

bool lapic_send_ipi(uint32_t dest_apic_id, uint32_t icr_lo)
{
	lapic_write(LAPIC_ICR_HI, dest_apic_id << 24);
	lapic_write(LAPIC_ICR_LO, icr_lo);
	/* KVM's in-kernel APIC delivers synchronously; a real one needs a few µs. */
	for (uint32_t i = 0; i < 1000; i++)
		if (!(lapic_read(LAPIC_ICR_LO) & ICR_DELIVERY_PENDING))
			return true;
	return false;
}
