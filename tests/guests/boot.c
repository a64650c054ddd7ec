/*
 * Boot probe: what a kernel sees at entry. PVH start info, command line, memory
 * map, ACPI tables, CPUID; then leaves the machine as `exit=` says.
 *
 * Command-line keys: expect_cpus=N, expect_mem_mib=N, expect_cmdline_token=X,
 * exit=reset|poweroff|acpi-reset|triple-fault|hang.
 */
#include "probe.h"

const char probe_name[] = "boot";

static void check_start_info(void)
{
	probe_info("start_info", "0x%x", g_start_info_paddr);
	const struct hvm_start_info *si = (const struct hvm_start_info *)(uintptr_t)g_start_info_paddr;
	if (g_start_info_paddr == 0 || g_start_info_paddr > 0xFFFFF000u) {
		probe_fail("start_info_magic", "%%ebx=0x%x is not a usable address", g_start_info_paddr);
		return;
	}
	probe_check("start_info_magic", si->magic == HVM_START_MAGIC, "magic 0x%x, expected 0x%x", si->magic,
		    HVM_START_MAGIC);
	if (!g_start_info)
		return;
	probe_info("start_info_version", "%u", si->version);
	probe_check("start_info_version", si->version >= 1, "version %u, expected >= 1 (memory map needs 1)",
		    si->version);
}

static void check_cmdline(void)
{
	if (!g_start_info)
		return;
	uint64_t pa = g_start_info->cmdline_paddr;
	probe_info("cmdline_paddr", "0x%llx", pa);
	if (!probe_check("cmdline", g_cmdline[0] != '\0' || (phys_ok(pa, 1) && *(const char *)(uintptr_t)pa == 0),
			 "cmdline_paddr 0x%llx unusable or not NUL-terminated within 64 KiB", pa))
		return;
	size_t len = strlen(g_cmdline);
	probe_info("cmdline_len", "%u", (uint32_t)len);
	printf("PROBE-INFO cmdline=");
	print_sanitized(g_cmdline, 4096);
	printf("\n");

	const char *tok;
	size_t tlen;
	if (cmdline_find("expect_cmdline_token", &tok, &tlen)) {
		/* X must appear in the command line outside the expect_cmdline_token=X token itself */
		char want[256];
		bool found = false;
		if (tlen > 0 && tlen < sizeof(want)) {
			memcpy(want, tok, tlen);
			want[tlen] = '\0';
			const char *own_start = tok - strlen("expect_cmdline_token=");
			const char *own_end = tok + tlen;
			const char *p = g_cmdline;
			size_t left = len;
			const char *hit;
			while ((hit = strstr_n(p, left, want))) {
				if (hit < own_start || hit >= own_end) {
					found = true;
					break;
				}
				left -= (size_t)(hit + 1 - p);
				p = hit + 1;
			}
		}
		probe_check("cmdline_token", found, "token '%.*s' not found elsewhere in the command line", (int)tlen,
			    tok);
	}
}

