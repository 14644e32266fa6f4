/* The quantized matmul's framework: the type table, the activation quantizers of
 * Q8_0, Q8_1 and I8 (ggml's numerics), dequantized rows, and `llmcore_qmatmul`, which
 * quantizes the activations once per call and runs a type's tile function over
 * 4-row x 4-token tiles on the OpenMP threads.
 *
 * Invariant (bit stability): every output (token, row) is computed by one tile call
 * whose arithmetic for it does not depend on the tile's shape, so the tiling, the
 * number of tokens and the thread count change no bit of the result.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "quant_layout.h"
#include "vec.h"

/* The K-quant plug-ins: weak, so that a library without quant_k.c links and loads,
   and their table rows then read NULL (no support). */
#pragma weak llmcore_qact_q8_k
#pragma weak llmcore_qact_q8_k_row_bytes
#pragma weak llmcore_qtile_q4_k
#pragma weak llmcore_qtile_q5_k
#pragma weak llmcore_qtile_q6_k
#pragma weak llmcore_qdequant_q4_k
#pragma weak llmcore_qdequant_q5_k
#pragma weak llmcore_qdequant_q6_k

/* ---- activation quantizers ---------------------------------------------------- */

/* roundf lane-wise (halves away from zero), for |p| < 2^31: truncate, then step away
   from zero where the (exact) remainder is at least one half. */
static inline vi round_away(vf p) {
    const vi t = __builtin_convertvector(p, vi);
    const vf f = p - __builtin_convertvector(t, vf);
    return t - (vi)(f >= splat(0.5f)) + (vi)(f <= splat(-0.5f));
}

static inline vf vabs(vf v) { return (vf)((vi)v & 0x7FFFFFFF); }
static inline vf vmax(vf a, vf b) { return vselect(a > b, a, b); }
static inline float hmax(vf v) {
    float m = v[0];
    for (int i = 1; i < W; i++) m = m > v[i] ? m : v[i];
    return m;
}

/* One 32-value block as ggml's quantize_row_q8_0_ref / _q8_1_ref: d = amax / 127
   rounded to fp16 (returned), q = roundf(x / (amax / 127)); *sum = sum of q. */
static inline float quant_block32(const float *x, int8_t *q, int32_t *sum) {
    const vf x0 = load(x), x1 = load(x + W);
    const float amax = hmax(vmax(vabs(x0), vabs(x1)));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const vi q0 = round_away(x0 * id), q1 = round_away(x1 * id);
    int32_t s = 0;
    for (int i = 0; i < W; i++) {
        q[i] = (int8_t)q0[i];
        q[W + i] = (int8_t)q1[i];
        s += q0[i] + q1[i];
    }
    *sum = s;
    return d;
}

static int64_t act_q8_0_bytes(int64_t cols) { return qround64(cols + 4 * (cols / QK)); }
static int64_t act_q8_1_bytes(int64_t cols) { return qround64(cols + 8 * (cols / QK)); }
static int64_t act_i8_bytes(int64_t cols) { return QA_I8_HEAD + qround64(cols); }

static void act_q8_0(const float *x, int64_t cols, uint8_t *a) {
    float *d = (float *)(a + cols);
    for (int64_t b = 0; b < cols / QK; b++) {
        int32_t sum;
        d[b] = qround_f16(quant_block32(x + b * QK, (int8_t *)a + b * QK, &sum));
    }
}

/* Q8_1: also s = fp16(sum q * d), with d before its rounding to fp16 (as ggml). */
static void act_q8_1(const float *x, int64_t cols, uint8_t *a) {
    const int64_t nb = cols / QK;
    float *d = (float *)(a + cols), *s = d + nb;
    for (int64_t b = 0; b < nb; b++) {
        int32_t sum;
        const float db = quant_block32(x + b * QK, (int8_t *)a + b * QK, &sum);
        d[b] = qround_f16(db);
        s[b] = qround_f16((float)sum * db);
    }
}

