//! Hostile `.npz` weights and `.keras` archives: entries that inflate to gigabytes
//! (declared honestly, or lying about their size), entries never needed, broken zips,
//! and an archive of 150,000 entries that must load in linear time.

use super::gen::{args, bad, ok};
use super::images::*;
use super::Case;
use std::fs;
use std::path::Path;

fn put(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    fs::write(dir.join(name), bytes).expect("writing a corpus file");
}

fn run_weights(w: &str) -> Vec<String> {
    args(&[
        "run",
        "@dense.json",
        "--weights",
        w,
        "--input",
        "@x.npy",
        "--output",
        "%y.npy",
    ])
}

fn run_model(m: &str) -> Vec<String> {
    args(&["run", m, "--input", "@x.npy", "--output", "%y.npy"])
}

fn case(name: &str, args: Vec<String>, expect: super::Expect) -> Case {
    Case {
        name: name.to_owned(),
        args,
        expect,
    }
}

/// The dense model's weights as stored entries.
fn dense_entries() -> Vec<RawEntry> {
    vec![
        RawEntry::stored("d/kernel.npy", &npy_f32(&[4, 3], &[0.5; 12])),
        RawEntry::stored("d/bias.npy", &npy_f32(&[3], &[0.0; 3])),
    ]
}

/// A deflated entry whose `.npy` header claims `shape` but whose stream holds only the
/// header and `zeros` bytes of data, declared as the header plus `data_bytes`.
fn bomb_entry(name: &str, shape: &str, zeros: usize, data_bytes: u64) -> RawEntry {
    let mut data = npy("<f4", false, shape, &[]);
    let declared = data.len() as u64 + data_bytes;
    data.extend(std::iter::repeat_n(0u8, zeros));
    deflated_entry(name, &data, declared)
}

