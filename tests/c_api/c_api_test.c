/* The C API from C11: a full stage-1 cycle (two NICs streaming while the VMM
 * restarts), first against an in-process simulated host, then against a
 * keepalive-simd server through ka_connect_sim, with the KVM side written in
 * C against the sim's /dev/kvm stand-in (sim_uapi.h). Exit status 0 only
 * when every check holds. */
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <keepalive/keepalive.h>

#include "ka_test_host.h"
#include "nic_regs.h"
#include "sim_uapi.h"

static int failures;

#define CHECK(cond)                                                              \
	do {                                                                     \
		if (!(cond)) {                                                   \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
			++failures;                                              \
		}                                                                \
	} while (0)
#define CHECK_OK(call, s)                                                        \
	do {                                                                     \
		int rc_ = (call);                                                \
		if (rc_ < 0) {                                                   \
			fprintf(stderr, "%s:%d: %s = %s: %s\n", __FILE__, __LINE__, #call, \
				ka_errno_name(rc_), ka_last_error(s));           \
			++failures;                                              \
		}                                                                \
	} while (0)

#define NICS 2u
#define RATE_PPS 5000u

static const char *const tok = "3f2a9c1e-7d44-4b0a-9e21-5c6d7e8f9012";

/* ---- the VMM's KVM side, in C (what QEMU/Cloud Hypervisor would write) ---- */

struct sim_kvm {
	ka_session *s;
	ka_test_host *host;
	int vm;
	int have_pid[2];
	uint32_t pid_id[2];
	unsigned connected, rolled_back;
};

static int kvm_eventfd(void *user, const struct ka_vector_binding *b)
{
	struct sim_kvm *k = user;
	return ka_test_host_guest_eventfd(k->host, b->device_index);
}

static int kvm_connect(void *user, const struct ka_vector_binding *b, int eventfd)
{
	struct sim_kvm *k = user;
	struct ka_sim_irq_bypass req;
	long rc;

	if (b->vcpu >= 2)
		return -EINVAL;
	if (k->vm < 0) {
		k->vm = ka_sys_open(k->s, "/dev/kvm", O_RDWR);
		if (k->vm < 0)
			return k->vm;
	}
	if (!k->have_pid[b->vcpu]) {
		struct ka_sim_pid pid;
		memset(&pid, 0, sizeof pid);
		pid.size = sizeof pid;
		pid.host_apic_id = b->vcpu + 1;
		rc = ka_ioctl(k->s, k->vm, KA_SIM_CREATE_PID, &pid);
		if (rc < 0)
			return (int)rc;
		k->pid_id[b->vcpu] = pid.out_pid_id;
		k->have_pid[b->vcpu] = 1;
	}
	memset(&req, 0, sizeof req);
	req.size = sizeof req;
	req.device_fd = b->device_fd;
	req.msix_index = b->msix_index;
	req.pid_id = k->pid_id[b->vcpu];
	req.guest_vector = b->guest_vector;
	req.irqfd = eventfd;
	rc = ka_ioctl(k->s, k->vm, KA_SIM_IRQ_BYPASS, &req);
	if (rc < 0)
		return (int)rc;
	++k->connected;
	return 0;
}

static void kvm_rolled_back(void *user, const struct ka_vector_binding *connected, size_t n)
{
	struct sim_kvm *k = user;
	(void)connected;
	(void)n;
	if (k->vm >= 0)
		ka_sys_close(k->s, k->vm);
	k->vm = -1;
	k->have_pid[0] = k->have_pid[1] = 0;
	++k->rolled_back;
}

static struct ka_wiring wiring_for(struct sim_kvm *k, ka_session *s, ka_test_host *host)
{
	struct ka_wiring w;
	memset(k, 0, sizeof *k);
	k->s = s;
	k->host = host;
	k->vm = -1;
	w.user = k;
	w.eventfd = kvm_eventfd;
	w.connect = kvm_connect;
	w.rolled_back = kvm_rolled_back;
	return w;
}

/* ---- the VMM ---- */

