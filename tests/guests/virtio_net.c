/*
 * virtio-net probe: drives the first modern virtio-net device on PCI bus 0 (1af4:1041) the way a
 * driver does (docs/virtio.md), one PROBE line per check:
 *
 *   pci       ids, class 02/00, revision 1; memory space + bus master; the vendor capabilities
 *             (common, notify, ISR, device config) inside BAR0.
 *   features  VERSION_1, MAC and STATUS offered and accepted (FEATURES_OK).
 *   config    the MAC equals expect_mac=, the link status is up.
 *   queues    RX (queue 0) and TX (queue 1), 16 entries each, no interrupts (the probe polls the
 *             used rings); sixteen RX buffers (2 KiB, or rx_buf= bytes) posted on every RX queue
 *             before anything is sent. Each queue gets its own MSI-X vector number (q + 1), read
 *             back (vnet_msix_vectors); MSI-X itself stays off.
 *   mq        with pairs=N (2..4): MQ and CTRL_VQ negotiated, max_virtqueue_pairs = N, queues
 *             0..2N-1 and the control queue 2N set up; bad commands answered ERR (N + 1 pairs,
 *             0 pairs, an unknown class, a short VQ_PAIRS_SET), a control chain outside guest RAM
 *             returned with length 0, then VQ_PAIRS_SET N answered OK. After the pair-0 TX
 *             checks, pair p sends frame seq 4 + p (200 + 100 p bytes) on TX queue 2p + 1.
 *   tx        frames of 60, 590 and 1514 bytes (seq 0, 1, 2), a malformed chain (a buffer outside
 *             guest RAM: the device must return it without sending anything), then a 100-byte frame
 *             (seq 3) which must still go out. The test reads them from the TAP.
 *   rx        the frames the test writes into the TAP: expect_rx=N of them (default 3), sizes
 *             60, 1000, 1514 (and 4000 for seq 3), within rx_wait_ms= (default 30000), on any
 *             active RX queue; other frames are ignored. With mrg=1 MRG_RXBUF is negotiated and a
 *             frame may span several buffers (num_buffers): all of them must be in the used ring
 *             together; vnet_rx_merged says whether some frame needed more than one.
 *
 * Frames (ethertype 0x88B5, local experimental): bytes 14-17 "FLNT", byte 18 the sequence number,
 * byte 19 the direction ('G' guest to host, 'H' host to guest), byte i >= 20 is
 * (seq * 31 + i) & 0xff from the guest and (seq * 17 + i) & 0xff from the host. Guest frames go to
 * ff:ff:ff:ff:ff:ff from the device's MAC.
 *
 * bench=tx (rate-limit test, tests/virtio_net_rate.rs): instead of the checks above (after DRIVER_OK),
 * transmit frames of bench_frame= bytes (default 65000, at most 65536, one static buffer, ethertype
 * 0x88B5 to 02:00:00:00:00:fe) from bench_chains= chains in flight (default 8) on TX queue 1 for
 * bench_seconds= (default 9), and time the completions with the TSC in slices of bench_slice_ms=
 * (default 250), like the NVMe probe's bench=seqwrite. Printed after the run:
 *   PROBE-INFO bench_tx_slice_<i>=start_us=<from the start> us=<length> frames=<N> bytes=<N>
 *   PROBE-INFO bench_tx=frames=<N> bytes=<N> us=<N> frame=<bytes> slices=<N>[ stalled]
 *   PROBE bench_tx ok|FAIL      (FAIL: nothing completed for 5 s)
 * Bytes count the Ethernet frame without the virtio-net header, as the device's rate limiter does.
 *
 * bench=rx: likewise for receiving: sixteen RX buffers of 64 KiB (all one static buffer: the data is
 * not looked at) on RX queue 0, re-posted as they come back, with EVENT_IDX: like Linux's driver,
 * the probe notifies only when the device's avail_event asks (it ran out of buffers). The clock
 * starts at the first frame (waiting up to 30 s for the host to start sending) and runs
 * bench_seconds=. Prints bench_rx_slice_<i>=... and bench_rx=frames=<N> bytes=<N> us=<N>
 * slices=<N> kicks=<notifies>, PROBE bench_rx.
 *
 * Command-line keys: expect_mac=02:..., expect_rx=N, rx_wait_ms=N, ack_offloads=1 (also require and
 * accept CSUM, GUEST_CSUM, GUEST/HOST_TSO4/6, so the device sets the TAP's offloads; the frames carry
 * no partial checksums either way), pairs=N, mrg=1, rx_buf=BYTES (64..2048), exit=... (see the boot
 * probe).
 */