pub fn npz_cases(dir: &Path, cases: &mut Vec<Case>) {
    let with = |extra: Vec<RawEntry>| {
        let mut e = dense_entries();
        e.extend(extra);
        zip_raw(&e)
    };
    let four_gib = 4u64 << 30;
    let list: Vec<(&str, Vec<u8>, super::Expect)> = vec![
        ("stored_valid", zip_raw(&dense_entries()), ok()),
        (
            "with_directory_entry",
            with(vec![RawEntry::stored("d/", &[])]),
            ok(),
        ),
        // An unused entry of 4 GiB, declared honestly: refused by its header, not inflated.
        (
            "unused_entry_4gib",
            with(vec![bomb_entry(
                "junk/big.npy",
                "(1073741824,)",
                1 << 16,
                four_gib,
            )]),
            bad("FileBudget", "junk/big.npy"),
        ),
        // An entry that declares its 64 data bytes and inflates to 64 MiB: stopped there.
        (
            "entry_lies_small",
            with(vec![bomb_entry("junk/lie.npy", "(16,)", 64 << 20, 64)]),
            bad("Format", "junk/lie.npy"),
        ),
        (
            "header_small_declared_8gib",
            with(vec![bomb_entry("junk/odd.npy", "(4, 3)", 48, 8 << 30)]),
            bad("Format", "junk/odd.npy"),
        ),
        (
            "kernel_declared_huge",
            zip_raw(&[
                bomb_entry("d/kernel.npy", "(1048576, 1048576)", 1 << 12, 1 << 42),
                RawEntry::stored("d/bias.npy", &npy_f32(&[3], &[0.0; 3])),
            ]),
            bad("FileBudget", "d/kernel.npy"),
        ),
        (
            "key_without_slash",
            with(vec![RawEntry::stored("junk.npy", &npy_f32(&[1], &[0.0]))]),
            bad("Format", "'junk'"),
        ),
        (
            "empty_layer_name",
            with(vec![RawEntry::stored(
                "/kernel.npy",
                &npy_f32(&[1], &[0.0]),
            )]),
            bad("Format", "empty layer"),
        ),
        (
            "unknown_layer",
            with(vec![RawEntry::stored(
                "nope/kernel.npy",
                &npy_f32(&[1], &[0.0]),
            )]),
            bad("Weights", "no layer of this name"),
        ),
        (
            "wrong_kernel_shape",
            zip_raw(&[
                RawEntry::stored("d/kernel.npy", &npy_f32(&[3, 4], &[0.5; 12])),
                RawEntry::stored("d/bias.npy", &npy_f32(&[3], &[0.0; 3])),
            ]),
            bad("Weights", "expected shape"),
        ),
        (
            "missing_bias",
            zip_raw(&[RawEntry::stored(
                "d/kernel.npy",
                &npy_f32(&[4, 3], &[0.5; 12]),
            )]),
            bad("Weights", "bias"),
        ),
        (
            "extra_weight",
            with(vec![RawEntry::stored(
                "d/gamma.npy",
                &npy_f32(&[3], &[0.0; 3]),
            )]),
            bad("Weights", "weights for this layer"),
        ),
        (
            "entry_not_npy",
            with(vec![RawEntry::stored("d/text.npy", b"just some text")]),
            bad("Format", "d/text.npy"),
        ),
        (
            "entry_zero_beside_huge",
            with(vec![RawEntry::stored(
                "d/z.npy",
                &npy("<f4", false, "(0, 1099511627776, 1099511627776)", &[]),
            )]),
            bad("Format", "too large"),
        ),
        ("empty_archive", zip_raw(&[]), bad("Weights", "missing")),
        (
            "not_a_zip",
            b"PK\x03\x04 but nothing else of a zip".to_vec(),
            bad("Format", "npz"),
        ),
        (
            "text",
            b"this is not a zip archive at all".to_vec(),
            bad("Format", "npz"),
        ),
    ];
    for (name, bytes, expect) in list {
        let file = format!("npz_{name}.npz");
        put(dir, &file, bytes);
        cases.push(case(
            &format!("npz_{name}"),
            run_weights(&format!("@{file}")),
            expect,
        ));
    }
    // Byte-level damage: a wrong CRC, an unknown method, encryption, truncations.
    let good = zip_raw(&dense_entries());
    let mut bad_crc_entries = dense_entries();
    bad_crc_entries[0].crc ^= 0xdead_beef;
    let mut method = dense_entries();
    method[0].method = 12;
    let mut encrypted = good.clone();
    encrypted[6] = 1; // local header flags: encrypted
    let cd = good.len() - 22 - 2 * 46 - "d/kernel.npy".len() - "d/bias.npy".len();
    encrypted[cd + 8] = 1; // central directory flags too
    let damaged: Vec<(&str, Vec<u8>)> = vec![
        ("bad_crc", zip_raw(&bad_crc_entries)),
        ("unknown_method", zip_raw(&method)),
        ("encrypted", encrypted),
    ];
    for (name, bytes) in damaged {
        let file = format!("npz_{name}.npz");
        put(dir, &file, bytes);
        cases.push(case(
            &format!("npz_{name}"),
            run_weights(&format!("@{file}")),
            bad("Format", "npz"),
        ));
    }
    for cut in [10usize, 100, 200, 300, 400] {
        let file = format!("npz_cut_{cut}.npz");
        put(dir, &file, &good[..cut.min(good.len() - 1)]);
        cases.push(case(
            &format!("npz_cut_{cut}"),
            run_weights(&format!("@{file}")),
            bad("Format", "npz"),
        ));
    }
    // 150,000 entries: the grouping by layer and the matching must be linear.
    let mut many = dense_entries();
    let tiny = npy_f32(&[1], &[0.0]);
    for i in 0..150_000 {
        many.push(RawEntry::stored(&format!("l{i}/w.npy"), &tiny));
    }
    put(dir, "npz_150k_layers.npz", zip64_count(&many));
    cases.push(case(
        "npz_150k_layers",
        run_weights("@npz_150k_layers.npz"),
        bad("Weights", "no layer of this name"),
    ));
    let mut many = dense_entries();
    for i in 0..150_000 {
        many.push(RawEntry::stored(&format!("d/w{i}.npy"), &tiny));
    }
    put(dir, "npz_150k_weights.npz", zip64_count(&many));
    cases.push(case(
        "npz_150k_weights",
        run_weights("@npz_150k_weights.npz"),
        bad("Weights", "weights for this layer"),
    ));
}

