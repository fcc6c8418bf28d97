/* SPDX-License-Identifier: MIT */
/*
 * Packet verification for the emulated guest, where every instruction counts
 * (kvm-pvm runs guest code through KVM's instruction emulator). Shared with the
 * host tests, which prove it equivalent to ka_nic_payload_byte/ka_nic_checksum.
 *
 * ka_nic_payload_byte(seq, i) = (u8)(seq * 131 + 7i + 1) depends on seq only
 * modulo 256, so the expected payload of every packet is one of 256 rows built
 * once at boot. The checksum is a Fletcher-style sum started from
 * a0 = (u32)seq ^ 0x9e3779b9, b0 = (u32)(seq >> 32): after n bytes
 * a = a0 + S and b = b0 + n*a0 + T, with S the byte sum and T the sum of the
 * prefix sums of the payload, both functions of the row only. A packet is good
 * iff its payload equals the row (compared 8 bytes at a time) and its checksum
 * equals ((b0 + n*a0 + T) << 16) ^ (a0 + S).
 *
 * Table layout (mv_tables_bytes(n) bytes, 8-byte aligned):
 *   [0, 256*n)           row k = expected payload for seq mod 256 == k
 *   [256*n, 256*n+2048)  per row: u32 S, u32 T
 */
#ifndef MINIVMM_VERIFY_H
#define MINIVMM_VERIFY_H

#include "nic_regs.h"

#define MV_CHECKSUM_SEED 0x9e3779b9u

static inline KA_U64 mv_tables_bytes(KA_U32 n) { return 256ull * n + 256ull * 8u; }

static inline void mv_tables_build(KA_U8 *tables, KA_U32 n)
{
	KA_U32 *sums = (KA_U32 *)(void *)(tables + 256ull * n);
	for (KA_U32 k = 0; k < 256; k++) {
		KA_U8 *row = tables + (KA_U64)k * n;
		KA_U32 s = 0, t = 0;
		for (KA_U32 i = 0; i < n; i++) {
			row[i] = ka_nic_payload_byte(k, i);
			s += row[i];
			t += s;
		}
		sums[2 * k] = s;
		sums[2 * k + 1] = t;
	}
}

static inline int mv_verify_tables(const KA_U8 *tables, KA_U32 n, KA_U64 seq, KA_U32 checksum,
				   const KA_U8 *payload)
{
	const KA_U32 k = (KA_U32)(seq & 255u);
	const KA_U8 *row = tables + (KA_U64)k * n;
	KA_U64 diff = 0;
	for (KA_U32 off = 0; off < n; off += 8) {
		KA_U64 got, want;
		__builtin_memcpy(&got, payload + off, 8);
		__builtin_memcpy(&want, row + off, 8);
		diff |= got ^ want;
	}
	const KA_U32 *sums = (const KA_U32 *)(const void *)(tables + 256ull * n);
	const KA_U32 a0 = (KA_U32)seq ^ MV_CHECKSUM_SEED, b0 = (KA_U32)(seq >> 32);
	const KA_U32 expect = ((b0 + n * a0 + sums[2 * k + 1]) << 16) ^ (a0 + sums[2 * k]);
	return diff == 0 && checksum == expect;
}

static inline int mv_verify_reference(KA_U32 n, KA_U64 seq, KA_U32 checksum, const KA_U8 *payload)
{
	for (KA_U32 i = 0; i < n; i++)
		if (payload[i] != ka_nic_payload_byte(seq, i))
			return 0;
	return ka_nic_checksum(seq, payload, n) == checksum;
}

#endif /* MINIVMM_VERIFY_H */
