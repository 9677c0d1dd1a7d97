/* Read bandwidth of a plain C loop over one buffer, 2 threads, with 128-, 256- or
 * 512-bit loads and an optional software prefetch: the machine's streaming limit,
 * independent of lcjit's code generator (see README.md).
 *   stream MB PREFETCH_FLOATS WIDTH(4|8|16)                                          */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static size_t n;
static float *buf;
static int pf, width;
static volatile float sink[2];

static void *work(void *p) {
    int t = *(int *)p;
    size_t lo = t * (n / 2), hi = lo + n / 2;
    if (width == 4) {
        __m128 a[16];
        for (int k = 0; k < 16; k++) a[k] = _mm_setzero_ps();
        for (size_t i = lo; i < hi; i += 64) {
            if (pf) for (int q = 0; q < 4; q++) _mm_prefetch((char *)(buf + i + pf + 16 * q), _MM_HINT_T0);
            for (int k = 0; k < 16; k++) a[k] = _mm_add_ps(a[k], _mm_load_ps(buf + i + 4 * k));
        }
        for (int k = 1; k < 16; k++) a[0] = _mm_add_ps(a[0], a[k]);
        sink[t] = _mm_cvtss_f32(a[0]);
    } else if (width == 8) {
        __m256 a[8];
        for (int k = 0; k < 8; k++) a[k] = _mm256_setzero_ps();
        for (size_t i = lo; i < hi; i += 64) {
            if (pf) for (int q = 0; q < 4; q++) _mm_prefetch((char *)(buf + i + pf + 16 * q), _MM_HINT_T0);
            for (int k = 0; k < 8; k++) a[k] = _mm256_add_ps(a[k], _mm256_load_ps(buf + i + 8 * k));
        }
        for (int k = 1; k < 8; k++) a[0] = _mm256_add_ps(a[0], a[k]);
        sink[t] = _mm256_cvtss_f32(a[0]);
    } else {
        __m512 a[4];
        for (int k = 0; k < 4; k++) a[k] = _mm512_setzero_ps();
        for (size_t i = lo; i < hi; i += 64) {
            if (pf) for (int q = 0; q < 4; q++) _mm_prefetch((char *)(buf + i + pf + 16 * q), _MM_HINT_T0);
            for (int k = 0; k < 4; k++) a[k] = _mm512_add_ps(a[k], _mm512_load_ps(buf + i + 16 * k));
        }
        for (int k = 1; k < 4; k++) a[0] = _mm512_add_ps(a[0], a[k]);
        sink[t] = _mm512_cvtss_f32(a[0]);
    }
    return 0;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: stream MB PREFETCH_FLOATS WIDTH\n"); return 2; }
    n = ((size_t)(atof(argv[1]) * 1e6 / 4)) & ~(size_t)127;
    pf = atoi(argv[2]);
    width = atoi(argv[3]);
    buf = aligned_alloc(64, (n + (1 << 18)) * 4);
    if (!buf) return 1;
    for (size_t i = 0; i < n + (1 << 18); i++) buf[i] = (float)(i & 7);
    double ts[30];
    for (int r = 0; r < 30; r++) {
        double t0 = now_ms();
        pthread_t th[2];
        int id[2] = {0, 1};
        for (int t = 0; t < 2; t++) pthread_create(&th[t], 0, work, &id[t]);
        for (int t = 0; t < 2; t++) pthread_join(th[t], 0);
        ts[r] = now_ms() - t0;
    }
    qsort(ts + 5, 25, sizeof(double), cmp);
    printf("%2d-lane loads, %s MB, prefetch %5d floats ahead: median %.2f ms = %.1f GB/s\n",
           width, argv[1], pf, ts[17], n * 4 / ts[17] / 1e6);
    return 0;
}
