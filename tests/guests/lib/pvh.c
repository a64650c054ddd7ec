/* hvm_start_info parsing. */
#include "probe.h"

uint32_t g_start_info_paddr;
const struct hvm_start_info *g_start_info;
const struct hvm_memmap_entry *g_memmap;
uint32_t g_memmap_entries;

#define CMDLINE_MAX 65536

void pvh_init(uint32_t ebx);
void pvh_init(uint32_t ebx)
{
	g_start_info_paddr = ebx;
	if (ebx == 0 || ebx > 0xFFFFF000u)
		return;
	const struct hvm_start_info *si = (const struct hvm_start_info *)(uintptr_t)ebx;
	if (si->magic != HVM_START_MAGIC)
		return;
	g_start_info = si;
	if (phys_ok(si->cmdline_paddr, 1)) {
		const char *c = (const char *)(uintptr_t)si->cmdline_paddr;
		/* only use it if NUL terminated within the platform's limit */
		if (strnlen(c, CMDLINE_MAX) < CMDLINE_MAX)
			g_cmdline = c;
	}
	if (si->version >= 1 && si->memmap_entries > 0 && si->memmap_entries <= 1024 &&
	    phys_ok(si->memmap_paddr, (uint64_t)si->memmap_entries * sizeof(struct hvm_memmap_entry))) {
		g_memmap = (const struct hvm_memmap_entry *)(uintptr_t)si->memmap_paddr;
		g_memmap_entries = si->memmap_entries;
	}
}

bool memmap_is_ram(uint64_t addr, uint64_t len)
{
	for (uint32_t i = 0; i < g_memmap_entries; i++) {
		const struct hvm_memmap_entry *e = &g_memmap[i];
		if (e->type == E820_RAM && addr >= e->addr && addr + len <= e->addr + e->size)
			return true;
	}
	return false;
}
