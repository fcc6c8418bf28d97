/* Test-only C entry points onto an in-process simulated host (platform, sim
 * kernel, one guest stand-in per NIC), for tests/c_api/c_api_test.c. Not part
 * of the library. */
#ifndef KA_TEST_HOST_H
#define KA_TEST_HOST_H

#include <stdint.h>

#include <keepalive/keepalive.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ka_test_host ka_test_host;

/* NICs at 0000:00:04.0, 0000:00:05.0, ...; group of NIC i = its devfn. */
ka_test_host *ka_test_host_new(unsigned nics, int posted_interrupts);
/* The same host served by an in-process keepalive-simd server on
 * socket_path: the VMM connects with ka_connect_sim (ka_test_host_spawn
 * returns NULL in this mode). */
ka_test_host *ka_test_host_new_daemon(const char *socket_path, unsigned nics);
void ka_test_host_free(ka_test_host *h);

/* A new process (a VMM) on the sim kernel: its syscall seam, valid until
 * ka_test_host_exit (the process dies: every fd closes) or ka_test_host_free. */
const struct ka_syscalls *ka_test_host_spawn(ka_test_host *h, const char *name);
void ka_test_host_exit(ka_test_host *h, const struct ka_syscalls *process);

/* Guest RAM: its MAP_DMA vaddr (sim: offset in physical memory) and size. */
uint64_t ka_test_host_ram_vaddr(const ka_test_host *h);
uint64_t ka_test_host_ram_bytes(const ka_test_host *h);

/* The guest stand-in of NIC i: its interrupt eventfd, its driver's probe
 * (ring, buffers, NIC ring registers), and its vCPUs. */
int ka_test_host_guest_eventfd(const ka_test_host *h, unsigned nic);
void ka_test_host_guest_init(ka_test_host *h, unsigned nic);
void ka_test_host_guests_start(ka_test_host *h);
void ka_test_host_guests_pause(ka_test_host *h);
void ka_test_host_guests_resume(ka_test_host *h);
/* Stop traffic and let every guest consume what was written. */
void ka_test_host_drain(ka_test_host *h);
/* Conditions, not durations (a loaded machine deschedules threads for tens
 * of ms): every guest received `more` packets beyond what it had; every
 * device not RUNNING has an interrupt pending. 0, or -ETIMEDOUT. */
int ka_test_host_wait_received(ka_test_host *h, uint64_t more, unsigned timeout_ms);
int ka_test_host_wait_pending(ka_test_host *h, unsigned devices, unsigned timeout_ms);

struct ka_test_nic_stats {
	uint64_t packets, drops, dma_errors, resets;
	uint64_t received, lost_seqs, corrupted;
};
void ka_test_host_get_nic_stats(ka_test_host *h, unsigned nic, struct ka_test_nic_stats *out);
struct ka_test_host_stats {
	uint64_t dma_faults, ir_faults, irq_no_cpu;
	uint64_t preserved_drained, spurious, device_resets;
	uint32_t devices_not_running; /* control node: VFIO_KEEPALIVE_LIST_DEVICES */
	uint32_t devices_ownerless;
};
void ka_test_host_get_stats(ka_test_host *h, struct ka_test_host_stats *out);


#ifdef __cplusplus
}
#endif

#endif
