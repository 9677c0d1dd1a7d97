/*
 * Deploy without lcjit: predict with a model compiled ahead of time by `lcjit aot`.
 *
 *   ./demo images.f32 [weights.lcw]
 *
 * images.f32 holds raw little-endian float32 samples back to back, each
 * model_input_len() floats in the model's (Keras, row-major) input layout. Prints one
 * line of outputs per sample. Needs only the C library at run time.
 */
#include <stdio.h>
#include <stdlib.h>
#include "model.h"

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s images.f32 [weights file]\n", argv[0]);
        return 2;
    }
    /* NULL: the weights embedded in model.o. */
    model_t *m = model_create(argc > 2 ? argv[2] : NULL, 1);
    if (!m) {
        fprintf(stderr, "model_create: %s\n", model_last_error(NULL));
        return 1;
    }
    size_t in_len = model_input_len(), out_len = model_output_len();

    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    size_t n = (size_t)bytes / (in_len * sizeof(float));
    if (n == 0 || (size_t)bytes != n * in_len * sizeof(float)) {
        fprintf(stderr, "%s: %ld bytes is not a whole number of %zu-float samples\n",
                argv[1], bytes, in_len);
        return 1;
    }
    float *x = malloc(n * in_len * sizeof(float));
    float *y = malloc(n * out_len * sizeof(float));
    if (!x || !y || fread(x, sizeof(float), n * in_len, f) != n * in_len) {
        fprintf(stderr, "%s: cannot read\n", argv[1]);
        return 1;
    }
    fclose(f);

    /* Any number of samples: the library runs them in chunks of its compiled batch. */
    if (model_predict(m, x, n, y) != 0) {
        fprintf(stderr, "model_predict: %s\n", model_last_error(m));
        return 1;
    }
    size_t dims[MODEL_MAX_RANK];
    int rank = model_output_shape(dims);
    printf("%zu samples, output rank %d, %zu floats each\n", n, rank, out_len);
    for (size_t i = 0; i < n; i++) {
        printf("sample %zu:", i);
        for (size_t j = 0; j < out_len; j++)
            printf(" %.6g", y[i * out_len + j]);
        printf("\n");
    }
    free(x);
    free(y);
    model_destroy(m);
    return 0;
}
