// The fused kernel of a query without a group-by. One thread block of WG threads handles
// one block of BLOCK_ROWS rows of the tile and writes one partial of PART_WORDS words:
// the selected rows, 12 words per statistic, then (NaN, overflow) counts per output.
// Histogram counts go to `hist`, output rows to `out`, packed in row order from the
// block's first row on. The generated parts replace the `//@` lines.

//@DEFS

extern "C" __global__ void __launch_bounds__(WG) fused(const u8* __restrict__ in, u64* __restrict__ part,
                                                      u64* __restrict__ hist, u8* __restrict__ out, u32 rows) {
    const u32 lid = threadIdx.x;
    const u32 r0 = blockIdx.x * BLOCK_ROWS;
    const u32 n = rows - r0 < BLOCK_ROWS ? rows - r0 : BLOCK_ROWS;
    u64* w = part + (u64)blockIdx.x * PART_WORDS;
    __shared__ u32 sh_first[NS];
    __shared__ double sh_pivot[NS];
    __shared__ Acc sh_acc[WG / 32];
    __shared__ u64 sh_sum[WG / 32];
    __shared__ u32 sh_warp[WG / 32];
    for (u32 i = lid; i < NS; i += WG) { sh_first[i] = 0xffffffffu; sh_pivot[i] = 0.0; }
//@HIST_INIT
    __syncthreads();

    // Phase 1: each statistic's pivot is the block's first selected finite value.
//@PIVOT_SEARCH
    __syncthreads();
//@PIVOT_STORE
    __syncthreads();

    // Phase 2: accumulate the selected rows; write the output rows.
    u64 selected = 0;
//@ACC_INIT
    u32 written = 0;
    #pragma unroll 1
    for (u32 k = 0; k < BLOCK_ROWS / WG; k++) {
        const u32 j = k * WG + lid;
        Row row;
        bool sel = false;
        if (j < n) { eval_row(in, r0 + j, row); sel = row.mask; }
        if (sel) {
            selected++;
//@ACCUMULATE
        }
//@OUTPUT
    }
    (void)written;

    // Phase 3: reductions, in a fixed order.
    u64 total = sum_reduce(selected, sh_sum);
    if (lid == 0u) w[0] = total;
//@REDUCE
//@HIST_FLUSH
}