static const char *e820_name(uint32_t t)
{
	switch (t) {
	case E820_RAM: return "ram";
	case E820_RESERVED: return "reserved";
	case E820_ACPI: return "acpi";
	case E820_NVS: return "nvs";
	case E820_UNUSABLE: return "unusable";
	default: return "other";
	}
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

static void check_memmap(void)
{
	if (!g_start_info || g_start_info->version < 1)
		return;
	probe_info("memmap_entries", "%u", g_start_info->memmap_entries);
	if (!probe_check("memmap", g_memmap != NULL, "memmap_paddr 0x%llx entries %u unusable",
			 g_start_info->memmap_paddr, g_start_info->memmap_entries))
		return;
	uint64_t ram = 0;
	bool overlap = false, hole_ram = false, legacy_ram = false, zero = false;
	char ov[96] = "", hole[96] = "", legacy[96] = "";
	for (uint32_t i = 0; i < g_memmap_entries; i++) {
		const struct hvm_memmap_entry *e = &g_memmap[i];
		char key[16];
		snprintf(key, sizeof(key), "memmap%u", i);
		probe_info(key, "0x%llx-0x%llx %s(%u)", e->addr, e->addr + e->size, e820_name(e->type), e->type);
		if (e->size == 0)
			zero = true;
		for (uint32_t j = 0; j < i; j++) {
			const struct hvm_memmap_entry *f = &g_memmap[j];
			if (overlaps(e->addr, e->size, f->addr, f->size) && !overlap) {
				overlap = true;
				snprintf(ov, sizeof(ov), "entries %u and %u overlap", j, i);
			}
		}
		if (e->type != E820_RAM)
			continue;
		ram += e->size;
		if (overlaps(e->addr, e->size, 0xC0000000ull, 0x40000000ull) && !hole_ram) {
			hole_ram = true;
			snprintf(hole, sizeof(hole), "RAM 0x%llx-0x%llx overlaps 0xc0000000-0x100000000", e->addr,
				 e->addr + e->size);
		}
		if (overlaps(e->addr, e->size, 0xA0000ull, 0x60000ull) && !legacy_ram) {
			legacy_ram = true;
			snprintf(legacy, sizeof(legacy), "RAM 0x%llx-0x%llx overlaps 0xa0000-0x100000", e->addr,
				 e->addr + e->size);
		}
	}
	probe_check("memmap_sane", !overlap && !zero, "%s", overlap ? ov : "zero-sized entry");
	probe_info("ram_bytes", "%llu", ram);
	uint32_t mib;
	if (cmdline_get_u32("expect_mem_mib", &mib)) {
		uint64_t hi = (uint64_t)mib << 20, lo = hi - (1u << 20);
		probe_check("ram_size", ram >= lo && ram <= hi, "RAM %llu bytes, expected %llu..%llu (%u MiB)", ram,
			    lo, hi, mib);
	}
	probe_check("ram_not_in_mmio_hole", !hole_ram, "%s", hole);
	probe_check("ram_not_in_legacy_hole", !legacy_ram, "%s", legacy);
	probe_check("ram_low_free", memmap_is_ram(0x10000, 0x10000),
		    "0x10000-0x20000 (AP trampoline area) is not RAM in the map");
}

static bool hdr_ok(const struct acpi_header *h) { return acpi_sum(h, h->length) == 0; }

static void table_info(const char *key, const struct acpi_header *h)
{
	probe_info(key, "%.4s@0x%x len=%u rev=%u oem=%.6s/%.8s", h->signature, (uint32_t)(uintptr_t)h, h->length,
		   h->revision, h->oem_id, h->oem_table_id);
}

static void check_fadt(const struct acpi_fadt *fadt)
{
	if (!probe_check("acpi_fadt", fadt != NULL, "no FACP table in the root table"))
		return;
	if (!probe_check("acpi_fadt_length", fadt->h.length >= 116, "FADT length %u < 116", fadt->h.length))
		return;
	probe_info("fadt_flags", "0x%x", fadt->flags);
	probe_check("acpi_fadt_hw_reduced", fadt->flags & FADT_F_HW_REDUCED_ACPI,
		    "FADT flags 0x%x lack HW_REDUCED_ACPI (bit 20)", fadt->flags);

	if (FADT_HAS(fadt, sleep_status_reg)) {
		const struct acpi_gas *c = &fadt->sleep_control_reg, *s = &fadt->sleep_status_reg;
		probe_info("sleep_control_reg", "space=%u width=%u addr=0x%llx", c->space_id, c->bit_width, c->address);
		probe_info("sleep_status_reg", "space=%u width=%u addr=0x%llx", s->space_id, s->bit_width, s->address);
		probe_check("acpi_fadt_sleep_regs", acpi_gas_present(c) && acpi_gas_present(s),
			    "sleep control/status register address is 0");
	} else {
		probe_fail("acpi_fadt_sleep_regs", "FADT length %u too short for SLEEP_CONTROL/STATUS_REG (ACPI 5.0+)",
			   fadt->h.length);
	}
	if (FADT_HAS(fadt, reset_value)) {
		const struct acpi_gas *r = &fadt->reset_reg;
		probe_info("reset_reg", "space=%u width=%u addr=0x%llx value=0x%x", r->space_id, r->bit_width,
			   r->address, fadt->reset_value);
		probe_check("acpi_fadt_reset_reg", (fadt->flags & FADT_F_RESET_REG_SUP) && acpi_gas_present(r),
			    "RESET_REG_SUP flag %s, RESET_REG address 0x%llx",
			    (fadt->flags & FADT_F_RESET_REG_SUP) ? "set" : "clear", r->address);
	}

	const struct acpi_header *dsdt = acpi_dsdt(fadt);
	if (!probe_check("acpi_dsdt", dsdt != NULL, "FADT X_DSDT/DSDT does not point at a DSDT"))
		return;
	table_info("table_DSDT", dsdt);
	probe_check("acpi_checksum_DSDT", hdr_ok(dsdt), "DSDT checksum off by 0x%x", acpi_sum(dsdt, dsdt->length));
	uint8_t s5;
	bool have_s5 = acpi_s5_slp_typ(dsdt, &s5);
	if (have_s5)
		probe_info("s5_slp_typ", "%u", s5);
	probe_check("acpi_dsdt_s5", have_s5 && s5 == 5, have_s5 ? "\\_S5_ SLP_TYPa is %u, platform says 5" :
			"no \\_S5_ package in the DSDT", have_s5 ? s5 : 0);
}

static void check_madt(const struct acpi_madt *madt)
{
	if (!probe_check("acpi_madt", madt != NULL, "no APIC table in the root table"))
		return;
	probe_check("acpi_madt_lapic_addr", madt->lapic_address == LAPIC_BASE, "local APIC address 0x%x",
		    madt->lapic_address);
	static struct madt_cpus cpus;
	madt_cpus(madt, &cpus);
	probe_check("acpi_madt_wellformed", !cpus.malformed, "a MADT subtable length runs past the table");
	probe_info("cpus_madt", "%u", cpus.count);
	/* IDs must be exactly 0..N-1, each once */
	static uint8_t seen[256];
	bool ok = cpus.count > 0 && cpus.count <= ARRAY_SIZE(cpus.ids);
	char why[96] = "";
	if (!ok)
		snprintf(why, sizeof(why), "%u enabled local APICs", cpus.count);
	for (uint32_t i = 0; ok && i < cpus.count; i++) {
		uint32_t id = cpus.ids[i];
		if (id >= cpus.count || seen[id]++) {
			ok = false;
			snprintf(why, sizeof(why), "APIC ID %u (entry %u) is %s", id, i,
				 id >= cpus.count ? "out of 0..N-1" : "duplicated");
		}
	}
	probe_check("acpi_madt_apic_ids", ok, "%s", why);
	probe_expect_u32("cpus_madt", "expect_cpus", cpus.count);

	/* IOAPIC and the IRQ0 override, as docs/platform.md describes them */
	uint32_t ioapics = 0, ioapic_addr = 0, ioapic_gsi = 0xFFFFFFFFu, irq0_gsi = 0xFFFFFFFFu;
	const struct acpi_subtable *st = NULL;
	while ((st = madt_next(madt, st))) {
		if (st->type == MADT_IOAPIC && st->length >= sizeof(struct madt_ioapic)) {
			const struct madt_ioapic *io = (const void *)st;
			if (ioapics++ == 0) {
				ioapic_addr = io->address;
				ioapic_gsi = io->gsi_base;
			}
		} else if (st->type == MADT_ISO && st->length >= sizeof(struct madt_iso)) {
			const struct madt_iso *iso = (const void *)st;
			if (iso->bus == 0 && iso->source == 0)
				irq0_gsi = iso->gsi;
		}
	}
	probe_info("ioapics", "%u", ioapics);
	probe_check("acpi_madt_ioapic", ioapics >= 1 && ioapic_addr == 0xFEC00000u && ioapic_gsi == 0,
		    "%u IOAPICs, first at 0x%x GSI base %u (expected 0xfec00000, 0)", ioapics, ioapic_addr, ioapic_gsi);
	probe_check("acpi_madt_irq0_override", irq0_gsi == 2, "ISA IRQ0 -> GSI %d (expected 2)", (int)irq0_gsi);
}

static void check_acpi(void)
{
	if (!g_start_info)
		return;
	probe_info("rsdp_paddr", "0x%llx", g_start_info->rsdp_paddr);
	const struct acpi_rsdp *r = acpi_rsdp();
	if (!probe_check("acpi_rsdp", r != NULL, "no 'RSD PTR ' signature at rsdp_paddr 0x%llx",
			 g_start_info->rsdp_paddr))
		return;
	probe_info("rsdp", "rev=%u oem=%.6s rsdt=0x%x xsdt=0x%llx", r->revision, r->oem_id, r->rsdt_address,
		   r->xsdt_address);
	probe_check("acpi_rsdp_checksum", acpi_sum(r, 20) == 0, "first 20 bytes sum to 0x%x", acpi_sum(r, 20));
	if (probe_check("acpi_rsdp_revision", r->revision >= 2, "revision %u: no XSDT (platform says 2)",
			r->revision))
		probe_check("acpi_rsdp_ext_checksum", r->length >= 36 && acpi_sum(r, r->length) == 0,
			    "length %u, extended sum 0x%x", r->length, acpi_sum(r, r->length >= 36 ? r->length : 36));

	bool is_xsdt = false;
	const struct acpi_header *root = acpi_root(&is_xsdt);
	if (!probe_check("acpi_xsdt", root && is_xsdt, root ? "only an RSDT" : "no XSDT/RSDT at the RSDP's address")) {
		if (!root)
			return;
	}
	table_info(is_xsdt ? "table_XSDT" : "table_RSDT", root);
	probe_check(is_xsdt ? "acpi_checksum_XSDT" : "acpi_checksum_RSDT", hdr_ok(root), "checksum off by 0x%x",
		    acpi_sum(root, root->length));
	uint32_t n = acpi_root_count(root, is_xsdt);
	probe_info("acpi_tables", "%u", n);
	for (uint32_t i = 0; i < n; i++) {
		uint64_t pa = acpi_root_entry(root, is_xsdt, i);
		char check[32], key[16];
		if (!phys_ok(pa, sizeof(struct acpi_header))) {
			snprintf(check, sizeof(check), "acpi_table%u", i);
			probe_fail(check, "entry %u points at 0x%llx", i, pa);
			continue;
		}
		const struct acpi_header *h = (const struct acpi_header *)(uintptr_t)pa;
		char sig[5];
		for (int k = 0; k < 4; k++) {
			char c = h->signature[k];
			sig[k] = (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ? c : '_';
		}
		sig[4] = '\0';
		snprintf(key, sizeof(key), "table_%s", sig);
		table_info(key, h);
		snprintf(check, sizeof(check), "acpi_checksum_%s", sig);
		if (h->length < sizeof(*h) || !phys_ok(pa, h->length))
			probe_fail(check, "bad length %u", h->length);
		else
			probe_check(check, hdr_ok(h), "checksum off by 0x%x", acpi_sum(h, h->length));
	}

	check_fadt((const struct acpi_fadt *)acpi_find("FACP", 0));
	check_madt((const struct acpi_madt *)acpi_find("APIC", 0));
}

static void check_cpuid(void)
{
	uint32_t max, a, b, c, d;
	cpuid(0, &max, &b, &c, &d);
	char vendor[13];
	memcpy(vendor, &b, 4);
	memcpy(vendor + 4, &d, 4);
	memcpy(vendor + 8, &c, 4);
	vendor[12] = '\0';
	probe_info("cpu_vendor", "%s", vendor);
	probe_info("cpuid_max_leaf", "0x%x", max);

	cpuid(1, &a, &b, &c, &d);
	probe_info("cpuid_1", "eax=0x%x ebx=0x%x ecx=0x%x edx=0x%x", a, b, c, d);
	if (probe_check("cpuid_hypervisor", c & (1u << 31), "CPUID.1:ECX bit 31 clear")) {
		uint32_t hmax, s[3];
		cpuid(0x40000000, &hmax, &s[0], &s[1], &s[2]);
		char sig[13];
		memcpy(sig, s, 12);
		sig[12] = '\0';
		for (int i = 0; i < 12; i++)
			if (sig[i] && (sig[i] < 0x20 || sig[i] >= 0x7f))
				sig[i] = '?';
		probe_info("hypervisor", "%s max_leaf=0x%x", sig, hmax);
	}
	probe_check("cpuid_bsp_apic_id", (b >> 24) == 0, "CPUID.1:EBX[31:24] = %u on the BSP", b >> 24);
	probe_info("cpuid_logical_per_package", "%u", (b >> 16) & 0xff);

	if (max < 0xB) {
		probe_info("cpuid_leaf_b", "absent (max leaf 0x%x)", max);
		return;
	}
	uint32_t core_n = 0, smt_n = 0;
	bool have = false;
	for (uint32_t sub = 0; sub < 8; sub++) {
		cpuid_count(0xB, sub, &a, &b, &c, &d);
		uint32_t type = (c >> 8) & 0xff;
		if (type == 0)
			break;
		have = true;
		char key[24];
		snprintf(key, sizeof(key), "cpuid_b_%u", sub);
		probe_info(key, "type=%u shift=%u count=%u x2apic_id=%u", type, a & 0x1f, b & 0xffff, d);
		if (type == 1)
			smt_n = b & 0xffff;
		if (type == 2)
			core_n = b & 0xffff;
	}
	if (!have) {
		probe_info("cpuid_leaf_b", "empty");
		return;
	}
	(void)smt_n;
	probe_info("cpus_cpuid", "%u", core_n);
	probe_check("cpuid_leaf_b_core_level", core_n > 0, "leaf 0xB has no core-level subleaf");
	probe_expect_u32("cpus_cpuid", "expect_cpus", core_n);
}

void probe_main(void)
{
	check_start_info();
	check_cmdline();
	check_memmap();
	check_acpi();
	check_cpuid();
}
