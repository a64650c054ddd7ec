/* ACPI table helpers: RSDP/XSDT walk, checksums, FADT registers, DSDT \_S5_, MADT. */
#include "probe.h"

_Static_assert(sizeof(struct acpi_rsdp) == 36, "rsdp");
_Static_assert(sizeof(struct acpi_header) == 36, "header");
_Static_assert(sizeof(struct acpi_gas) == 12, "gas");
_Static_assert(offsetof(struct acpi_fadt, flags) == 112, "fadt flags");
_Static_assert(offsetof(struct acpi_fadt, reset_reg) == 116, "fadt reset_reg");
_Static_assert(offsetof(struct acpi_fadt, x_dsdt) == 140, "fadt x_dsdt");
_Static_assert(offsetof(struct acpi_fadt, sleep_control_reg) == 244, "fadt sleep_control_reg");
_Static_assert(sizeof(struct acpi_fadt) == 276, "fadt");

uint8_t acpi_sum(const void *p, size_t len)
{
	const uint8_t *b = p;
	uint8_t s = 0;
	for (size_t i = 0; i < len; i++)
		s = (uint8_t)(s + b[i]);
	return s;
}

const struct acpi_rsdp *acpi_rsdp(void)
{
	if (!g_start_info || !phys_ok(g_start_info->rsdp_paddr, sizeof(struct acpi_rsdp)))
		return NULL;
	const struct acpi_rsdp *r = (const struct acpi_rsdp *)(uintptr_t)g_start_info->rsdp_paddr;
	if (memcmp(r->signature, "RSD PTR ", 8) != 0)
		return NULL;
	return r;
}

static const struct acpi_header *table_at(uint64_t paddr)
{
	if (!phys_ok(paddr, sizeof(struct acpi_header)))
		return NULL;
	const struct acpi_header *h = (const struct acpi_header *)(uintptr_t)paddr;
	if (h->length < sizeof(struct acpi_header) || !phys_ok(paddr, h->length))
		return NULL;
	return h;
}

const struct acpi_header *acpi_root(bool *is_xsdt)
{
	const struct acpi_rsdp *r = acpi_rsdp();
	if (!r)
		return NULL;
	if (r->revision >= 2 && r->xsdt_address) {
		const struct acpi_header *x = table_at(r->xsdt_address);
		if (x && memcmp(x->signature, "XSDT", 4) == 0) {
			*is_xsdt = true;
			return x;
		}
	}
	const struct acpi_header *t = table_at(r->rsdt_address);
	if (t && memcmp(t->signature, "RSDT", 4) == 0) {
		*is_xsdt = false;
		return t;
	}
	return NULL;
}

uint32_t acpi_root_count(const struct acpi_header *root, bool is_xsdt)
{
	return (root->length - (uint32_t)sizeof(struct acpi_header)) / (is_xsdt ? 8 : 4);
}

uint64_t acpi_root_entry(const struct acpi_header *root, bool is_xsdt, uint32_t i)
{
	const uint8_t *e = (const uint8_t *)(root + 1);
	if (is_xsdt) {
		uint64_t v;
		memcpy(&v, e + 8 * i, 8);
		return v;
	}
	uint32_t v;
	memcpy(&v, e + 4 * i, 4);
	return v;
}

const struct acpi_header *acpi_find(const char sig[4], uint32_t n)
{
	bool x;
	const struct acpi_header *root = acpi_root(&x);
	if (!root)
		return NULL;
	uint32_t cnt = acpi_root_count(root, x);
	for (uint32_t i = 0; i < cnt; i++) {
		const struct acpi_header *h = table_at(acpi_root_entry(root, x, i));
		if (h && memcmp(h->signature, sig, 4) == 0 && n-- == 0)
			return h;
	}
	return NULL;
}

const struct acpi_header *acpi_dsdt(const struct acpi_fadt *fadt)
{
	uint64_t a = 0;
	if (FADT_HAS(fadt, x_dsdt) && fadt->x_dsdt)
		a = fadt->x_dsdt;
	else if (FADT_HAS(fadt, dsdt))
		a = fadt->dsdt;
	const struct acpi_header *h = table_at(a);
	if (h && memcmp(h->signature, "DSDT", 4) != 0)
		return NULL;
	return h;
}

/* AML integer data object at p (ZeroOp, OneOp, OnesOp, BytePrefix, WordPrefix, DWordPrefix). */
static bool aml_integer(const uint8_t *p, const uint8_t *end, uint32_t *v)
{
	if (p >= end)
		return false;
	switch (p[0]) {
	case 0x00: *v = 0; return true;
	case 0x01: *v = 1; return true;
	case 0xFF: *v = 0xFFFFFFFFu; return true;
	case 0x0A: if (p + 2 > end) return false; *v = p[1]; return true;
	case 0x0B: if (p + 3 > end) return false; *v = (uint32_t)p[1] | (uint32_t)p[2] << 8; return true;
	case 0x0C: if (p + 5 > end) return false; memcpy(v, p + 1, 4); return true;
	default: return false;
	}
}