/* I8 (per token): scale = amax / 127 (float32), q = roundf(x / scale), and sum q. */
static void act_i8(const float *x, int64_t cols, uint8_t *a) {
    vf m = splat(0.0f);
    int64_t c = 0;
    for (; c + W <= cols; c += W) m = vmax(m, vabs(load(x + c)));
    float amax = hmax(m);
    for (; c < cols; c++) {
        const float v = x[c] < 0 ? -x[c] : x[c];
        amax = amax > v ? amax : v;
    }
    const float scale = amax / 127.0f;
    const float id = scale != 0.0f ? 1.0f / scale : 0.0f;
    int8_t *q = (int8_t *)(a + QA_I8_HEAD);
    int32_t sum = 0;
    for (c = 0; c + W <= cols; c += W) {
        const vi v = round_away(load(x + c) * id);
        for (int i = 0; i < W; i++) {
            q[c + i] = (int8_t)v[i];
            sum += v[i];
        }
    }
    for (; c < cols; c++) {
        const vi v = round_away(splat(x[c] * id));
        q[c] = (int8_t)v[0];
        sum += v[0];
    }
    memcpy(a, &scale, sizeof scale);
    memcpy(a + 4, &sum, sizeof sum);
}

int llmcore_qquantize_act(int64_t kind, const float *x, int64_t cols, int8_t *q, float *d,
                          float *s) {
    if (kind == LLMCORE_I8_ROW) {
        uint8_t *a = malloc((size_t)act_i8_bytes(cols));
        if (!a) return 2;
        act_i8(x, cols, a);
        memcpy(q, a + QA_I8_HEAD, (size_t)cols);
        d[0] = qload_f32(a);
        free(a);
        return 0;
    }
    if ((kind != LLMCORE_Q8_0 && kind != LLMCORE_Q4_1) || cols % QK) return 1;
    for (int64_t b = 0; b < cols / QK; b++) {
        int32_t sum;
        const float db = quant_block32(x + b * QK, q + b * QK, &sum);
        d[b] = qround_f16(db);
        if (kind == LLMCORE_Q4_1) s[b] = qround_f16((float)sum * db);
    }
    return 0;
}

/* ---- dequantization (as ggml's dequantize_row_*) ------------------------------ */

static void dequant_q4_0(const uint8_t *row, int64_t cols, float *out) {
    for (int64_t b = 0; b < cols / QK; b++, row += 18, out += QK) {
        const float d = qf16_to_f32(row);
        for (int j = 0; j < 16; j++) {
            out[j] = (float)((row[2 + j] & 0x0F) - 8) * d;
            out[j + 16] = (float)((row[2 + j] >> 4) - 8) * d;
        }
    }
}

static void dequant_q4_1(const uint8_t *row, int64_t cols, float *out) {
    for (int64_t b = 0; b < cols / QK; b++, row += 20, out += QK) {
        const float d = qf16_to_f32(row), m = qf16_to_f32(row + 2);
        for (int j = 0; j < 16; j++) {
            out[j] = (float)(row[4 + j] & 0x0F) * d + m;
            out[j + 16] = (float)(row[4 + j] >> 4) * d + m;
        }
    }
}

static void dequant_q8_0(const uint8_t *row, int64_t cols, float *out) {
    for (int64_t b = 0; b < cols / QK; b++, row += 34, out += QK) {
        const float d = qf16_to_f32(row);
        for (int j = 0; j < QK; j++) out[j] = (float)(int8_t)row[2 + j] * d;
    }
}

static void dequant_i8_row(const uint8_t *row, int64_t cols, float *out) {
    const float scale = qload_f32(row + cols);
    for (int64_t c = 0; c < cols; c++) out[c] = (float)(int8_t)row[c] * scale;
}

/* ---- the type table ----------------------------------------------------------- */