#include "bench.h"
#include "virtio.h"

const char probe_name[] = "virtio_net";

#define F_NET_CSUM 0
#define F_NET_GUEST_CSUM 1
#define F_NET_GUEST_TSO4 7
#define F_NET_GUEST_TSO6 8
#define F_NET_HOST_TSO4 11
#define F_NET_HOST_TSO6 12
#define F_NET_MAC 5
#define F_NET_MRG_RXBUF 15
#define F_NET_STATUS 16
#define F_NET_CTRL_VQ 17
#define F_RING_EVENT_IDX 29
#define F_NET_MQ 22

#define QSZ 16
#define NRX 16
#define RXBUF 2048
#define MAXP 4
#define MAXQ (2 * MAXP + 1)
#define MAXFRAME 8192
#define HDR 12
#define ETHERTYPE 0x88B5

struct ring {
	uint8_t *mem; /* descriptors + available ring; used ring on the next page */
	uint16_t avail_idx, used_idx, notify_off;
};

static uint8_t g_ring_mem[MAXQ][2 * 4096] __attribute__((aligned(4096)));
static uint8_t g_rxbuf[MAXP][NRX][RXBUF] __attribute__((aligned(4096)));
static uint8_t g_txhdr[HDR] __attribute__((aligned(16)));
static uint8_t g_txframe[1600] __attribute__((aligned(64)));
static uint8_t g_rxframe[MAXFRAME];
static uint8_t g_ctrl_cmd[16] __attribute__((aligned(16)));
static volatile uint8_t g_ctrl_ack;

static struct ring g_q[MAXQ];
#define BENCH_MAX_FRAME 65536 /* also the RX benchmark's buffer size */
#define BENCH_MAX_SLICES 128
static uint8_t g_bench_frame[BENCH_MAX_FRAME] __attribute__((aligned(4096)));
/* Queue pairs in use, the RX buffer length, MRG_RXBUF negotiated. */
static uint32_t g_pairs = 1, g_rxbuf_len = RXBUF;
static bool g_mrg;
#define rxq g_q[0]
#define txq g_q[1]

#define DESC(r) ((volatile struct vdesc *)(r)->mem)
#define AVAIL(r) ((volatile uint16_t *)((r)->mem + 16 * QSZ))
#define USED(r) ((volatile uint8_t *)((r)->mem + 4096))

static struct {
	struct virtio_pci vp;
	uintptr_t bar;
	uint64_t bar_size;
	uint64_t offered;
	uint8_t mac[6];
} v;
static struct virtio_pci *const vp = &v.vp;

static bool find_device(void)
{
	uint32_t found = pci_find_functions(0x10411AF4u, &vp->dev);
	probe_info("vnet_functions", "%u", found);
	if (!found) {
		probe_fail("vnet_found", "no 1af4:1041 function on bus 0");
		return false;
	}
	probe_ok("vnet_found");
	probe_info("vnet_slot", "%02x", vp->dev);
	uint32_t class_rev = cfg_read32(vp->dev, 8);
	probe_check("vnet_ids", class_rev == 0x02000001u, "class/revision 0x%x (want 02/00/00 rev 1)", class_rev);
	return true;
}

static bool map_device(void)
{
	uint32_t lo = cfg_read32(vp->dev, 0x10), hi = cfg_read32(vp->dev, 0x14);
	uint64_t addr = ((uint64_t)hi << 32) | (lo & ~0xFu);
	outl(CFG_ADDR, cf8(vp->dev, 0x10));
	outl(CFG_DATA, 0xFFFFFFFFu);
	uint32_t mask = inl(CFG_DATA);
	outl(CFG_DATA, lo);
	v.bar_size = (uint64_t)(~(mask & ~0xFu) + 1u);
	bool ok = ((lo >> 1) & 3) == 2 && addr && addr + v.bar_size <= 0x100000000ull;
	probe_check("vnet_bar0", ok, "BAR0 0x%x:%x size 0x%llx: want a 64-bit BAR below 4 GiB", hi, lo, v.bar_size);
	v.bar = ok ? (uintptr_t)addr : 0;
	cfg_write16(vp->dev, 0x04, cfg_read16(vp->dev, 0x04) | 0x6); /* memory space + bus master */
	/* QEMU's virtio-pci puts the structures in BAR4: the benchmark goes on without BAR0 (walk_caps
	 * finds every BAR it needs); the checks do not. */
	return ok || cmdline_find("bench", NULL, NULL);
}