bool acpi_s5_slp_typ(const struct acpi_header *dsdt, uint8_t *slp_typ)
{
	const uint8_t *start = (const uint8_t *)(dsdt + 1);
	const uint8_t *end = (const uint8_t *)dsdt + dsdt->length;
	const char *hit = strstr_n((const char *)start, (size_t)(end - start), "_S5_");
	while (hit) {
		const uint8_t *p = (const uint8_t *)hit + 4;
		/* Name(_S5_, Package(){...}): PackageOp, PkgLength, NumElements, elements */
		if (p < end && p[0] == 0x12) {
			p++;
			if (p >= end)
				return false;
			p += 1 + (p[0] >> 6);  /* PkgLength: lead byte + 0..3 follow bytes */
			p++;                   /* NumElements */
			uint32_t v;
			if (aml_integer(p, end, &v)) {
				*slp_typ = (uint8_t)v;
				return true;
			}
		}
		const char *next = hit + 1;
		hit = strstr_n(next, (size_t)((const char *)end - next), "_S5_");
	}
	return false;
}

static uint8_t gas_width(const struct acpi_gas *g)
{
	switch (g->access_size) {
	case 1: return 8;
	case 2: return 16;
	case 3: return 32;
	case 4: return 64;
	default: return g->bit_width ? g->bit_width : 8;
	}
}

bool acpi_gas_write(const struct acpi_gas *g, uint32_t val)
{
	uint8_t w = gas_width(g);
	val <<= g->bit_offset;
	if (g->space_id == ACPI_GAS_IO) {
		if (g->address > 0xFFFF)
			return false;
		uint16_t port = (uint16_t)g->address;
		if (w <= 8) outb(port, (uint8_t)val);
		else if (w <= 16) outw(port, (uint16_t)val);
		else outl(port, val);
		return true;
	}
	if (g->space_id == ACPI_GAS_MEMORY) {
		if (!phys_ok(g->address, w / 8))
			return false;
		uintptr_t a = (uintptr_t)g->address;
		if (w <= 8) mmio_write8(a, (uint8_t)val);
		else if (w <= 16) mmio_write16(a, (uint16_t)val);
		else if (w <= 32) mmio_write32(a, val);
		else mmio_write64(a, val);
		return true;
	}
	return false;
}

uint32_t acpi_gas_read(const struct acpi_gas *g)
{
	uint8_t w = gas_width(g);
	uint32_t v = 0xFFFFFFFFu;
	if (g->space_id == ACPI_GAS_IO && g->address <= 0xFFFF) {
		uint16_t port = (uint16_t)g->address;
		v = w <= 8 ? inb(port) : w <= 16 ? inw(port) : inl(port);
	} else if (g->space_id == ACPI_GAS_MEMORY && phys_ok(g->address, w / 8)) {
		uintptr_t a = (uintptr_t)g->address;
		v = w <= 8 ? mmio_read8(a) : w <= 16 ? mmio_read16(a) : mmio_read32(a);
	}
	return v >> g->bit_offset;
}

const struct acpi_subtable *madt_next(const struct acpi_madt *madt, const struct acpi_subtable *prev)
{
	const uint8_t *end = (const uint8_t *)madt + madt->h.length;
	const uint8_t *p = prev ? (const uint8_t *)prev + prev->length : (const uint8_t *)(madt + 1);
	if (p + sizeof(struct acpi_subtable) > end)
		return NULL;
	const struct acpi_subtable *st = (const struct acpi_subtable *)p;
	if (st->length < 2 || p + st->length > end)
		return NULL;
	return st;
}

void madt_cpus(const struct acpi_madt *madt, struct madt_cpus *out)
{
	out->count = 0;
	out->malformed = false;
	const uint8_t *end = (const uint8_t *)madt + madt->h.length;
	const struct acpi_subtable *st = NULL;
	while ((st = madt_next(madt, st))) {
		uint32_t id, flags;
		if (st->type == MADT_LAPIC && st->length >= sizeof(struct madt_lapic)) {
			const struct madt_lapic *l = (const void *)st;
			id = l->apic_id;
			flags = l->flags;
		} else if (st->type == MADT_X2APIC && st->length >= sizeof(struct madt_x2apic)) {
			const struct madt_x2apic *l = (const void *)st;
			id = l->x2apic_id;
			flags = l->flags;
		} else {
			continue;
		}
		if (!(flags & 1))
			continue;
		if (out->count < ARRAY_SIZE(out->ids))
			out->ids[out->count] = id;
		out->count++;
	}
	/* a walk that stopped before the end means a bad subtable length */
	const uint8_t *p = (const uint8_t *)(madt + 1);
	const struct acpi_subtable *last = NULL;
	for (st = NULL; (st = madt_next(madt, st));)
		last = st;
	if (last)
		p = (const uint8_t *)last + last->length;
	if (p != end)
		out->malformed = true;
}
