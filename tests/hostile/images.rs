//! Byte-level builders for the hostile corpus: `.npy` images with any header, zip
//! archives with any declared sizes (zip64 included), and patches of HDF5 images. They
//! write exactly what they are told, lies included; nothing here validates.

/// A version-1 `.npy` image with the header dictionary `dict` (padded as numpy pads it)
/// followed by `data`.
pub fn npy_raw(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut dict = dict.to_owned();
    while !(10 + dict.len() + 1).is_multiple_of(64) {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A `.npy` image with the given descriptor, order and shape literal.
pub fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let order = if fortran { "True" } else { "False" };
    npy_raw(
        &format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}"),
        data,
    )
}

/// A little-endian f32 `.npy` of `shape` holding `values`.
pub fn npy_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let literal = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    npy("<f4", false, &literal, &data)
}

/// CRC-32 (IEEE), as zip stores it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// One entry of a hand-made zip archive.
pub struct RawEntry {
    /// The entry's name.
    pub name: String,
    /// 0 (stored) or 8 (deflated).
    pub method: u16,
    /// The bytes as stored (compressed for method 8).
    pub payload: Vec<u8>,
    /// The uncompressed size the headers declare (true or not).
    pub declared: u64,
    /// The CRC the headers declare.
    pub crc: u32,
}

impl RawEntry {
    /// A stored entry that tells the truth.
    pub fn stored(name: &str, data: &[u8]) -> RawEntry {
        RawEntry {
            name: name.to_owned(),
            method: 0,
            payload: data.to_vec(),
            declared: data.len() as u64,
            crc: crc32(data),
        }
    }
}

fn push16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn push32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// A zip archive of `entries`, with zip64 extra fields where a size needs them.
pub fn zip_raw(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for e in entries {
        let offset = out.len() as u32;
        let big = e.declared >= 0xFFFF_FFFF;
        let mut extra = Vec::new();
        if big {
            push16(&mut extra, 1);
            push16(&mut extra, 16);
            extra.extend_from_slice(&e.declared.to_le_bytes());
            extra.extend_from_slice(&(e.payload.len() as u64).to_le_bytes());
        }
        let (csize, usize_) = if big {
            (0xFFFF_FFFF, 0xFFFF_FFFF)
        } else {
            (e.payload.len() as u32, e.declared as u32)
        };
        let version = if big { 45 } else { 20 };
        // Local header.
        push32(&mut out, 0x0403_4b50);
        push16(&mut out, version);
        push16(&mut out, 0);
        push16(&mut out, e.method);
        push16(&mut out, 0);
        push16(&mut out, 0x21);
        push32(&mut out, e.crc);
        push32(&mut out, csize);
        push32(&mut out, usize_);
        push16(&mut out, e.name.len() as u16);
        push16(&mut out, extra.len() as u16);
        out.extend_from_slice(e.name.as_bytes());
        out.extend_from_slice(&extra);
        out.extend_from_slice(&e.payload);
        // Central directory record.
        push32(&mut central, 0x0201_4b50);
        push16(&mut central, version);
        push16(&mut central, version);
        push16(&mut central, 0);
        push16(&mut central, e.method);
        push16(&mut central, 0);
        push16(&mut central, 0x21);
        push32(&mut central, e.crc);
        push32(&mut central, csize);
        push32(&mut central, usize_);
        push16(&mut central, e.name.len() as u16);
        push16(&mut central, extra.len() as u16);
        push16(&mut central, 0);
        push16(&mut central, 0);
        push16(&mut central, 0);
        push32(&mut central, 0);
        push32(&mut central, offset);
        central.extend_from_slice(e.name.as_bytes());
        central.extend_from_slice(&extra);
    }
    let cd_offset = out.len() as u32;
    let cd_len = central.len() as u32;
    out.extend_from_slice(&central);
    push32(&mut out, 0x0605_4b50);
    push16(&mut out, 0);
    push16(&mut out, 0);
    push16(&mut out, entries.len() as u16);
    push16(&mut out, entries.len() as u16);
    push32(&mut out, cd_len);
    push32(&mut out, cd_offset);
    push16(&mut out, 0);
    out
}

/// `data` deflated by the zip crate: the raw stream and the CRC.
pub fn deflated(data: &[u8]) -> (Vec<u8>, u32) {
    use std::io::Write;
    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(false);
    zw.start_file("x", opts).expect("start");
    zw.write_all(data).expect("write");
    let bytes = zw.finish().expect("finish").into_inner();
    let u16_at = |i: usize| usize::from(u16::from_le_bytes([bytes[i], bytes[i + 1]]));
    let csize = u32::from_le_bytes([bytes[18], bytes[19], bytes[20], bytes[21]]) as usize;
    let start = 30 + u16_at(26) + u16_at(28);
    (bytes[start..start + csize].to_vec(), crc32(data))
}

/// A deflated entry whose headers declare `declared` bytes.
pub fn deflated_entry(name: &str, data: &[u8], declared: u64) -> RawEntry {
    let (payload, crc) = deflated(data);
    RawEntry {
        name: name.to_owned(),
        method: 8,
        payload,
        declared,
        crc,
    }
}