/* The address of memory BAR `bar` as the firmware (or flint) assigned it; 0 if none. */
static uintptr_t bar_address(uint8_t bar)
{
	if (bar > 5)
		return 0;
	uint32_t lo = cfg_read32(vp->dev, (uint16_t)(0x10 + 4 * bar));
	if (lo & 1)
		return 0;
	uint64_t addr = lo & ~0xFu;
	if (((lo >> 1) & 3) == 2 && bar < 5)
		addr |= (uint64_t)cfg_read32(vp->dev, (uint16_t)(0x14 + 4 * bar)) << 32;
	return addr < 0x100000000ull ? (uintptr_t)addr : 0;
}

static bool walk_caps(void)
{
	uint32_t n = 0;
	bool inside = true;
	for (uint8_t ptr = pci_cap_first(vp->dev); ptr && n++ < 32; ptr = pci_cap_next(vp->dev, ptr)) {
		struct virtio_cap cap;
		if (!virtio_cap_read(vp->dev, ptr, &cap))
			continue;
		uintptr_t a = (cap.bar == 0 ? v.bar : bar_address(cap.bar)) + cap.offset;
		if (virtio_cap_record(vp, &cap, a) && (cap.bar != 0 || (uint64_t)cap.offset + cap.length > v.bar_size))
			inside = false;
	}
	bool all = virtio_caps_complete(vp);
	probe_check("vnet_caps", all && inside && vp->common_len >= 0x38,
		    "types seen 0x%x, inside BAR0 %u, common length 0x%x", vp->caps_seen, inside, vp->common_len);
	return all && (inside || cmdline_find("bench", NULL, NULL));
}

static void setup_queue(uint16_t index, struct ring *r)
{
	r->mem = g_ring_mem[index];
	memset(r->mem, 0, 2 * 4096);
	r->avail_idx = r->used_idx = 0;
	r->notify_off = vp_queue_setup(vp, index, QSZ, (uintptr_t)DESC(r), (uintptr_t)AVAIL(r), (uintptr_t)USED(r),
				       (uint16_t)(index + 1));
}

/* Puts `head` in the available ring without publishing it (the benchmarks publish batches). */
static void avail_add(struct ring *r, uint16_t head)
{
	AVAIL(r)[2 + r->avail_idx % QSZ] = head;
	r->avail_idx++;
}
/* Makes what avail_add put in the ring visible to the device. */
static void avail_publish(struct ring *r)
{
	mb();
	AVAIL(r)[1] = r->avail_idx;
	mb();
}
static void publish(struct ring *r, uint16_t head)
{
	avail_add(r, head);
	avail_publish(r);
}
static void kick(struct ring *r) { vp_notify(vp, r->notify_off); }

/* The next used element of `r`, if any: returns true and sets id and len. */
static bool pop_used(struct ring *r, uint32_t *id, uint32_t *len)
{
	if (*(volatile uint16_t *)(USED(r) + 2) == r->used_idx)
		return false;
	mb();
	uint32_t slot = r->used_idx % QSZ;
	*id = *(volatile uint32_t *)(USED(r) + 4 + 8 * slot);
	*len = *(volatile uint32_t *)(USED(r) + 4 + 8 * slot + 4);
	r->used_idx++;
	return true;
}

static void post_rx(uint32_t pair, uint16_t i)
{
	struct ring *r = &g_q[2 * pair];
	vdesc_set(DESC(r), i, (uintptr_t)g_rxbuf[pair][i], g_rxbuf_len, D_WRITE, 0);
	publish(r, i);
}

static void build_frame(uint8_t seq, uint32_t size)
{
	memset(g_txframe, 0xFF, 6);
	memcpy(g_txframe + 6, v.mac, 6);
	g_txframe[12] = ETHERTYPE >> 8;
	g_txframe[13] = ETHERTYPE & 0xFF;
	memcpy(g_txframe + 14, "FLNT", 4);
	g_txframe[18] = seq;
	g_txframe[19] = 'G';
	for (uint32_t i = 20; i < size; i++)
		g_txframe[i] = (uint8_t)(seq * 31 + i);
}

/* Publishes the chain at descriptor 0, notifies, and waits (5 s) for the next used element; false on
 * a timeout. */
