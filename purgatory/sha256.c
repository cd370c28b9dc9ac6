/* SHA-256 (FIPS 180-4).
 *
 * Written for two hosts: the purgatory (freestanding, no SSE, runs before any
 * kernel, also under unicorn in the tests, where every instruction costs) and
 * the build host (compiled into a shared library the tests compare against
 * Python's hashlib).  So: no library calls, no loops that gcc would turn into
 * memset/memcpy calls, and a fully unrolled compression function: the
 * working variables change roles instead of moving, and every index is a
 * constant, which roughly halves the instructions per byte.
 */
#include "sha256.h"

static const uint32_t k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline uint32_t ror(uint32_t x, unsigned n)
{
	return (x >> n) | (x << (32 - n));
}

static inline uint32_t load_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

#define S0(x) (ror(x, 2) ^ ror(x, 13) ^ ror(x, 22))
#define S1(x) (ror(x, 6) ^ ror(x, 11) ^ ror(x, 25))
#define s0(x) (ror(x, 7) ^ ror(x, 18) ^ ((x) >> 3))
#define s1(x) (ror(x, 17) ^ ror(x, 19) ^ ((x) >> 10))
#define CH(e, f, g) ((g) ^ ((e) & ((f) ^ (g))))
#define MAJ(a, b, c) (((a) & (b)) | ((c) & ((a) | (b))))

/* One round; the caller rotates the roles of a..h instead of moving values. */
#define ROUND(a, b, c, d, e, f, g, h, i)                                      \
	do {                                                                  \
		uint32_t t1 = (h) + S1(e) + CH(e, f, g) + k[i] + w[(i) & 15]; \
		(d) += t1;                                                    \
		(h) = t1 + S0(a) + MAJ(a, b, c);                              \
	} while (0)

/* Message schedule kept as a 16-word ring: w[i & 15] becomes W[i]. */
#define EXTEND(i)                                                              \
	(w[(i) & 15] += s1(w[((i) - 2) & 15]) + w[((i) - 7) & 15] + s0(w[((i) - 15) & 15]))

static void compress(uint32_t state[8], const uint8_t *p)
{
	uint32_t w[16];
	uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
	uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
	unsigned i;

	/* Fully unrolled: every w[] index and k[] entry becomes a constant. */
#pragma GCC unroll 16
	for (i = 0; i < 16; i++)
		w[i] = load_be32(p + 4 * i);
#pragma GCC unroll 8
	for (i = 0; i < 64; i += 8) {
		if (i >= 16) {
			EXTEND(i + 0); EXTEND(i + 1); EXTEND(i + 2); EXTEND(i + 3);
			EXTEND(i + 4); EXTEND(i + 5); EXTEND(i + 6); EXTEND(i + 7);
		}
		ROUND(a, b, c, d, e, f, g, h, i + 0);
		ROUND(h, a, b, c, d, e, f, g, i + 1);
		ROUND(g, h, a, b, c, d, e, f, i + 2);
		ROUND(f, g, h, a, b, c, d, e, i + 3);
		ROUND(e, f, g, h, a, b, c, d, i + 4);
		ROUND(d, e, f, g, h, a, b, c, i + 5);
		ROUND(c, d, e, f, g, h, a, b, i + 6);
		ROUND(b, c, d, e, f, g, h, a, i + 7);
	}
	state[0] += a; state[1] += b; state[2] += c; state[3] += d;
	state[4] += e; state[5] += f; state[6] += g; state[7] += h;
}

void sha256_init(struct sha256_ctx *ctx)
{
	static const uint32_t h0[8] = {
		0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
	};
	unsigned i;

	for (i = 0; i < 8; i++)
		ctx->state[i] = h0[i];
	ctx->length = 0;
	ctx->fill = 0;
}

void sha256_update(struct sha256_ctx *ctx, const void *data, size_t len)
{
	const uint8_t *p = data;

	ctx->length += len;
	if (ctx->fill) {
		while (len && ctx->fill < SHA256_BLOCK_SIZE) {
			ctx->block[ctx->fill++] = *p++;
			len--;
		}
		if (ctx->fill < SHA256_BLOCK_SIZE)
			return;
		compress(ctx->state, ctx->block);
		ctx->fill = 0;
	}
	/* Whole blocks straight from the input: no copy on the hot path. */
	for (; len >= SHA256_BLOCK_SIZE; p += SHA256_BLOCK_SIZE, len -= SHA256_BLOCK_SIZE)
		compress(ctx->state, p);
	while (len--)
		ctx->block[ctx->fill++] = *p++;
}

void sha256_final(struct sha256_ctx *ctx, uint8_t digest[SHA256_DIGEST_SIZE])
{
	uint64_t bits = ctx->length * 8;
	unsigned i;

	ctx->block[ctx->fill++] = 0x80;
	if (ctx->fill > SHA256_BLOCK_SIZE - 8) {
		while (ctx->fill < SHA256_BLOCK_SIZE)
			ctx->block[ctx->fill++] = 0;
		compress(ctx->state, ctx->block);
		ctx->fill = 0;
	}
	while (ctx->fill < SHA256_BLOCK_SIZE - 8)
		ctx->block[ctx->fill++] = 0;
	for (i = 0; i < 8; i++)
		ctx->block[SHA256_BLOCK_SIZE - 1 - i] = (uint8_t)(bits >> (8 * i));
	compress(ctx->state, ctx->block);
	for (i = 0; i < 32; i++)
		digest[i] = (uint8_t)(ctx->state[i / 4] >> (24 - 8 * (i % 4)));
}
