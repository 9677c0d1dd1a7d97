//! A fast path for the `.npy` headers numpy itself writes.
//!
//! ndarray-npy parses headers with a general Python-literal grammar (pest): correct for
//! any header, but tens of microseconds each, which an `.npz` of 150,000 entries pays
//! several times over. numpy writes one exact form,
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with spaces and a
//! newline (ndarray-npy the same without the last `, `); this module recognises exactly
//! those forms (it rebuilds the canonical text
//! from what it read and compares), and answers `None` for anything else, which then
//! goes to the general parser. So the fast path can only accept what the general one
//! would parse to the same values.

/// What a canonical numpy header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FastHeader {
    /// The dtype descriptor (`<f4`).
    pub(crate) descr: String,
    /// Whether the data is in Fortran order.
    pub(crate) fortran: bool,
    /// The shape.
    pub(crate) shape: Vec<usize>,
    /// Bytes of the whole header (magic, version, length and dictionary).
    pub(crate) len: usize,
}

/// Parses `bytes` (the start of a `.npy` image) if its header has numpy's exact form.
pub(crate) fn numpy_header(bytes: &[u8]) -> Option<FastHeader> {
    if bytes.get(..6)? != b"\x93NUMPY" {
        return None;
    }
    let (start, dict_len): (usize, usize) = match bytes.get(6)? {
        1 => (
            10,
            usize::from(u16::from_le_bytes([*bytes.get(8)?, *bytes.get(9)?])),
        ),
        2 | 3 => {
            let b = bytes.get(8..12)?;
            (
                12,
                usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok()?,
            )
        }
        _ => return None,
    };
    let end = start.checked_add(dict_len)?;
    let text = std::str::from_utf8(bytes.get(start..end)?).ok()?;
    let dict = text.trim_end_matches([' ', '\n']);
    let rest = dict.strip_prefix("{'descr': '")?;
    let (descr, rest) = rest.split_once('\'')?;
    let rest = rest.strip_prefix(", 'fortran_order': ")?;
    let (fortran, rest) = if let Some(r) = rest.strip_prefix("True") {
        (true, r)
    } else {
        (false, rest.strip_prefix("False")?)
    };
    let rest = rest.strip_prefix(", 'shape': (")?;
    let (dims, _) = rest.split_once(')')?;
    let shape = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            // Plain decimal digits only: no sign, no underscores, no leading zeros.
            let ok = d.bytes().all(|c| c.is_ascii_digit()) && (d == "0" || !d.starts_with('0'));
            ok.then(|| d.parse::<usize>().ok()).flatten()
        })
        .collect::<Option<Vec<usize>>>()?;
    let body = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {}",
        if fortran { "True" } else { "False" },
        shape_literal(&shape)
    );
    // numpy ends the dictionary with `, }`, ndarray-npy (lcjit's own writer) with `}`.
    let canonical = dict
        .strip_prefix(body.as_str())
        .is_some_and(|end| end == ", }" || end == "}");
    canonical.then(|| FastHeader {
        descr: descr.to_owned(),
        fortran,
        shape,
        len: end,
    })
}

/// A shape as Python writes a tuple: `()`, `(3,)`, `(2, 3)`.
fn shape_literal(shape: &[usize]) -> String {
    match shape {
        [] => "()".to_owned(),
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dict: &str) -> Vec<u8> {
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out
    }

    #[test]
    fn numpy_forms_are_read_and_others_left_to_the_general_parser() {
        let h = numpy_header(&image(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }   \n",
        ))
        .expect("canonical");
        assert_eq!(
            (h.descr.as_str(), h.fortran, h.shape.as_slice()),
            ("<f4", false, &[2usize, 3][..])
        );
        let h = numpy_header(&image(
            "{'descr': '|b1', 'fortran_order': True, 'shape': (7,), }\n",
        ))
        .expect("1-d");
        assert_eq!(h.shape, [7]);
        let h = numpy_header(&image(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (), }\n",
        ))
        .expect("0-d");
        assert!(h.shape.is_empty());
        for other in [
            "{'shape': (2, 3), 'descr': '<f4', 'fortran_order': False, }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,3), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 3), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (02, 3), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1, }",
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }",
        ] {
            assert_eq!(numpy_header(&image(other)), None, "{other}");
        }
    }
}
