//! Python's text forms of numbers, for files Keras users compare with theirs: `repr` of
//! a float ([`python_float`], NumPy's `str` of a float32 [`python_f32`]) and the part of
//! `str.format` that checkpoint paths use ([`format_path`]: `{epoch:02d}`,
//! `{val_loss:.4f}`, `{{`/`}}`, the format-spec mini-language for `d e E f F g G %` and
//! none, with fill, alignment, sign, `0` and width).

use super::Logs;
use crate::error::{Error, Result};

/// Python's `repr(float)`: the shortest digits that read back to `v`, positional for
/// exponents −4 … 15, else `d.ddde±XX`; integral values keep `.0`.
pub fn python_float(v: f64) -> String {
    if !v.is_finite() {
        return nonfinite(v, false);
    }
    shortest(&format!("{v:e}"))
}

/// NumPy's `str(np.float32(v))`: as [`python_float`] with float32's shortest digits.
pub fn python_f32(v: f32) -> String {
    if !v.is_finite() {
        return nonfinite(v as f64, false);
    }
    shortest(&format!("{v:e}"))
}

fn nonfinite(v: f64, upper: bool) -> String {
    let s = if v.is_nan() {
        "nan"
    } else if v > 0.0 {
        "inf"
    } else {
        "-inf"
    };
    if upper {
        s.to_uppercase()
    } else {
        s.to_string()
    }
}

/// Python's repr layout of a shortest-digits scientific string from Rust (`1.25e-5`).
fn shortest(sci: &str) -> String {
    let (mant, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mant) = match mant.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mant),
    };
    if !(-4..16).contains(&exp) {
        return format!(
            "{sign}{mant}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        );
    }
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let body = if exp >= 0 {
        let int_len = exp as usize + 1;
        let padded = format!("{digits:0<int_len$}");
        let (int, frac) = padded.split_at(int_len);
        format!("{int}.{}", if frac.is_empty() { "0" } else { frac })
    } else {
        format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
    };
    format!("{sign}{body}")
}

/// A value `str.format` is given: `epoch`/`batch` are Python ints, logs are floats.
#[derive(Clone, Copy, Debug)]
enum Value {
    Int(i64),
    Float(f64),
}