static bool run_chain0(struct ring *r, uint32_t *id, uint32_t *used_len)
{
	publish(r, 0);
	kick(r);
	uint64_t dl = deadline_ms(5000);
	while (!pop_used(r, id, used_len))
		if (deadline_passed(dl))
			return false;
	return true;
}

/* Sends a chain (header descriptor 0, frame descriptor 1 at `addr`) and waits for its completion;
 * returns false on a timeout. */
static bool send_chain_on(struct ring *r, uint64_t addr, uint32_t len, uint32_t *used_len)
{
	memset(g_txhdr, 0, HDR);
	vdesc_set(DESC(r), 0, (uintptr_t)g_txhdr, HDR, D_NEXT, 1);
	vdesc_set(DESC(r), 1, addr, len, 0, 0);
	uint32_t id;
	return run_chain0(r, &id, used_len) && id == 0;
}
static bool send_chain(uint64_t addr, uint32_t len, uint32_t *used_len) { return send_chain_on(&txq, addr, len, used_len); }

static bool parse_mac(const char *s, uint8_t *mac)
{
	for (int i = 0; i < 6; i++) {
		uint8_t b = 0;
		for (int j = 0; j < 2; j++) {
			char c = *s++;
			uint8_t d;
			if (c >= '0' && c <= '9')
				d = (uint8_t)(c - '0');
			else if (c >= 'a' && c <= 'f')
				d = (uint8_t)(c - 'a' + 10);
			else if (c >= 'A' && c <= 'F')
				d = (uint8_t)(c - 'A' + 10);
			else
				return false;
			b = (uint8_t)(b << 4 | d);
		}
		mac[i] = b;
		if (i < 5 && *s++ != ':')
			return false;
	}
	return true;
}

static void check_tx(void)
{
	static const uint32_t sizes[] = {60, 590, 1514};
	for (uint8_t seq = 0; seq < ARRAY_SIZE(sizes); seq++) {
		build_frame(seq, sizes[seq]);
		uint32_t used = 0xFFFFFFFFu;
		bool done = send_chain((uintptr_t)g_txframe, sizes[seq], &used);
		char name[24];
		snprintf(name, sizeof(name), "vnet_tx%u", seq);
		probe_check(name, done, "frame %u (%u bytes) not completed", seq, sizes[seq]);
	}
	/* A frame buffer outside guest RAM: returned, nothing sent. */
	uint32_t used = 0xFFFFFFFFu;
	bool done = send_chain(0x4000000000ull, 100, &used);
	probe_check("vnet_tx_bad_chain", done && used == 0, "completed %u, used length %u", done, used);
	build_frame(3, 100);
	done = send_chain((uintptr_t)g_txframe, 100, &used);
	probe_check("vnet_tx_after_bad_chain", done, "frame 3 not completed");
}

/* Sends control command `cmd` (len bytes) with a one-byte ack; `cmd_addr` overrides where the
 * command sits (to put it outside RAM). Returns false on a timeout. */
static bool ctrl_send(struct ring *r, uint64_t cmd_addr, uint32_t len, uint32_t *used_len, uint8_t *ack)
{
	g_ctrl_ack = 0xAA;
	vdesc_set(DESC(r), 0, cmd_addr, len, D_NEXT, 1);
	vdesc_set(DESC(r), 1, (uintptr_t)&g_ctrl_ack, 1, D_WRITE, 0);
	uint32_t id;
	if (!run_chain0(r, &id, used_len))
		return false;
	*ack = g_ctrl_ack;
	return id == 0;
}

static void ctrl_expect(const char *name, const uint8_t *cmd, uint32_t len, uint8_t want_ack)
{
	struct ring *r = &g_q[2 * g_pairs];
	memcpy(g_ctrl_cmd, cmd, len);
	uint32_t used = 0xFFFFFFFFu;
	uint8_t ack = 0xAA;
	bool done = ctrl_send(r, (uintptr_t)g_ctrl_cmd, len, &used, &ack);
	probe_check(name, done && used == 1 && ack == want_ack, "completed %u, used length %u, ack %u (want %u)", done,
		    used, ack, want_ack);
}