static const llmcore_qtype_info TABLE[] = {
    {LLMCORE_Q4_0, QK, 18, 0, act_q8_0, act_q8_0_bytes, llmcore_qtile_q4_0, dequant_q4_0,
     QTILE_TOKENS},
    {LLMCORE_Q4_1, QK, 20, 0, act_q8_1, act_q8_1_bytes, llmcore_qtile_q4_1, dequant_q4_1,
     QTILE_TOKENS},
    {LLMCORE_Q8_0, QK, 34, 0, act_q8_0, act_q8_0_bytes, llmcore_qtile_q8_0, dequant_q8_0,
     QTILE_TOKENS},
    {LLMCORE_Q4_K, 256, 144, 0, llmcore_qact_q8_k, llmcore_qact_q8_k_row_bytes,
     llmcore_qtile_q4_k, llmcore_qdequant_q4_k},
    {LLMCORE_Q5_K, 256, 176, 0, llmcore_qact_q8_k, llmcore_qact_q8_k_row_bytes,
     llmcore_qtile_q5_k, llmcore_qdequant_q5_k},
    {LLMCORE_Q6_K, 256, 210, 0, llmcore_qact_q8_k, llmcore_qact_q8_k_row_bytes,
     llmcore_qtile_q6_k, llmcore_qdequant_q6_k},
    {LLMCORE_I8_ROW, 1, 1, 4, act_i8, act_i8_bytes, llmcore_qtile_i8_row, dequant_i8_row,
     QTILE_TOKENS},
};

const llmcore_qtype_info *llmcore_qtype_find(int64_t type) {
    for (size_t i = 0; i < sizeof TABLE / sizeof TABLE[0]; i++)
        if (TABLE[i].type == type) return &TABLE[i];
    return NULL;
}

static int has_matmul(const llmcore_qtype_info *info) {
    return info && info->act && info->act_bytes && info->tile;
}

int llmcore_qtype_support(int64_t type) {
    const llmcore_qtype_info *info = llmcore_qtype_find(type);
    return (has_matmul(info) ? 1 : 0) | (info && info->dequant ? 2 : 0);
}

/* ---- the reused activation buffer --------------------------------------------- */

/* One buffer per calling thread, grown when a call needs more and freed when the
   thread exits: concurrent callers never share it, and a steady decode allocates
   nothing. */
static pthread_key_t buffer_key;
static pthread_once_t buffer_once = PTHREAD_ONCE_INIT;
static __thread uint8_t *buffer;
static __thread size_t buffer_bytes;

static void buffer_key_make(void) { pthread_key_create(&buffer_key, free); }

static uint8_t *act_buffer(size_t bytes) {
    if (bytes <= buffer_bytes) return buffer;
    pthread_once(&buffer_once, buffer_key_make);
    size_t cap = buffer_bytes * 2 > bytes ? buffer_bytes * 2 : bytes;
    cap = (cap + 63) & ~(size_t)63;
    uint8_t *fresh = aligned_alloc(64, cap);
    if (!fresh) return NULL;
    free(buffer);
    buffer = fresh;
    buffer_bytes = cap;
    pthread_setspecific(buffer_key, fresh);
    return fresh;
}

/* ---- the matmul --------------------------------------------------------------- */

#define TILE_ROWS 4
#define TILE_TOKS 4 /* a tile's tokens unless its table row says more */
#define CHUNK_ROWS 64   /* rows a task keeps in cache when the tokens come in blocks */
#define BLOCK_TOKS 64   /* beyond this many tokens, tokens are taken a block at a time */
#define PARALLEL_MIN (1 << 16) /* multiply-adds below which a call stays on one thread */
#define SERIAL_ACT_TOKS 4      /* token counts whose activations one thread quantizes */

typedef struct {
    const llmcore_qtype_info *info;
    const llmcore_qweight *w;
    const uint8_t *act;
    int64_t act_bytes;
    const float *bias;
    float *out;
    int64_t out_stride;
} qcall;

