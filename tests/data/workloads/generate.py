#!/usr/bin/env python3
"""Writes the three workloads added for issue 12 with tf-keras 2.21 (`model.to_json()`, no
weights), so their configs are Keras's own, not hand-written:

  genomic_residual_lc1d.json  GpNet (d = 4, s = 1), the locally connected genomic-prediction
                              network of github.com/gywns6287/GpNet (GP_Net.py, main.py), at
                              the 44,314 SNPs of its published weights.h5: four blocks of
                              ZeroPadding1D((k-1, 0)) -> LocallyConnected1D(1 filter, kernel
                              k = 2..5, relu, he_normal, implementation 3) -> Add(skip),
                              then Flatten -> Dense(1).
  lc2d_f12_f6.json            a 2-D locally connected stack whose filter counts (12, 6) are
                              not multiples of 8, and 6 not of 4: (64, 64, 32) ->
                              LocallyConnected2D(12, 3x3, relu) -> LocallyConnected2D(6, 3x3,
                              relu).
  lc1d_f2.json                a 1-D locally connected stack with two filters over 25,000
                              SNPs one-hot encoded (3 channels): LocallyConnected1D(2, 5,
                              relu) -> LocallyConnected1D(2, 5, relu) -> Flatten -> Dense(1),
                              the F = 2 point of issue 12's small-filter target (F = 1 is
                              GpNet above, F = 4 genomics_lc1d.json).

GpNet's custom `LCNN` layer (padding + LocallyConnected1D in one Keras layer) is unrolled
into its two standard layers, which compute the same function and keep the file loadable
by plain Keras. The other workloads in this directory predate this script.

Run (needs tensorflow-cpu and tf-keras 2.21; the tests only read the JSON files):
  python tests/data/workloads/generate.py
"""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tf_keras as keras  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GPNET_SNPS = 44_314  # columns of GpNet's data/sample.raw; Dense kernel (44314, 1) in weights.h5
GPNET_DEPTH = 4  # main.py: 'depth': 4, 'stack': 1


def gpnet():
    """GP_Net(marker_den=44314, activation='relu', depth=4, stacks=1), LCNN unrolled."""
    inputs = keras.Input(shape=(GPNET_SNPS, 1), name="snps")
    x = inputs
    for d in range(GPNET_DEPTH):
        k = 2 + d
        skip = x
        # padding 'L': causal, so position n never sees SNPs after n
        x = keras.layers.ZeroPadding1D((k - 1, 0), name=f"lcnn_{d}_pad")(x)
        x = keras.layers.LocallyConnected1D(
            filters=1,
            kernel_size=k,
            strides=1,
            activation="relu",
            kernel_initializer="he_normal",
            implementation=3,
            name=f"lcnn_{d}",
        )(x)
        x = keras.layers.Add(name=f"add_{d}")([skip, x])
    x = keras.layers.Flatten(name="flatten")(x)
    out = keras.layers.Dense(1, name="gebv")(x)
    return keras.Model(inputs, out, name="genomic_residual_lc1d")


def lc2d_f12_f6():
    return keras.Sequential(
        [
            keras.Input(shape=(64, 64, 32)),
            keras.layers.LocallyConnected2D(12, (3, 3), activation="relu", name="local_f12"),
            keras.layers.LocallyConnected2D(6, (3, 3), activation="relu", name="local_f6"),
        ],
        name="lc2d_f12_f6",
    )


def lc1d_f2():
    return keras.Sequential(
        [
            keras.Input(shape=(25_000, 3)),
            keras.layers.LocallyConnected1D(2, 5, activation="relu", name="local_a"),
            keras.layers.LocallyConnected1D(2, 5, activation="relu", name="local_b"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(1, name="out"),
        ],
        name="lc1d_f2",
    )


def main():
    for build in (gpnet, lc2d_f12_f6, lc1d_f2):
        model = build()
        path = os.path.join(HERE, model.name + ".json")
        with open(path, "w") as f:
            json.dump(json.loads(model.to_json()), f, indent=1)
            f.write("\n")
        print(f"{path}: {model.count_params():,} parameters, output {model.output_shape}")


if __name__ == "__main__":
    main()