static bool check_ctrl(void)
{
	uint8_t n = (uint8_t)g_pairs;
	const uint8_t too_many[] = {4, 0, (uint8_t)(n + 1), 0}, zero[] = {4, 0, 0, 0}, unknown[] = {0x7F, 0, 1},
		      short_set[] = {4, 0, n}, good[] = {4, 0, n, 0};
	ctrl_expect("vnet_ctrl_too_many_pairs", too_many, 4, 1);
	ctrl_expect("vnet_ctrl_zero_pairs", zero, 4, 1);
	ctrl_expect("vnet_ctrl_unknown_class", unknown, 3, 1);
	ctrl_expect("vnet_ctrl_short_command", short_set, 3, 1);
	uint32_t used = 0xFFFFFFFFu;
	uint8_t ack = 0;
	bool done = ctrl_send(&g_q[2 * g_pairs], 0x4000000000ull, 4, &used, &ack);
	probe_check("vnet_ctrl_bad_chain", done && used == 0 && ack == 0xAA, "completed %u, used length %u, ack 0x%x",
		    done,
		    used, ack);
	ctrl_expect("vnet_ctrl_set_pairs", good, 4, 0);
	return true;
}

/* Pair p sends frame seq 4 + p on its own TX queue. */
static void check_mq_tx(void)
{
	for (uint32_t p = 0; p < g_pairs; p++) {
		uint8_t seq = (uint8_t)(4 + p);
		uint32_t size = 200 + 100 * p, used = 0;
		build_frame(seq, size);
		bool done = send_chain_on(&g_q[2 * p + 1], (uintptr_t)g_txframe, size, &used);
		char name[24];
		snprintf(name, sizeof(name), "vnet_tx_pair%u", p);
		probe_check(name, done, "frame %u on TX queue %u not completed", seq, 2 * p + 1);
	}
}

/* The next frame on any active RX queue, reassembled into g_rxframe: returns its length (without
 * the header), its pair and num_buffers; 0 if none is there. Sets *torn if a merged frame's later
 * buffers were not in the used ring with its first. Every buffer is posted again. */
static uint32_t next_rx_frame(uint32_t *pair_out, uint16_t *nbufs_out, bool *torn, uint32_t *bad_id)
{
	for (uint32_t p = 0; p < g_pairs; p++) {
		struct ring *r = &g_q[2 * p];
		uint32_t id, len;
		if (!pop_used(r, &id, &len))
			continue;
		if (id >= NRX) {
			*bad_id = id;
			return 0;
		}
		const uint8_t *b = g_rxbuf[p][id];
		uint16_t nbufs = (uint16_t)(b[10] | b[11] << 8);
		uint32_t total = 0;
		if (len > g_rxbuf_len)
			len = g_rxbuf_len;
		memcpy(g_rxframe, b, len);
		total = len;
		post_rx(p, (uint16_t)id);
		for (uint16_t k = 1; g_mrg && k < nbufs; k++) {
			if (!pop_used(r, &id, &len) || id >= NRX) {
				*torn = true;
				break;
			}
			if (len > g_rxbuf_len)
				len = g_rxbuf_len;
			if (total + len <= MAXFRAME)
				memcpy(g_rxframe + total, g_rxbuf[p][id], len);
			total += len;
			post_rx(p, (uint16_t)id);
		}
		kick(r);
		*pair_out = p;
		*nbufs_out = nbufs;
		return total >= HDR ? total - HDR : 1;
	}
	return 0;
}