static void describe_vm(ka_session *s, ka_test_host *host, uint64_t ram_vaddr, uint64_t backing_offset)
{
	struct ka_ram_region ram;
	CHECK(ka_session_add_device(s, "0000:00:04.0", 0x20) == 0);
	CHECK(ka_session_add_device(s, "0000:00:05.0", 0x28) == 1);
	CHECK_OK(ka_session_add_vector(s, 0, 0, 0x40, 0), s);
	CHECK_OK(ka_session_add_vector(s, 1, 0, 0x41, 1), s);
	memset(&ram, 0, sizeof ram);
	ram.gpa = 0;
	ram.iova = 0;
	ram.size = ka_test_host_ram_bytes(host);
	ram.vaddr = ram_vaddr;
	ram.backing = "sim-phys";
	ram.backing_offset = backing_offset;
	CHECK_OK(ka_session_add_ram(s, &ram), s);
	/* Refused descriptions: not a BDF, twice, exception vector. */
	CHECK(ka_session_add_device(s, "00:zz.0", 1) == -EINVAL);
	CHECK(ka_session_add_device(s, "0000:00:04.0", 0x20) == -EINVAL);
	CHECK(ka_session_add_vector(s, 0, 1, 0x0e, 0) == -EINVAL);
	CHECK(strstr(ka_last_error(s), "exception vector") != NULL);
}

