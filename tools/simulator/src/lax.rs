//! Request bodies read as Python backends read them: `json.loads` on the bytes, then truthiness and pydantic-lax numbers.

use serde_json::Value;

/// Parses a request body as Python's `json.loads(body_bytes)` would accept it, on top of strict
/// JSON: a leading UTF-8 BOM; the literals `NaN`, `Infinity`, `-Infinity`; numbers too large
/// for a double (Python reads them as infinity); lone UTF-16 surrogate escapes; and duplicate
/// keys (the last wins, as in a Python `dict`).
///
/// Non-finite numbers cannot live in a [`Value`], so they are read as the strings `"NaN"`,
/// `"Infinity"`, `"-Infinity"`: every field the simulator reads treats those exactly as Python
/// treats the numbers (truthy; no valid token limit). A lone surrogate becomes U+FFFD.
pub(super) fn parse_json(body: &[u8]) -> Result<Value, serde_json::Error> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    serde_json::from_slice(&rewrite_python_extensions(body))
}

/// Rewrites what Python accepts and serde_json does not into strict JSON, leaving everything
/// else (including errors) for serde_json to judge.
fn rewrite_python_extensions(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => i = copy_string(body, i, &mut out),
            b'N' if body[i..].starts_with(b"NaN") => {
                out.extend_from_slice(b"\"NaN\"");
                i += 3;
            }
            b'I' if body[i..].starts_with(b"Infinity") => {
                out.extend_from_slice(b"\"Infinity\"");
                i += 8;
            }
            b'-' if body[i..].starts_with(b"-Infinity") => {
                out.extend_from_slice(b"\"-Infinity\"");
                i += 9;
            }
            b'-' | b'0'..=b'9' => i = copy_number(body, i, &mut out),
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// Copies the number starting at `start`; one that overflows a double becomes `"Infinity"` or
/// `"-Infinity"`, as Python's `float()` reads it. Returns the index after it.
fn copy_number(body: &[u8], start: usize, out: &mut Vec<u8>) -> usize {
    let mut end = start + 1;
    while end < body.len() && matches!(body[end], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
        end += 1;
    }
    let token = &body[start..end];
    let overflows = std::str::from_utf8(token)
        .ok()
        .and_then(|text| text.parse::<f64>().ok())
        .is_some_and(f64::is_infinite);
    if overflows {
        out.extend_from_slice(if token[0] == b'-' {
            b"\"-Infinity\""
        } else {
            b"\"Infinity\""
        });
    } else {
        out.extend_from_slice(token);
    }
    end
}

/// Copies the string starting at the quote at `start`, replacing lone surrogate escapes with
/// `\ufffd`. Returns the index after the closing quote (or the end of an unterminated string).
fn copy_string(body: &[u8], start: usize, out: &mut Vec<u8>) -> usize {
    out.push(b'"');
    let mut i = start + 1;
    while i < body.len() {
        match body[i] {
            b'"' => {
                out.push(b'"');
                return i + 1;
            }
            b'\\' if body.get(i + 1) == Some(&b'u') => {
                let Some(unit) = escape_unit(body, i) else {
                    out.push(b'\\');
                    i += 1;
                    continue;
                };
                let pairs_with_next = (0xD800..0xDC00).contains(&unit)
                    && escape_unit(body, i + 6).is_some_and(|low| (0xDC00..0xE000).contains(&low));
                if pairs_with_next {
                    out.extend_from_slice(&body[i..i + 12]);
                    i += 12;
                } else if (0xD800..0xE000).contains(&unit) {
                    out.extend_from_slice(b"\\ufffd");
                    i += 6;
                } else {
                    out.extend_from_slice(&body[i..i + 6]);
                    i += 6;
                }
            }
            b'\\' => {
                out.extend_from_slice(&body[i..(i + 2).min(body.len())]);
                i += 2;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    body.len()
}

/// The code unit of a `\uXXXX` escape at `at`, if there is a well-formed one.
fn escape_unit(body: &[u8], at: usize) -> Option<u32> {
    let escape = body.get(at..at + 6)?;
    if &escape[..2] != b"\\u" {
        return None;
    }
    let digits = std::str::from_utf8(&escape[2..]).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

/// Python's truthiness, as `if body.get("stream"):` reads a field: `false`, `0`, `0.0`, `""`,
/// `null`, `[]`, `{}` and a missing field are false; everything else (`"false"` and `"0"`
/// included) is true.
pub(super) fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(items)) => !items.is_empty(),
        Some(Value::Object(fields)) => !fields.is_empty(),
    }
}

/// A count read as pydantic's lax mode and Python's `int()` would take it: an integer, a
/// boolean, a float (truncated toward zero) or a string holding one of those numbers.
/// `Ok(None)` for a missing or `null` field; an error for anything else, or a non-finite number.
pub(super) fn lax_integer(value: Option<&Value>) -> Result<Option<i128>, &'static str> {
    let from_float = |f: f64| {
        if f.is_finite() {
            // `as` saturates: a float beyond i128 is a limit no reply reaches anyway.
            Ok(Some(f.trunc() as i128))
        } else {
            Err("must be a finite number")
        }
    };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(i128::from(*b))),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Ok(Some(i128::from(i))),
            (None, Some(u)) => Ok(Some(i128::from(u))),
            (None, None) => from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Some(Value::String(text)) => {
            let text = text.trim();
            if let Ok(i) = text.parse::<i128>() {
                Ok(Some(i))
            } else if let Ok(f) = text.parse::<f64>() {
                from_float(f)
            } else {
                Err("must be a number")
            }
        }
        Some(Value::Array(_) | Value::Object(_)) => Err("must be a number"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parsed(body: &str) -> Value {
        parse_json(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    #[test]
    fn python_literals_outside_strings_are_accepted() {
        assert_eq!(
            parsed(r#"{"a": NaN, "b": [Infinity, -Infinity], "c": "NaN Infinity"}"#),
            json!({"a": "NaN", "b": ["Infinity", "-Infinity"], "c": "NaN Infinity"})
        );
        assert_eq!(parsed("NaN"), json!("NaN"));
        assert_eq!(
            parsed(r#"{"big": 1e400, "small": -1e999, "ok": -1.5e3, "int": 7}"#),
            json!({"big": "Infinity", "small": "-Infinity", "ok": -1500.0, "int": 7})
        );
    }

    #[test]
    fn strings_are_left_alone_except_lone_surrogates() {
        assert_eq!(
            parsed(r#"{"k": "say \"NaN\" \\ Infinity -1e999"}"#),
            json!({"k": "say \"NaN\" \\ Infinity -1e999"})
        );
        assert_eq!(parsed(r#""\ud83d\ude00""#), json!("\u{1F600}"));
        assert_eq!(parsed(r#""a\ud800b""#), json!("a\u{fffd}b"));
        assert_eq!(parsed(r#""\udc00\ud800""#), json!("\u{fffd}\u{fffd}"));
        assert_eq!(parsed(r#""\u0041""#), json!("A"));
    }

    #[test]
    fn a_bom_is_skipped_and_the_last_duplicate_key_wins() {
        let mut body = b"\xEF\xBB\xBF".to_vec();
        body.extend_from_slice(br#"{"model": "simulator", "model": "qwen3"}"#);
        assert_eq!(parse_json(&body).unwrap(), json!({"model": "qwen3"}));
    }

    #[test]
    fn what_python_refuses_is_still_refused() {
        for body in [
            "",
            "{",
            r#"{"a": nan}"#,
            r#"{"a": NaNa}"#,
            r#"{"a": 1} x"#,
            r#"{"a": 01}"#,
            r#"{'a': 1}"#,
            "\"unterminated",
            r#""bad \x escape""#,
        ] {
            assert!(parse_json(body.as_bytes()).is_err(), "{body:?} parsed");
        }
    }

    #[test]
    fn truthiness_is_pythons() {
        let truthy_values = [
            json!(true),
            json!(1),
            json!(-1),
            json!(0.5),
            json!("false"),
            json!("0"),
            json!(" "),
            json!("NaN"),
            json!([0]),
            json!({"a": false}),
        ];
        for value in truthy_values {
            assert!(truthy(Some(&value)), "{value} is truthy");
        }
        let falsy_values = [
            json!(false),
            json!(0),
            json!(0.0),
            json!(-0.0),
            json!(""),
            json!(null),
            json!([]),
            json!({}),
        ];
        for value in falsy_values {
            assert!(!truthy(Some(&value)), "{value} is falsy");
        }
        assert!(!truthy(None));
    }

    #[test]
    fn counts_accept_integers_floats_booleans_and_numeric_strings() {
        let cases = [
            (json!(5), Ok(Some(5))),
            (json!(5.9), Ok(Some(5))),
            (json!(-2.5), Ok(Some(-2))),
            (json!("7"), Ok(Some(7))),
            (json!(" 7.8 "), Ok(Some(7))),
            (json!("1e2"), Ok(Some(100))),
            (json!(true), Ok(Some(1))),
            (json!(u64::MAX), Ok(Some(i128::from(u64::MAX)))),
            (json!(null), Ok(None)),
            (json!("NaN"), Err("must be a finite number")),
            (json!("Infinity"), Err("must be a finite number")),
            (json!("ten"), Err("must be a number")),
            (json!([1]), Err("must be a number")),
        ];
        for (value, expected) in cases {
            assert_eq!(lax_integer(Some(&value)), expected, "reading {value}");
        }
        assert_eq!(lax_integer(None), Ok(None));
    }
}