/// Formats `pattern` as Python's `pattern.format(epoch=epoch, batch=batch, **logs)`
/// (Keras's `ModelCheckpoint._get_file_path`; `epoch` and `batch` are already 1-based).
/// A placeholder naming nothing logged, or a format Python would refuse, is an error
/// naming the pattern.
pub fn format_path(
    pattern: &str,
    epoch: usize,
    batch: Option<usize>,
    logs: &Logs,
) -> Result<String> {
    let bad = |why: String| Error::Usage {
        detail: format!("Failed to format this callback filepath: \"{pattern}\". Reason: {why}"),
    };
    let lookup = |name: &str| -> Option<Value> {
        match name {
            "epoch" => Some(Value::Int(epoch as i64)),
            "batch" if batch.is_some() && logs.get("batch").is_none() => {
                batch.map(|b| Value::Int(b as i64))
            }
            _ => logs.get(name).map(Value::Float),
        }
    };
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let c = rest.as_bytes()[i];
        let next = rest.as_bytes().get(i + 1).copied();
        if next == Some(c) {
            out.push(c as char);
            rest = &rest[i + 2..];
            continue;
        }
        if c == b'}' {
            return Err(bad("Single '}' encountered in format string".into()));
        }
        let end = rest[i..]
            .find('}')
            .ok_or_else(|| bad("Single '{' encountered in format string".into()))?;
        let field = &rest[i + 1..i + end];
        let (name, spec) = field.split_once(':').unwrap_or((field, ""));
        let value = lookup(name).ok_or_else(|| bad(format!("'{name}'")))?;
        out.push_str(&format_value(value, spec).map_err(bad)?);
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A parsed format spec `[[fill]align][sign][0][width][.precision][type]`.
struct Spec {
    fill: char,
    align: Option<char>,
    sign: char,
    width: usize,
    precision: Option<usize>,
    kind: Option<char>,
}

fn parse_spec(spec: &str) -> std::result::Result<Spec, String> {
    let chars: Vec<char> = spec.chars().collect();
    let mut i = 0;
    let is_align = |c: char| matches!(c, '<' | '>' | '^' | '=');
    let (mut fill, mut align) = (' ', None);
    if chars.len() >= 2 && is_align(chars[1]) {
        (fill, align) = (chars[0], Some(chars[1]));
        i = 2;
    } else if chars.first().copied().is_some_and(is_align) {
        align = Some(chars[0]);
        i = 1;
    }
    let mut sign = '-';
    if let Some(&c @ ('+' | '-' | ' ')) = chars.get(i) {
        sign = c;
        i += 1;
    }
    if chars.get(i) == Some(&'0') {
        if align.is_none() {
            (fill, align) = ('0', Some('='));
        }
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while chars.get(*i).is_some_and(|c| c.is_ascii_digit()) {
            *i += 1;
        }
        chars[start..*i]
            .iter()
            .collect::<String>()
            .parse::<usize>()
            .ok()
    };
    let width = digits(&mut i).unwrap_or(0);
    let mut precision = None;
    if chars.get(i) == Some(&'.') {
        i += 1;
        precision = Some(digits(&mut i).ok_or("Format specifier missing precision")?);
    }
    let kind = chars.get(i).copied();
    if kind.is_some() && i + 1 != chars.len() {
        return Err(format!("Invalid format specifier '{spec}'"));
    }
    Ok(Spec {
        fill,
        align,
        sign,
        width,
        precision,
        kind,
    })
}

fn format_value(v: Value, spec: &str) -> std::result::Result<String, String> {
    let s = parse_spec(spec)?;
    let (negative, body) = match (v, s.kind) {
        (Value::Int(n), None | Some('d')) => {
            if s.precision.is_some() {
                return Err("Precision not allowed in integer format specifier".into());
            }
            (n < 0, n.unsigned_abs().to_string())
        }
        (Value::Float(_), Some('d')) => {
            return Err("Unknown format code 'd' for object of type 'float'".into())
        }
        (Value::Int(n), Some(k)) => float_body(n as f64, k, s.precision)?,
        (Value::Float(x), None) => match s.precision {
            None => (x.is_sign_negative() && !x.is_nan(), python_float(x.abs())),
            Some(p) => {
                let (neg, mut b) = float_body(x, 'g', Some(p))?;
                if x.is_finite() && !b.contains(['.', 'e']) {
                    b.push_str(".0");
                }
                (neg, b)
            }
        },
        (Value::Float(x), Some(k)) => float_body(x, k, s.precision)?,
    };
    let sign = match (negative, s.sign) {
        (true, _) => "-",
        (false, '+') => "+",
        (false, ' ') => " ",
        _ => "",
    };
    let len = sign.chars().count() + body.chars().count();
    let pad = s.width.saturating_sub(len);
    let fill = |n: usize| s.fill.to_string().repeat(n);
    Ok(match s.align.unwrap_or('>') {
        '<' => format!("{sign}{body}{}", fill(pad)),
        '^' => format!("{}{sign}{body}{}", fill(pad / 2), fill(pad - pad / 2)),
        '=' => format!("{sign}{}{body}", fill(pad)),
        _ => format!("{}{sign}{body}", fill(pad)),
    })
}

/// `(negative, digits)` of `x` in presentation type `kind`.
fn float_body(
    x: f64,
    kind: char,
    precision: Option<usize>,
) -> std::result::Result<(bool, String), String> {
    let upper = kind.is_ascii_uppercase();
    let neg = x.is_sign_negative() && !x.is_nan();
    let a = x.abs();
    if !a.is_finite() {
        let t = nonfinite(a, upper);
        return Ok((neg, if kind == '%' { t + "%" } else { t }));
    }
    let p = precision.unwrap_or(6);
    let body = match kind.to_ascii_lowercase() {
        'f' => format!("{a:.p$}"),
        'e' => sci(a, p),
        'g' => general(a, p),
        '%' => format!("{:.p$}%", a * 100.0),
        _ => {
            return Err(format!(
                "Unknown format code '{kind}' for object of type 'float'"
            ))
        }
    };
    Ok((neg, if upper { body.to_uppercase() } else { body }))
}

/// `{:.pe}` with Python's exponent (sign and at least two digits).
fn sci(a: f64, p: usize) -> String {
    let s = format!("{a:.p$e}");
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = e.parse().unwrap_or(0);
    format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

/// Python's `g`: `p` significant digits, scientific when the exponent is < −4 or ≥ p,
/// trailing zeros removed.
fn general(a: f64, p: usize) -> String {
    let p = p.max(1);
    let s = format!("{a:.prec$e}", prec = p - 1);
    let exp: i32 = s
        .split_once('e')
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    let strip = |t: String| {
        if t.contains('.') {
            t.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            t
        }
    };
    if exp < -4 || exp >= p as i32 {
        let t = sci(a, p - 1);
        let (m, e) = t.split_once('e').unwrap_or((&t, ""));
        format!("{}e{e}", strip(m.to_string()))
    } else {
        let decimals = (p as i32 - 1 - exp).max(0) as usize;
        strip(format!("{a:.decimals$}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_as_python() {
        for (v, want) in [
            (0.1, "0.1"),
            (1.0, "1.0"),
            (100.0, "100.0"),
            (1e-5, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (123456789012345.6, "123456789012345.6"),
            (-2.5, "-2.5"),
            (0.6168123483657837, "0.6168123483657837"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            assert_eq!(python_float(v), want, "{v}");
        }
        assert_eq!(python_f32(0.03), "0.03");
        assert_eq!(python_f32(0.004), "0.004");
        assert_eq!(python_float(0.03f32 as f64), "0.029999999329447746");
    }

    fn logs() -> Logs {
        let mut l = Logs::new();
        l.set("loss", 0.123456);
        l.set("val_loss", 0.98765);
        l.set("val_acc", -0.5);
        l
    }

    #[test]
    fn checkpoint_paths_as_python_format() {
        let l = logs();
        for (pattern, want) in [
            ("w.{epoch:02d}-{val_loss:.2f}.h5", "w.03-0.99.h5"),
            ("m_{epoch}.keras", "m_3.keras"),
            ("{loss:.4f}", "0.1235"),
            ("{loss}", "0.123456"),
            ("{val_loss:.3e}", "9.877e-01"),
            ("{val_loss:.3}", "0.988"),
            ("{val_loss:g}", "0.98765"),
            (
                "{val_acc:+.1f}|{epoch:>4}|{epoch:<3}|{epoch:^5}|{epoch:*^5}",
                "-0.5|   3|3  |  3  |**3**",
            ),
            ("{val_acc:08.3f}", "-000.500"),
            ("{loss:.1%}", "12.3%"),
            ("{{epoch}}-{epoch:03}", "{epoch}-003"),
            ("{epoch:.2f}", "3.00"),
        ] {
            assert_eq!(
                format_path(pattern, 3, None, &l).expect(pattern),
                want,
                "{pattern}"
            );
        }
        assert_eq!(
            format_path("b{batch}", 3, Some(7), &l).expect("batch"),
            "b7"
        );
        for bad in [
            "{mae}",
            "{loss:d}",
            "{epoch",
            "x}",
            "{epoch:.2d}",
            "{loss:q}",
            "{batch}",
        ] {
            assert!(format_path(bad, 1, None, &l).is_err(), "{bad}");
        }
    }

    #[test]
    fn general_format_switches_like_python() {
        assert_eq!(general(123456.0, 6), "123456");
        assert_eq!(general(1234567.0, 6), "1.23457e+06");
        assert_eq!(general(0.0001, 6), "0.0001");
        assert_eq!(general(0.00001234, 3), "1.23e-05");
        assert_eq!(general(0.5, 6), "0.5");
    }
}