static void check_rx(void)
{
	static const uint32_t sizes[] = {60, 1000, 1514, 4000};
	uint32_t want = 3, wait_ms = 30000;
	cmdline_get_u32("expect_rx", &want);
	cmdline_get_u32("rx_wait_ms", &wait_ms);
	if (want > ARRAY_SIZE(sizes))
		want = ARRAY_SIZE(sizes);
	uint32_t got = 0, bad = 0, other = 0, seen_mask = 0, pairs_mask = 0, bad_id = 0xFFFFFFFFu;
	bool hdr_ok = true, torn = false, merged = false;
	char why[96] = "";
	uint64_t dl = deadline_ms(wait_ms);
	while (got < want && !deadline_passed(dl)) {
		uint32_t pair = 0;
		uint16_t nbufs = 0;
		uint32_t flen = next_rx_frame(&pair, &nbufs, &torn, &bad_id);
		if (bad_id != 0xFFFFFFFFu) {
			bad++;
			snprintf(why, sizeof(why), "used id %u", bad_id);
			bad_id = 0xFFFFFFFFu;
			continue;
		}
		if (!flen) {
			delay_us(100);
			continue;
		}
		const uint8_t *f = g_rxframe + HDR;
		if (flen > MAXFRAME - HDR || flen < 20 || f[12] != (ETHERTYPE >> 8) || f[13] != (ETHERTYPE & 0xFF) ||
		    memcmp(f + 14, "FLNT", 4) || f[19] != 'H') {
			other++;
			continue;
		}
		if (nbufs != 1)
			merged = true;
		if (!g_mrg && nbufs != 1)
			hdr_ok = false;
		uint8_t seq = f[18];
		bool ok = seq < ARRAY_SIZE(sizes) && flen == sizes[seq] && memcmp(f, v.mac, 6) == 0;
		for (uint32_t i = 20; ok && i < flen; i++)
			if (f[i] != (uint8_t)(seq * 17 + i)) {
				ok = false;
				snprintf(why, sizeof(why), "frame %u byte %u is 0x%x", seq, i, f[i]);
			}
		if (ok && !(seen_mask & (1u << seq))) {
			seen_mask |= 1u << seq;
			pairs_mask |= 1u << pair;
			got++;
		} else if (!ok) {
			bad++;
			if (!why[0])
				snprintf(why, sizeof(why), "frame seq %u length %u", seq, flen);
		}
	}
	probe_info("vnet_rx", "%u host frames, %u bad, %u other, rx pairs mask 0x%x", got, bad, other, pairs_mask);
	probe_check("vnet_rx_frames", got == want && bad == 0, "%u of %u host frames, %u bad (%s)", got, want, bad,
		    why);
	probe_check("vnet_rx_num_buffers", hdr_ok && !torn,
		    "num_buffers != 1 without MRG_RXBUF, or a merged frame torn");
	if (g_mrg)
		probe_check("vnet_rx_merged", merged && !torn, "merged %u torn %u (no frame needed several buffers?)",
			    merged,
			    torn);
}

static struct bench_slice g_slices[BENCH_MAX_SLICES];

/* Publishes what avail_add put in the ring and notifies. */
static void avail_publish_kick(struct ring *r)
{
	avail_publish(r);
	kick(r);
}

/* bench=rx: see the header comment. */
static void bench_rx(void)
{
	uint32_t seconds = 9, slice_ms = 250;
	cmdline_get_u32("bench_seconds", &seconds);
	cmdline_get_u32("bench_slice_ms", &slice_ms);
	if (seconds < 1 || seconds > 600 || slice_ms < 1) {
		probe_fail("bench_rx", "bench_seconds=%u bench_slice_ms=%u", seconds, slice_ms);
		return;
	}
	struct ring *r = &rxq;
	for (uint16_t i = 0; i < QSZ; i++) {
		vdesc_set(DESC(r), i, (uintptr_t)g_bench_frame, BENCH_MAX_FRAME, D_WRITE, 0);
		avail_add(r, i);
	}
	avail_publish_kick(r);
	uint64_t run_ticks = (uint64_t)tsc_khz() * 1000u * seconds;
	uint32_t id, len, frames = 0;
	uint64_t first = deadline_ms(30000);
	bool started = false;
	while (!started && !deadline_passed(first))
		started = *(volatile uint16_t *)(USED(r) + 2) != r->used_idx;
	struct bench_slices sl;
	bench_slices_start(&sl, g_slices, BENCH_MAX_SLICES, slice_ms);
	bool stalled = !started;
	uint32_t kicks = 0;
	while (started && bench_slices_elapsed(&sl) < run_ticks) {
		uint32_t reaped = 0;
		uint16_t old_idx = r->avail_idx;
		while (pop_used(r, &id, &len)) {
			reaped++;
			bench_slices_count(&sl, len > HDR ? len - HDR : 0);
			avail_add(r, (uint16_t)id);
		}
		bool alive = bench_slices_poll(&sl, reaped); /* the completion time before the notification */
		if (reaped) {
			avail_publish(r);
			/* EVENT_IDX (vring_need_event): the device wants a notify once the available index
			 * passes avail_event, the index it asked to be told about. */
			uint16_t event = *(volatile uint16_t *)(USED(r) + 4 + 8 * QSZ);
			if ((uint16_t)(r->avail_idx - event - 1) < (uint16_t)(r->avail_idx - old_idx)) {
				kick(r);
				kicks++;
			}
			frames += reaped;
		} else if (!alive) {
			stalled = true;
			break;
		}
	}
	bench_slices_finish(&sl, stalled, "bench_rx", "frames");
	probe_info("bench_rx", "frames=%u bytes=%llu us=%u slices=%u kicks=%u%s", frames, sl.bytes,
		   tsc_to_us(bench_slices_elapsed(&sl)), sl.n, kicks, stalled ? " stalled" : "");
	probe_check("bench_rx", !stalled && frames, "%s", started ? "nothing received for 5 s (stalled)" : "no frame in 30 s");
}