/* Rows [r0, r0 + nr) (nr <= 4) against tokens [t0, t1). */
static void row_tile(const qcall *c, int64_t r0, int64_t t0, int64_t t1) {
    const llmcore_qweight *w = c->w;
    const int nr = (int)(w->rows - r0 < TILE_ROWS ? w->rows - r0 : TILE_ROWS);
    const uint8_t *wp = w->data + r0 * w->row_bytes;
    const int64_t step = c->info->tile_tokens ? c->info->tile_tokens : TILE_TOKS;
    for (int64_t t = t0; t < t1; t += step) {
        const int nt = (int)(t1 - t < step ? t1 - t : step);
        c->info->tile(w->cols, wp, w->row_bytes, nr, c->act + t * c->act_bytes, c->act_bytes, nt,
                      c->out + t * c->out_stride + r0, c->out_stride);
    }
    if (c->bias)
        for (int64_t t = t0; t < t1; t++)
            for (int r = 0; r < nr; r++) c->out[t * c->out_stride + r0 + r] += c->bias[r0 + r];
}

int llmcore_qmatmul(const llmcore_qweight *w, const float *x, int64_t n, int64_t x_stride,
                    const float *bias, float *out, int64_t out_stride) {
    const llmcore_qtype_info *info = llmcore_qtype_find(w->type);
    if (!has_matmul(info)) return 1;
    if (w->cols <= 0 || w->cols % info->block) return 2;
    if (n <= 0 || w->rows <= 0) return 0;
    const int64_t act_bytes = info->act_bytes(w->cols);
    uint8_t *act = act_buffer((size_t)(n * act_bytes));
    if (!act) return 3;
    const qcall c = {info, w, act, act_bytes, bias, out, out_stride};
    const int64_t rows = w->rows, cols = w->cols;
    const int64_t row_tiles = (rows + TILE_ROWS - 1) / TILE_ROWS;
    const int64_t chunks = (rows + CHUNK_ROWS - 1) / CHUNK_ROWS;
    const int64_t blocks = (n + BLOCK_TOKS - 1) / BLOCK_TOKS;
    const double work = (double)rows * (double)cols * (double)n;
    /* A few tokens are quantized here, on the calling thread: a barrier costs more. */
    const int serial_act = n <= SERIAL_ACT_TOKS;
    if (serial_act)
        for (int64_t t = 0; t < n; t++) info->act(x + t * x_stride, cols, act + t * act_bytes);
#pragma omp parallel if (work >= PARALLEL_MIN)
    {
        if (!serial_act) {
#pragma omp for schedule(static)
            for (int64_t t = 0; t < n; t++) info->act(x + t * x_stride, cols, act + t * act_bytes);
        }
        if (n <= BLOCK_TOKS) {
            /* Every token against each 4-row tile in turn; the threads split the rows. */
#pragma omp for schedule(static)
            for (int64_t i = 0; i < row_tiles; i++) row_tile(&c, i * TILE_ROWS, 0, n);
        } else {
            /* A GEMM: a task is a chunk of rows (kept in cache) against a block of tokens. */
#pragma omp for schedule(dynamic, 1) collapse(2)
            for (int64_t rc = 0; rc < chunks; rc++)
                for (int64_t tb = 0; tb < blocks; tb++) {
                    const int64_t t0 = tb * BLOCK_TOKS;
                    const int64_t t1 = t0 + BLOCK_TOKS < n ? t0 + BLOCK_TOKS : n;
                    const int64_t r1 = (rc + 1) * CHUNK_ROWS < rows ? (rc + 1) * CHUNK_ROWS : rows;
                    for (int64_t r0 = rc * CHUNK_ROWS; r0 < r1; r0 += TILE_ROWS)
                        row_tile(&c, r0, t0, t1);
                }
        }
    }
    return 0;
}

int llmcore_qget_rows(const llmcore_qweight *w, const int64_t *ids, int64_t n, float *out,
                      int64_t out_stride) {
    const llmcore_qtype_info *info = llmcore_qtype_find(w->type);
    if (!info || !info->dequant) return 1;
    if (w->cols <= 0 || w->cols % info->block) return 2;
#pragma omp parallel for schedule(static) if (n * w->cols >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++)
        info->dequant(w->data + ids[i] * w->row_bytes, w->cols, out + i * out_stride);
    return 0;
}
