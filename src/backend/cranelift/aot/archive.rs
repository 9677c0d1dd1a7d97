//! A static library (`.a`) holding one object, in the System V / GNU `ar` format with a
//! symbol index (the `/` member) so linkers find the exported symbols without `ranlib`.
//!
//! Layout: `!<arch>\n`, then members, each a 60-byte header (name 16, mtime 12, uid 6,
//! gid 6, mode 8, size 10, `` `\n``) followed by the data padded to an even length with
//! `\n`. The index holds a big-endian `u32` symbol count, one big-endian `u32` file
//! offset of the defining member's header per symbol, then the NUL-terminated names.
//! Invariant: the member name fits the 16-byte field (`name/`), else it is truncated.

fn header(out: &mut Vec<u8>, name: &str, size: usize) {
    let field = |out: &mut Vec<u8>, s: &str, w: usize| {
        let mut b = s.as_bytes()[..s.len().min(w)].to_vec();
        b.resize(w, b' ');
        out.extend_from_slice(&b);
    };
    field(out, name, 16);
    field(out, "0", 12);
    field(out, "0", 6);
    field(out, "0", 6);
    field(out, "644", 8);
    field(out, &size.to_string(), 10);
    out.extend_from_slice(b"`\n");
}

/// An archive with one member `member` holding `object`, which defines `symbols`.
pub(super) fn archive(member: &str, object: &[u8], symbols: &[String]) -> Vec<u8> {
    let names: usize = symbols.iter().map(|s| s.len() + 1).sum();
    let index_len = 4 + 4 * symbols.len() + names;
    let index_padded = index_len + index_len % 2;
    let member_at = 8 + 60 + index_padded;
    let mut out = Vec::with_capacity(member_at + 60 + object.len() + 1);
    out.extend_from_slice(b"!<arch>\n");
    header(&mut out, "/", index_len);
    out.extend_from_slice(&(symbols.len() as u32).to_be_bytes());
    for _ in symbols {
        out.extend_from_slice(&(member_at as u32).to_be_bytes());
    }
    for s in symbols {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    if index_len % 2 == 1 {
        out.push(b'\n');
    }
    let mut short: String = member.chars().take(15).collect();
    short.push('/');
    header(&mut out, &short, object.len());
    out.extend_from_slice(object);
    if object.len() % 2 == 1 {
        out.push(b'\n');
    }
    out
}