/* bench=tx: see the header comment. */
static void bench_tx(void)
{
	uint32_t seconds = 9, frame = 65000, chains = 8, slice_ms = 250;
	cmdline_get_u32("bench_seconds", &seconds);
	cmdline_get_u32("bench_frame", &frame);
	cmdline_get_u32("bench_chains", &chains);
	cmdline_get_u32("bench_slice_ms", &slice_ms);
	if (frame < 60 || frame > BENCH_MAX_FRAME || chains < 1 || chains > QSZ / 2 || seconds < 1 || seconds > 600 ||
	    slice_ms < 1) {
		probe_fail("bench_tx", "bench_frame=%u (60..%u) bench_chains=%u (1..%u) bench_seconds=%u bench_slice_ms=%u",
			   frame, BENCH_MAX_FRAME, chains, QSZ / 2, seconds, slice_ms);
		return;
	}
	memset(g_bench_frame, 0x5A, frame);
	memset(g_bench_frame, 0xFF, 6);
	memcpy(g_bench_frame + 6, v.mac, 6);
	g_bench_frame[0] = 0x02; /* unicast to nobody: the host stack drops it */
	g_bench_frame[5] = 0xFE;
	g_bench_frame[12] = ETHERTYPE >> 8;
	g_bench_frame[13] = ETHERTYPE & 0xFF;
	memset(g_txhdr, 0, HDR);
	struct ring *r = &txq;
	for (uint16_t c = 0; c < chains; c++) {
		vdesc_set(DESC(r), (uint16_t)(2 * c), (uintptr_t)g_txhdr, HDR, D_NEXT, (uint16_t)(2 * c + 1));
		vdesc_set(DESC(r), (uint16_t)(2 * c + 1), (uintptr_t)g_bench_frame, frame, 0, 0);
	}
	uint64_t run_ticks = (uint64_t)tsc_khz() * 1000u * seconds;
	uint32_t frames = 0, outstanding = 0;
	struct bench_slices sl;
	bench_slices_start(&sl, g_slices, BENCH_MAX_SLICES, slice_ms);
	bool stalled = false;
	for (uint16_t c = 0; c < chains; c++) {
		avail_add(r, (uint16_t)(2 * c));
		outstanding++;
	}
	avail_publish_kick(r);
	for (;;) {
		bool sending = bench_slices_elapsed(&sl) < run_ticks;
		if (!sending && !outstanding)
			break;
		uint32_t id, len, reaped = 0;
		while (pop_used(r, &id, &len)) {
			reaped++;
			outstanding--;
			bench_slices_count(&sl, frame);
			if (sending) {
				avail_add(r, (uint16_t)id);
				outstanding++;
			}
		}
		bool alive = bench_slices_poll(&sl, reaped); /* the completion time before the notification */
		if (reaped) {
			if (sending)
				avail_publish_kick(r);
			frames += reaped;
		} else if (!alive) {
			stalled = true;
			break;
		}
	}
	bench_slices_finish(&sl, stalled, "bench_tx", "frames");
	probe_info("bench_tx", "frames=%u bytes=%llu us=%u frame=%u slices=%u%s", frames, sl.bytes,
		   tsc_to_us(bench_slices_elapsed(&sl)), frame, sl.n, stalled ? " stalled" : "");
	probe_check("bench_tx", !stalled && frames, "nothing completed for 5 s (stalled)");
}

