/* Quantized weight matrices multiplied straight from their blocks (issue 19).
 *
 * A weight matrix stays as GGUF stores it (Q4_0, Q4_1, Q8_0, the K-quants) or as our
 * I8_ROW (int8 with one float32 scale per row). A matmul quantizes the float32
 * activations once per call into int8 blocks (ggml's Q8_0 / Q8_1 / Q8_K numerics),
 * then each output (token, row) is a sum of integer dot products scaled per block.
 *
 * The framework (quant.c, quant_tiles.c) owns the type table, the activation
 * quantizers of Q8_0 / Q8_1 / I8, the tiling over rows and tokens, the threads, the
 * bias and the dequantization of rows. A weight type plugs in with two functions
 * (an activation quantizer and a tile function, the typedefs below) and one row of
 * the table in quant.c; the K-quants come from quant_k.c.
 *
 * Bit stability: a tile function computes each (token, row) with the same operations
 * in the same order whatever the tile's shape, so an output does not depend on the
 * number of tokens in the call, the token's position, the tile or the thread count.
 */
#pragma once
#include <stdint.h>

/* GGML's type ids; I8_ROW is ours. */
enum {
    LLMCORE_Q_F32 = 0,
    LLMCORE_Q_F16 = 1,
    LLMCORE_Q4_0 = 2,
    LLMCORE_Q4_1 = 3,
    LLMCORE_Q8_0 = 8,
    LLMCORE_Q4_K = 12,
    LLMCORE_Q5_K = 13,
    LLMCORE_Q6_K = 14,
    LLMCORE_Q_BF16 = 30,
    LLMCORE_I8_ROW = 1000,
};

/* One weight matrix: rows x cols; row r's bytes at data + r * row_bytes. */
typedef struct llmcore_qweight {
    int64_t type; /* a QuantType value (GGML ids; I8_ROW our own) */
    int64_t rows, cols;
    int64_t row_bytes;
    const uint8_t *data;
    /* the framework may add fields after these (e.g. a repacked copy) */
} llmcore_qweight;

/* Quantize one activation row of `cols` floats (cols a multiple of the type's block)
   into `a` (act_row_bytes(cols) bytes). */
typedef void (*llmcore_qact_fn)(const float *x, int64_t cols, uint8_t *a);
/* The bytes of one quantized activation row of `cols` values. */
typedef int64_t (*llmcore_qact_bytes_fn)(int64_t cols);
/* The parameters of a tile function (below), written once for every declaration. */
#define LLMCORE_QTILE_PARAMS                                                                 \
    int64_t cols, const uint8_t *w, int64_t w_row_bytes, int nrows, const uint8_t *a,        \
        int64_t a_row_bytes, int ntok, float *out, int64_t out_stride
/* Dot products of nrows weight rows (1..4) against ntok activation rows (1..4, or up
   to the type's tile_tokens where its table row sets more):
   out[t * out_stride + r] = <W row r, activation row t>.
   Each (t, r) accumulates in its own registers in block order, so its value does
   not depend on nrows or ntok (bit stability). */
typedef void (*llmcore_qtile_fn)(LLMCORE_QTILE_PARAMS);
/* One weight row of `cols` values dequantized into `out` (as ggml's dequantize_row_*). */
typedef void (*llmcore_qdequant_fn)(const uint8_t *row, int64_t cols, float *out);

/* One row of the type table. A NULL act, act_bytes or tile means the type has no
   matmul here; a NULL dequant, no get_rows. */
typedef struct llmcore_qtype_info {
    int64_t type;
    int64_t block;       /* values per block (1 for I8_ROW) */
    int64_t block_bytes; /* bytes per block */
    int64_t row_extra;   /* bytes a row has beyond its blocks (I8_ROW's scale) */
    llmcore_qact_fn act;
    llmcore_qact_bytes_fn act_bytes;
    llmcore_qtile_fn tile;
    llmcore_qdequant_fn dequant;
    int64_t tile_tokens; /* the most tokens one tile call takes (0: 4, as the typedef) */
} llmcore_qtype_info;

/* out[t * out_stride + r] = sum_c x[t * x_stride + c] * W[r, c] (+ bias[r]).
   Any n >= 1; returns 0, or nonzero for a type it lacks. Multi-threaded (OpenMP). */
int llmcore_qmatmul(const llmcore_qweight *w, const float *x, int64_t n, int64_t x_stride,
                    const float *bias, float *out, int64_t out_stride);

/* Dequantized rows (an embedding lookup): out[i * out_stride + c] = W[ids[i], c],
   bit-identical to ggml's dequantize_row_*. Returns 0, or nonzero for a type it lacks
   (then nothing is written); ids must be in [0, rows). */
int llmcore_qget_rows(const llmcore_qweight *w, const int64_t *ids, int64_t n, float *out,
                      int64_t out_stride);

/* What the library does for a type: bit 0 matmul, bit 1 get_rows (0: neither). */
int llmcore_qtype_support(int64_t type);

/* The table row of a type, or NULL. */
const llmcore_qtype_info *llmcore_qtype_find(int64_t type);

/* The activation quantizers of the framework, in a plain layout for tests: q[cols]
   int8, d[cols / 32] and (Q8_1) s[cols / 32] floats (each an fp16 value), or for
   kind LLMCORE_I8_ROW one d (the per-row scale, float32) and s unused.
   kind: LLMCORE_Q8_0 (Q8_0 blocks), LLMCORE_Q4_1 (Q8_1 blocks), LLMCORE_I8_ROW.
   Returns nonzero for another kind. */
int llmcore_qquantize_act(int64_t kind, const float *x, int64_t cols, int8_t *q, float *d,
                          float *s);

/* The instruction set the tiles were compiled for: "avx512vnni", "avx2", "scalar". */
const char *llmcore_qisa(void);

/* The K-quant plug-ins (quant_k.c). quant.c references them weakly, so the library
   links without that file and the K types then report no support. */
void llmcore_qact_q8_k(const float *x, int64_t cols, uint8_t *a);
int64_t llmcore_qact_q8_k_row_bytes(int64_t cols);
void llmcore_qtile_q4_k(LLMCORE_QTILE_PARAMS);
void llmcore_qtile_q5_k(LLMCORE_QTILE_PARAMS);
void llmcore_qtile_q6_k(LLMCORE_QTILE_PARAMS);
/* Plain float weights (quant_float.c): BF16 rows (activations rounded to bfloat16,
   products summed in float32) and F32 rows. */
void llmcore_qact_bf16(const float *x, int64_t cols, uint8_t *a);
int64_t llmcore_qact_bf16_row_bytes(int64_t cols);
void llmcore_qtile_bf16(LLMCORE_QTILE_PARAMS);
void llmcore_qdequant_bf16(const uint8_t *row, int64_t cols, float *out);
void llmcore_qact_f32(const float *x, int64_t cols, uint8_t *a);
int64_t llmcore_qact_f32_row_bytes(int64_t cols);
void llmcore_qtile_f32(LLMCORE_QTILE_PARAMS);
void llmcore_qdequant_f32(const uint8_t *row, int64_t cols, float *out);

/* Optional (get_rows of the K types; without them get_rows of these types is left to
   the torch reference). */
void llmcore_qdequant_q4_k(const uint8_t *row, int64_t cols, float *out);
void llmcore_qdequant_q5_k(const uint8_t *row, int64_t cols, float *out);
void llmcore_qdequant_q6_k(const uint8_t *row, int64_t cols, float *out);
