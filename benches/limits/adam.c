/* The memory floor of an Adam training step over N MB of f32 weights, 2 threads, AVX-512:
 * two reads of the weights (the forward pass and the backward pass each need them) and
 * Adam's read-modify-write of w, m and v with its IEEE square root and division (tf-keras
 * formula), with no multiply-add work of the layers at all (see README.md).
 *   adam MB                                                                          */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static size_t n;
static float *w, *m, *v;
static volatile float sink[2];

static void *update(void *p) {
    int t = *(int *)p;
    size_t lo = t * (n / 2), hi = lo + n / 2;
    __m512 b1 = _mm512_set1_ps(0.9f), b2 = _mm512_set1_ps(0.999f), c1 = _mm512_set1_ps(0.1f),
           c2 = _mm512_set1_ps(0.001f), lr = _mm512_set1_ps(1e-3f), eps = _mm512_set1_ps(1e-7f),
           g = _mm512_set1_ps(0.01f);
    for (size_t i = lo; i < hi; i += 16) {
        __m512 mm = _mm512_fmadd_ps(b1, _mm512_load_ps(m + i), _mm512_mul_ps(c1, g));
        __m512 vv = _mm512_fmadd_ps(b2, _mm512_load_ps(v + i), _mm512_mul_ps(c2, _mm512_mul_ps(g, g)));
        __m512 ww = _mm512_sub_ps(_mm512_load_ps(w + i),
                                  _mm512_div_ps(_mm512_mul_ps(lr, mm), _mm512_add_ps(_mm512_sqrt_ps(vv), eps)));
        _mm512_store_ps(m + i, mm);
        _mm512_store_ps(v + i, vv);
        _mm512_store_ps(w + i, ww);
    }
    return 0;
}

static void *read_w(void *p) {
    int t = *(int *)p;
    size_t lo = t * (n / 2), hi = lo + n / 2;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    for (size_t i = lo; i < hi; i += 32) {
        _mm_prefetch((char *)(w + i + 1024), _MM_HINT_T0);
        a0 = _mm512_add_ps(a0, _mm512_load_ps(w + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(w + i + 16));
    }
    sink[t] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    return 0;
}

static void run(void *(*f)(void *)) {
    pthread_t th[2];
    int id[2] = {0, 1};
    for (int t = 0; t < 2; t++) pthread_create(&th[t], 0, f, &id[t]);
    for (int t = 0; t < 2; t++) pthread_join(th[t], 0);
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
    if (argc != 2) { fprintf(stderr, "usage: adam MB\n"); return 2; }
    n = ((size_t)(atof(argv[1]) * 1e6 / 4)) & ~(size_t)63;
    w = aligned_alloc(64, n * 4 + 8192);
    m = aligned_alloc(64, n * 4);
    v = aligned_alloc(64, n * 4);
    if (!w || !m || !v) return 1;
    for (size_t i = 0; i < n; i++) { w[i] = (float)(i & 7); m[i] = 0; v[i] = 0; }
    double all[30], rmw[30];
    for (int r = 0; r < 30; r++) {
        double t0 = now_ms();
        run(read_w);
        run(read_w);
        double t1 = now_ms();
        run(update);
        double t2 = now_ms();
        all[r] = t2 - t0;
        rmw[r] = t2 - t1;
    }
    qsort(all + 5, 25, sizeof(double), cmp);
    qsort(rmw + 5, 25, sizeof(double), cmp);
    printf("%s MB of weights: two reads + Adam update %.2f ms (update alone %.2f ms)\n",
           argv[1], all[17], rmw[17]);
    return 0;
}