/* What the VMM and the guest driver do after a cold open. */
static void program_nic(ka_session *s, ka_test_host *host, unsigned i)
{
	const uint64_t config = (uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40;
	const uint64_t bar0 = (uint64_t)VFIO_PCI_BAR0_REGION_INDEX << 40;
	const int fd = ka_session_device_fd(s, i);
	const uint16_t cmd = 0x6;
	uint64_t v;

	CHECK(fd >= 0);
	CHECK(ka_pwrite(s, fd, &cmd, sizeof cmd, config + 4) == (int64_t)sizeof cmd);
	v = 16;
	CHECK(ka_pwrite(s, fd, &v, sizeof v, bar0 + KA_NIC_IRQ_MOD_PKTS) == 8);
	v = 200;
	CHECK(ka_pwrite(s, fd, &v, sizeof v, bar0 + KA_NIC_IRQ_MOD_USEC) == 8);
	ka_test_host_guest_init(host, i);
	v = RATE_PPS;
	CHECK(ka_pwrite(s, fd, &v, sizeof v, bar0 + KA_NIC_RATE_PPS) == 8);
	v = 0;
	CHECK(ka_pread(s, fd, &v, sizeof v, bar0 + KA_NIC_RATE_PPS) == 8);
	CHECK(v == RATE_PPS);
}

/* A VMM process: a session over the in-process host's process seam, or a
 * connection to the daemon. Guest RAM: its MAP_DMA vaddr in this process. */
struct vmm {
	ka_session *s;
	const struct ka_syscalls *proc; /* in-process mode */
	uint64_t ram_vaddr, backing_offset;
};

static int vmm_start(struct vmm *v, ka_test_host *host, const char *daemon_socket, const char *name)
{
	memset(v, 0, sizeof *v);
	if (!daemon_socket) {
		uint64_t start, bytes;
		v->proc = ka_test_host_spawn(host, name);
		CHECK_OK(ka_session_new(v->proc, &v->s), NULL);
		if (!v->s)
			return -1;
		CHECK(ka_sim_guest_area(v->s, &start, &bytes) == -EINVAL); /* not a sim session */
		v->ram_vaddr = ka_test_host_ram_vaddr(host);
		v->backing_offset = v->ram_vaddr;
	} else {
		uint64_t start = 0, bytes = 0;
		void *map = NULL;
		CHECK_OK(ka_connect_sim(daemon_socket, &v->s), NULL);
		if (!v->s)
			return -1;
		CHECK_OK(ka_sim_guest_area(v->s, &start, &bytes), v->s);
		CHECK(bytes >= ka_test_host_ram_bytes(host));
		CHECK(start == ka_test_host_ram_vaddr(host)); /* the host's view: a memfd offset */
		CHECK_OK(ka_sim_map_phys(v->s, start, ka_test_host_ram_bytes(host), &map), v->s);
		v->ram_vaddr = (uint64_t)(uintptr_t)map;
		v->backing_offset = start;
	}
	return 0;
}

/* The process exits: every fd it still had closes. */
static void vmm_exit(struct vmm *v, ka_test_host *host)
{
	ka_session_free(v->s);
	v->s = NULL;
	if (v->proc)
		ka_test_host_exit(host, v->proc);
}

static void cycle(const char *daemon_socket)
{
	ka_test_host *host = daemon_socket ? ka_test_host_new_daemon(daemon_socket, NICS) : ka_test_host_new(NICS, 1);
	struct vmm a, b;
	ka_snapshot *snap = NULL, *back = NULL, *piped = NULL;
	struct sim_kvm kvm_a, kvm_b;
	struct ka_wiring w_a, w_b;
	struct ka_test_host_stats hs;
	struct ka_test_nic_stats ns;
	unsigned char buf[4096];
	size_t len = 0, n = 0, i;
	char text[KA_TOKEN_STRLEN];
	int p[2];

	printf("c_api: %s\n", daemon_socket ? "over keepalive-simd (ka_connect_sim)" : "in-process sim host");
	if (!host) {
		fprintf(stderr, "no sim host\n");
		++failures;
		return;
	}

	/* VMM A: cold start. */
	if (vmm_start(&a, host, daemon_socket, "vmm-a") < 0) {
		ka_test_host_free(host);
		return;
	}
	CHECK(ka_session_phase(a.s) == KA_PHASE_IDLE);
	CHECK(ka_session_thaw(a.s) == -EBUSY);
	CHECK(strstr(ka_last_error(a.s), "session is idle: thaw not allowed") != NULL);
	describe_vm(a.s, host, a.ram_vaddr, a.backing_offset);
	w_a = wiring_for(&kvm_a, a.s, host);
	CHECK_OK(ka_session_open(a.s, &w_a), a.s);
	CHECK(ka_session_phase(a.s) == KA_PHASE_RUNNING);
	CHECK(kvm_a.connected == NICS);
	for (i = 0; i < NICS; ++i)
		program_nic(a.s, host, (unsigned)i);
	ka_test_host_guests_start(host);
	CHECK(ka_test_host_wait_received(host, 200, 5000) == 0);

	/* Freeze: vCPUs paused, their state handed to the snapshot. */
	ka_test_host_guests_pause(host);
	{
		static const unsigned char regs0[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
		static const unsigned char lapic1[] = {0xfe, 0xe0};
		static const char extra[] = "c-vmm-devices";
		const struct ka_vcpu_blob blobs[] = {
			{0, 1, regs0, sizeof regs0},
			{1, 4, lapic1, sizeof lapic1},
		};
		struct ka_vmm_state st;
		memset(&st, 0, sizeof st);
		st.nr_vcpus = 2;
		st.blobs = blobs;
		st.nr_blobs = 2;
		st.extra = extra;
		st.extra_len = sizeof extra;
		CHECK(ka_session_freeze(a.s, "not-a-uuid", &st, 0, &snap) == -EINVAL);
		CHECK(ka_session_freeze(a.s, tok, &st, 0x80, &snap) == -EINVAL);
		CHECK_OK(ka_session_freeze(a.s, tok, &st, 0, &snap), a.s);
	}
	CHECK(ka_session_phase(a.s) == KA_PHASE_FROZEN);
	if (!snap) {
		vmm_exit(&a, host);
		ka_test_host_free(host);
		return;
	}

	/* The state file: size query, then encode; also through a pipe. */
	CHECK(ka_snapshot_encode(snap, NULL, 0, &len) == -EOVERFLOW);
	CHECK(len > 96 && len <= sizeof buf);
	CHECK_OK(ka_snapshot_encode(snap, buf, sizeof buf, &len), NULL);
	CHECK(pipe(p) == 0);
	CHECK_OK(ka_snapshot_write_fd(snap, p[1]), NULL);
	close(p[1]);
	CHECK_OK(ka_snapshot_read_fd(p[0], &piped), NULL);
	close(p[0]);

	CHECK_OK(ka_session_hand_over(a.s), a.s);
	CHECK(ka_session_phase(a.s) == KA_PHASE_HANDED_OVER);
	CHECK(ka_session_open(a.s, &w_a) == -EBUSY);
	ka_snapshot_free(snap);
	vmm_exit(&a, host);
	/* Nobody owns the NICs: they stream on; their interrupts wait in the PIRs. */
	CHECK(ka_test_host_wait_pending(host, NICS, 5000) == 0);
	ka_test_host_get_stats(host, &hs);
	CHECK(hs.devices_ownerless == NICS);

	/* VMM B: read the state file back. A corrupt one is refused with the reason. */
	buf[len - 9] ^= 0x20;
	CHECK(ka_snapshot_decode(buf, len, &back) == -EPROTO);
	CHECK(strstr(ka_last_error(NULL), "checksum") != NULL);
	buf[len - 9] ^= 0x20;
	CHECK_OK(ka_snapshot_decode(buf, len, &back), NULL);
	if (!back) {
		ka_snapshot_free(piped);
		ka_test_host_free(host);
		return;
	}
	CHECK_OK(ka_snapshot_token(back, text), NULL);
	CHECK(strcmp(text, tok) == 0);
	CHECK(ka_snapshot_nr_vcpus(back) == 2);
	CHECK(ka_snapshot_nr_devices(back) == NICS);
	CHECK(ka_snapshot_nr_ram(back) == 1);
	{
		struct ka_device_info d;
		struct ka_vector_info v;
		struct ka_ram_region r;
		const void *data;
		size_t dlen;
		CHECK_OK(ka_snapshot_device(back, 1, &d), NULL);
		CHECK(d.bdf == 0x28 && d.iommu_group == 0x28 && d.irq_mode == 1 && d.nr_vectors == 1);
		CHECK_OK(ka_snapshot_vector(back, 1, 0, &v), NULL);
		CHECK(v.msix_index == 0 && v.guest_vector == 0x41 && v.vcpu == 1);
		CHECK(ka_snapshot_vector(back, 1, 1, &v) == -EINVAL);
		CHECK_OK(ka_snapshot_ram(back, 0, &r), NULL);
		CHECK(r.size == ka_test_host_ram_bytes(host) && strcmp(r.backing, "sim-phys") == 0);
		CHECK(r.vaddr == a.ram_vaddr);
		CHECK_OK(ka_snapshot_vcpu_state(back, 1, 4, &data, &dlen), NULL);
		CHECK(dlen == 2 && ((const unsigned char *)data)[0] == 0xfe);
		CHECK(ka_snapshot_vcpu_state(back, 0, 4, &data, &dlen) == -ENOENT);
		CHECK_OK(ka_snapshot_extra(back, &data, &dlen), NULL);
		CHECK(dlen == sizeof "c-vmm-devices" && strcmp(data, "c-vmm-devices") == 0);
	}
	CHECK(strstr(ka_snapshot_describe(back), "device 0000:00:05.0 group 40 irq posted vectors 1") != NULL);
	CHECK(strcmp(ka_snapshot_describe(piped), ka_snapshot_describe(back)) == 0);

	if (vmm_start(&b, host, daemon_socket, "vmm-b") < 0) {
		ka_snapshot_free(back);
		ka_snapshot_free(piped);
		ka_test_host_free(host);
		return;
	}
	/* The new process maps guest RAM again: MAP_DMA must use its own address. */
	CHECK_OK(ka_snapshot_set_ram_vaddr(back, 0, b.ram_vaddr), NULL);
	w_b = wiring_for(&kvm_b, b.s, host);
	CHECK_OK(ka_session_reclaim(b.s, back, &w_b), b.s);
	CHECK(ka_session_phase(b.s) == KA_PHASE_RUNNING);
	CHECK(kvm_b.connected == NICS);
	CHECK(kvm_b.rolled_back == 0);
	ka_test_host_get_stats(host, &hs);
	CHECK(hs.devices_not_running == 0);

	/* The timeline of the reclaim, for the downtime harness. */
	CHECK(ka_session_timeline(b.s, NULL, 0, &n) == -EOVERFLOW);
	CHECK(n == 1 + NICS + 1 + 2 * NICS + NICS + 1);
	{
		struct ka_mark marks[32];
		CHECK_OK(ka_session_timeline(b.s, marks, 32, &n), b.s);
		CHECK(strcmp(ka_mark_name(marks[0].kind), "reclaim_begin") == 0);
		CHECK(marks[0].device == UINT32_MAX);
		CHECK(strcmp(ka_mark_name(marks[1].kind), "reclaim_open") == 0 && marks[1].device == 0);
		CHECK(strcmp(ka_mark_name(marks[n - 1].kind), "reclaim_end") == 0);
		for (i = 1; i < n; ++i)
			CHECK(marks[i].ns >= marks[i - 1].ns);
	}

	ka_test_host_guests_resume(host);
	CHECK(ka_test_host_wait_received(host, 200, 5000) == 0);
	ka_test_host_drain(host);
	for (i = 0; i < NICS; ++i) {
		ka_test_host_get_nic_stats(host, (unsigned)i, &ns);
		CHECK(ns.packets > 0);
		CHECK(ns.received == ns.packets);
		CHECK(ns.lost_seqs == 0);
		CHECK(ns.corrupted == 0);
		CHECK(ns.drops == 0);
		CHECK(ns.dma_errors == 0);
		CHECK(ns.resets == 1);
	}
	ka_test_host_get_stats(host, &hs);
	CHECK(hs.dma_faults == 0);
	CHECK(hs.ir_faults == 0);
	CHECK(hs.irq_no_cpu == 0);
	CHECK(hs.spurious == 0);
	CHECK(hs.preserved_drained == NICS);
	CHECK(hs.device_resets == NICS);

	ka_snapshot_free(back);
	ka_snapshot_free(piped);
	vmm_exit(&b, host);
	ka_test_host_free(host);
}

/* The close-first order in C: freeze without the vCPU state, hand over (the
 * NICs are OWNERLESS), then the state; a failure after the close calls the
 * restart off into the same VM. In-process host. */
static void close_first_cycle(void)
{
	ka_test_host *host = ka_test_host_new(NICS, 1);
	struct vmm a, b;
	ka_snapshot *snap = NULL, *back = NULL;
	struct sim_kvm kvm_a, kvm_b;
	struct ka_wiring w_a, w_b;
	struct ka_test_host_stats hs;
	unsigned char buf[4096];
	size_t len = 0;
	static const unsigned char regs0[] = {1, 2, 3, 4};
	const struct ka_vcpu_blob blobs[] = {{0, 1, regs0, sizeof regs0}};
	struct ka_vmm_state st;

	printf("c_api: close-first order\n");
	if (!host || vmm_start(&a, host, NULL, "vmm-a") < 0) {
		++failures;
		if (host)
			ka_test_host_free(host);
		return;
	}
	memset(&st, 0, sizeof st);
	st.nr_vcpus = 2;
	st.blobs = blobs;
	st.nr_blobs = 1;
	describe_vm(a.s, host, a.ram_vaddr, a.backing_offset);
	w_a = wiring_for(&kvm_a, a.s, host);
	CHECK_OK(ka_session_open(a.s, &w_a), a.s);
	CHECK(ka_session_call_off(a.s, &w_a) == -EBUSY);
	for (unsigned i = 0; i < NICS; ++i)
		program_nic(a.s, host, i);
	ka_test_host_guests_start(host);
	CHECK(ka_test_host_wait_received(host, 200, 5000) == 0);
	ka_test_host_guests_pause(host);

	/* A failure after the close: the restart is called off. */
	CHECK_OK(ka_session_freeze(a.s, tok, NULL, 0, &snap), a.s);
	CHECK(snap != NULL && ka_snapshot_nr_vcpus(snap) == 0);
	CHECK(ka_snapshot_encode(snap, buf, sizeof buf, &len) == -EINVAL); /* no vCPU state yet */
	CHECK_OK(ka_session_hand_over(a.s), a.s);
	CHECK(ka_test_host_wait_pending(host, NICS, 5000) == 0);
	CHECK_OK(ka_session_call_off(a.s, &w_a), a.s);
	CHECK(ka_session_phase(a.s) == KA_PHASE_RUNNING);
	CHECK(kvm_a.rolled_back == 1 && kvm_a.connected == 2 * NICS);
	ka_test_host_get_stats(host, &hs);
	CHECK(hs.devices_not_running == 0);
	CHECK(hs.preserved_drained == NICS);
	ka_snapshot_free(snap);
	snap = NULL;

	/* The real restart. */
	CHECK_OK(ka_session_freeze(a.s, tok, NULL, 0, &snap), a.s);
	CHECK_OK(ka_session_hand_over(a.s), a.s);
	if (!snap) {
		vmm_exit(&a, host);
		ka_test_host_free(host);
		return;
	}
	CHECK(ka_snapshot_add_vmm_state(snap, NULL) == -EINVAL);
	st.nr_vcpus = 0;
	CHECK(ka_snapshot_add_vmm_state(snap, &st) == -EINVAL);
	st.nr_vcpus = 2;
	CHECK_OK(ka_snapshot_add_vmm_state(snap, &st), NULL);
	CHECK(ka_snapshot_nr_vcpus(snap) == 2);
	CHECK_OK(ka_snapshot_encode(snap, buf, sizeof buf, &len), NULL);
	ka_snapshot_free(snap);
	vmm_exit(&a, host);
	CHECK(ka_test_host_wait_pending(host, NICS, 5000) == 0);

	CHECK_OK(ka_snapshot_decode(buf, len, &back), NULL);
	if (!back || vmm_start(&b, host, NULL, "vmm-b") < 0) {
		ka_snapshot_free(back);
		ka_test_host_free(host);
		return;
	}
	w_b = wiring_for(&kvm_b, b.s, host);
	CHECK_OK(ka_session_reclaim(b.s, back, &w_b), b.s);
	CHECK(ka_session_phase(b.s) == KA_PHASE_RUNNING);
	ka_test_host_guests_resume(host);
	CHECK(ka_test_host_wait_received(host, 200, 5000) == 0);
	ka_test_host_drain(host);
	ka_test_host_get_stats(host, &hs);
	CHECK(hs.dma_faults == 0 && hs.ir_faults == 0 && hs.irq_no_cpu == 0 && hs.spurious == 0);
	CHECK(hs.preserved_drained == 2 * NICS);
	CHECK(hs.device_resets == NICS);
	for (unsigned i = 0; i < NICS; ++i) {
		struct ka_test_nic_stats ns;
		ka_test_host_get_nic_stats(host, i, &ns);
		CHECK(ns.packets > 0 && ns.received == ns.packets && ns.lost_seqs == 0 && ns.drops == 0);
	}
	ka_snapshot_free(back);
	vmm_exit(&b, host);
	ka_test_host_free(host);
}

int main(void)
{
	char socket_path[64];
	char text[KA_TOKEN_STRLEN];

	CHECK(strcmp(ka_errno_name(-EACCES), "EACCES") == 0);
	CHECK(strcmp(ka_errno_name(EPROTO), "EPROTO") == 0);
	CHECK(ka_token_generate(text) == 0 && strlen(text) == 36 && text[14] == '4');
	CHECK(ka_connect_sim("/nonexistent/keepalive-simd.sock", NULL) == -EINVAL);
	{
		ka_session *none = NULL;
		CHECK(ka_connect_sim("/nonexistent/keepalive-simd.sock", &none) < 0 && none == NULL);
		CHECK(strlen(ka_last_error(NULL)) > 0);
	}

	cycle(NULL);
	close_first_cycle();
	snprintf(socket_path, sizeof socket_path, "/tmp/ka-c-api-%ld.sock", (long)getpid());
	cycle(socket_path);

	if (failures)
		fprintf(stderr, "%d check(s) failed\n", failures);
	else
		printf("c_api: stage-1 cycles through the C API: all checks passed\n");
	return failures ? 1 : 0;
}