/// [`zip_raw`] for more than 65,535 entries: the end record's counts saturate and a
/// zip64 end record carries the real ones.
fn zip64_count(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = zip_raw(entries);
    let eocd = out.len() - 22;
    let cd_len = u32::from_le_bytes(out[eocd + 12..eocd + 16].try_into().expect("4")) as u64;
    let cd_offset = u32::from_le_bytes(out[eocd + 16..eocd + 20].try_into().expect("4")) as u64;
    out.truncate(eocd);
    let z64 = out.len() as u64;
    let n = entries.len() as u64;
    out.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
    out.extend_from_slice(&44u64.to_le_bytes());
    out.extend_from_slice(&45u16.to_le_bytes());
    out.extend_from_slice(&45u16.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&cd_len.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&z64.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&0xFFFFu16.to_le_bytes());
    out.extend_from_slice(&0xFFFFu16.to_le_bytes());
    out.extend_from_slice(&(cd_len.min(0xFFFF_FFFF) as u32).to_le_bytes());
    out.extend_from_slice(&(cd_offset.min(0xFFFF_FFFF) as u32).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

pub fn keras_cases(dir: &Path, cases: &mut Vec<Case>) {
    // The parts of the valid archive lcjit wrote itself.
    let good = fs::read(dir.join("dense.keras")).expect("dense.keras");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(good.clone())).expect("zip");
    let mut part = |name: &str| {
        use std::io::Read;
        let mut v = Vec::new();
        archive
            .by_name(name)
            .expect("entry")
            .read_to_end(&mut v)
            .expect("read");
        v
    };
    let config = part("config.json");
    let weights = part("model.weights.h5");
    let metadata = part("metadata.json");
    let stored = |n: &str, d: &[u8]| RawEntry::stored(n, d);
    let base = || {
        vec![
            stored("metadata.json", &metadata),
            stored("config.json", &config),
            stored("model.weights.h5", &weights),
        ]
    };
    let with = |extra: Vec<RawEntry>| {
        let mut e = base();
        e.extend(extra);
        zip_raw(&e)
    };
    let spaces = vec![b' '; 1 << 16];
    let list: Vec<(&str, Vec<u8>, super::Expect)> = vec![
        ("stored_valid", zip_raw(&base()), ok()),
        // Entries lcjit never needs are never inflated, whatever they declare.
        (
            "unused_entry_16gib",
            with(vec![deflated_entry(
                "assets/huge.bin",
                &[0; 4096],
                16 << 30,
            )]),
            ok(),
        ),
        (
            "unused_entry_lies",
            with(vec![deflated_entry(
                "assets/lie.bin",
                &vec![0; 8 << 20],
                10,
            )]),
            ok(),
        ),
        (
            "config_declared_4_5gb",
            zip_raw(&[
                stored("metadata.json", &metadata),
                deflated_entry("config.json", &spaces, 4_500_000_000),
                stored("model.weights.h5", &weights),
            ]),
            bad("FileBudget", "config.json"),
        ),
        (
            "config_lies_small",
            zip_raw(&[
                deflated_entry("config.json", &vec![b' '; 32 << 20], 100),
                stored("model.weights.h5", &weights),
            ]),
            bad("Format", "config.json"),
        ),
        (
            "weights_declared_8gib",
            zip_raw(&[
                stored("config.json", &config),
                deflated_entry("model.weights.h5", &weights, 8 << 30),
            ]),
            bad("FileBudget", "model.weights.h5"),
        ),
        (
            "no_config",
            zip_raw(&[stored("model.weights.h5", &weights)]),
            bad("Format", "no config.json"),
        ),
        (
            "no_weights",
            zip_raw(&[stored("config.json", &config)]),
            bad("Format", "no model.weights.h5"),
        ),
        (
            "config_not_json",
            zip_raw(&[
                stored("config.json", b"{not json"),
                stored("model.weights.h5", &weights),
            ]),
            bad("Format", "not valid JSON"),
        ),
        (
            "config_not_utf8",
            zip_raw(&[
                stored("config.json", &[0xff, 0xfe, 0x00]),
                stored("model.weights.h5", &weights),
            ]),
            bad("Format", "UTF-8"),
        ),
        (
            "config_deep_nesting",
            zip_raw(&[
                stored("config.json", "[".repeat(100_000).as_bytes()),
                stored("model.weights.h5", &weights),
            ]),
            bad("Format", "config.json"),
        ),
        (
            "weights_garbage",
            zip_raw(&[
                stored("config.json", &config),
                stored("model.weights.h5", b"garbage, not HDF5"),
            ]),
            bad("Format", "model.weights.h5"),
        ),
        (
            "weights_empty",
            zip_raw(&[
                stored("config.json", &config),
                stored("model.weights.h5", b""),
            ]),
            bad("Format", "model.weights.h5"),
        ),
        (
            "not_a_zip",
            b"PK\x03\x04 not really".to_vec(),
            bad("Format", ".keras"),
        ),
    ];
    for (name, bytes, expect) in list {
        let file = format!("keras_{name}.keras");
        put(dir, &file, bytes);
        cases.push(case(
            &format!("keras_{name}"),
            run_model(&format!("@{file}")),
            expect,
        ));
    }
    for cut in [30usize, 300, 1000, 3000] {
        let file = format!("keras_cut_{cut}.keras");
        put(dir, &file, &good[..cut.min(good.len() - 1)]);
        cases.push(case(
            &format!("keras_cut_{cut}"),
            run_model(&format!("@{file}")),
            bad("Format", ""),
        ));
    }
}
