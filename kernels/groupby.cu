// The group-by kernel. Thread block (u, s) handles unit u (UNIT_ROWS rows of the tile)
// for the WG keys of sweep s: thread t owns slot s * WG + t, key `base + slot`, or with
// KEY_COUNT defined, the slot's key in the table of the column's sorted distinct keys at the
// start of the input buffer (KEY_COUNT i64 values; slots past them own no key). The unit's rows are
// evaluated STAGE at a time into shared memory (STAGE <= WG, smaller when there are many
// statistics, so that the stage fits in shared memory), then every thread scans them in
// row order and
// accumulates the rows of its key, so each key's sums run in row order (its pivot is its
// first finite value). Thread t writes one record of REC_WORDS words: the key's rows, then
// 12 words per statistic. The generated parts replace the `//@` lines.

//@DEFS

extern "C" __global__ void __launch_bounds__(WG) groupby(const u8* __restrict__ in, u64* __restrict__ part, u32 rows,
                                                        i64 base) {
    const u32 lid = threadIdx.x;
    const u32 r0 = blockIdx.x * UNIT_ROWS;
    const u32 n = rows - r0 < UNIT_ROWS ? rows - r0 : UNIT_ROWS;
    const u32 slot = blockIdx.y * WG + lid;
#ifdef KEY_COUNT
    const bool owns = slot < KEY_COUNT;
    const i64 mine = owns ? ((const i64*)in)[slot] : 0;
#else
    const bool owns = true;
    const i64 mine = base + (i64)slot;
#endif
    __shared__ i64 sh_key[STAGE];
    __shared__ u8 sh_sel[STAGE];
//@STAGE_DECL
    u64 grows = 0;
//@ACC_INIT
    #pragma unroll 1
    for (u32 c = 0; c < n; c += STAGE) {
        const u32 j = c + lid;
        bool sel = false;
        if (lid < STAGE && j < n) {
            Row row;
            eval_row(in, r0 + j, row);
            sel = row.mask;
            sh_key[lid] = row.key;
//@STAGE
        }
        if (lid < STAGE) sh_sel[lid] = sel ? 1 : 0;
        __syncthreads();
        const u32 m = n - c < STAGE ? n - c : STAGE;
        for (u32 t = 0; t < m; t++) {
            if (sh_sel[t] != 0 && owns && sh_key[t] == mine) {
                grows++;
//@ACCUMULATE
            }
        }
        __syncthreads();
    }
    u64* w = part + (((u64)blockIdx.y * gridDim.x + blockIdx.x) * WG + lid) * REC_WORDS;
    w[0] = grows;
//@WRITE
}