void probe_main(void)
{
	if (!find_device() || !map_device() || !walk_caps())
		return;
	vp_write8(vp, C_STATUS, 0);
	v.offered = vp_device_features(vp);
	probe_info("vnet_features", "0x%llx", v.offered);
	cmdline_get_u32("pairs", &g_pairs);
	if (g_pairs < 1 || g_pairs > MAXP)
		g_pairs = 1;
	cmdline_get_u32("rx_buf", &g_rxbuf_len);
	if (g_rxbuf_len < 64 || g_rxbuf_len > RXBUF)
		g_rxbuf_len = RXBUF;
	g_mrg = cmdline_is("mrg", "1");
	bool offered = has_feature(v.offered, F_VERSION_1) && has_feature(v.offered,
									  F_NET_MAC) && has_feature(v.offered,
												    F_NET_STATUS);
	uint64_t wanted = (1ull << F_VERSION_1) | (1ull << F_NET_MAC) | (1ull << F_NET_STATUS);
	if (cmdline_is("ack_offloads", "1")) {
		uint64_t offloads = (1ull << F_NET_CSUM) | (1ull << F_NET_GUEST_CSUM) | (1ull << F_NET_GUEST_TSO4) |
				    (1ull << F_NET_GUEST_TSO6) | (1ull << F_NET_HOST_TSO4) | (1ull << F_NET_HOST_TSO6);
		offered = offered && (v.offered & offloads) == offloads;
		wanted |= offloads;
	}
	if (g_pairs > 1) {
		uint64_t mq = (1ull << F_NET_MQ) | (1ull << F_NET_CTRL_VQ);
		offered = offered && (v.offered & mq) == mq;
		wanted |= mq;
	}
	if (g_mrg) {
		offered = offered && has_feature(v.offered, F_NET_MRG_RXBUF);
		wanted |= 1ull << F_NET_MRG_RXBUF;
	}
	if (cmdline_is("bench", "rx")) {
		/* Like Linux's virtio_net: notify RX only when the device asks (avail_event). */
		offered = offered && has_feature(v.offered, F_EVENT_IDX);
		wanted |= 1ull << F_EVENT_IDX;
	}
	uint8_t s = vp_negotiate(vp, wanted);
	probe_check("vnet_features_ok", offered && s == (S_ACK | S_DRIVER | S_FEATURES_OK),
		    "offered 0x%llx, status 0x%x",
		    v.offered, s);
	if (!(s & S_FEATURES_OK))
		return;

	for (int i = 0; i < 6; i++)
		v.mac[i] = mmio_read8(vp->device + i);
	uint16_t status = mmio_read16(vp->device + 6);
	probe_info("vnet_mac", "%02x:%02x:%02x:%02x:%02x:%02x", v.mac[0], v.mac[1], v.mac[2], v.mac[3], v.mac[4],
		   v.mac[5]);
	char text[32];
	uint8_t want[6];
	if (cmdline_get("expect_mac", text, sizeof(text)))
		probe_check("vnet_mac", parse_mac(text, want) && memcmp(want, v.mac, 6) == 0, "MAC differs from %s",
			    text);
	probe_check("vnet_link_up", status & 1, "status 0x%x", status);
	if (g_pairs > 1) {
		uint16_t max_pairs = mmio_read16(vp->device + 8);
		probe_check("vnet_max_pairs", max_pairs == g_pairs, "max_virtqueue_pairs %u, want %u", max_pairs,
			    g_pairs);
	}

	/* Every queue its own vector: q + 1 (0 is the configuration's), read back. */
	vp_write16(vp, C_MSIX, 0);
	uint32_t nq = g_pairs > 1 ? 2 * g_pairs + 1 : 2;
	bool vectors_ok = vp_read16(vp, C_MSIX) == 0;
	for (uint16_t q = 0; q < nq; q++) {
		setup_queue(q, &g_q[q]);
		vp_write16(vp, C_Q_SELECT, q);
		vectors_ok = vectors_ok && vp_read16(vp, C_Q_MSIX) == q + 1;
	}
	probe_check("vnet_msix_vectors", vectors_ok, "a queue's MSI-X vector did not read back as q + 1");
	vp_write8(vp, C_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	s = vp_read8(vp, C_STATUS);
	probe_check("vnet_driver_ok", s == 0xF, "status 0x%x", s);
	if (s != 0xF)
		return;
	if (cmdline_is("bench", "tx") || cmdline_is("bench", "rx")) {
		if (cmdline_is("bench", "tx"))
			bench_tx();
		else
			bench_rx();
		vp_write8(vp, C_STATUS, 0);
		return;
	}
	if (g_pairs > 1)
		check_ctrl();
	for (uint32_t p = 0; p < g_pairs; p++) {
		for (uint16_t i = 0; i < NRX; i++)
			post_rx(p, i);
		kick(&g_q[2 * p]);
	}

	check_tx();
	if (g_pairs > 1)
		check_mq_tx();
	check_rx();
	vp_write8(vp, C_STATUS, 0);
}
