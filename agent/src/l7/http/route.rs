//! Routes: paths with their variable segments replaced, so span names and `http.route` stay
//! low-cardinality.

/// A path with its variable segments (numbers, UUIDs, long hex or mixed tokens) replaced by
/// `{id}`: a low-cardinality route such as `/orders/{id}/items`.
pub fn infer_route(path: &str) -> String {
    if path.is_empty() || !path.starts_with('/') {
        return "/".into();
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if is_id(seg) {
            out.push_str("{id}");
        } else {
            out.push_str(seg);
        }
    }
    out
}

fn is_id(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    let b = seg.as_bytes();
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    // UUID: 8-4-4-4-12 hex digits.
    if b.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b.iter()
            .enumerate()
            .all(|(i, c)| [8, 13, 18, 23].contains(&i) || c.is_ascii_hexdigit())
    {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    // Hex ids (object ids, hashes) of 16 or more digits with at least one number.
    if b.len() >= 16 && digits > 0 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    // Long tokens mixing letters and digits, and masked values.
    (b.len() >= 20
        && digits > 0
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_'))
        || seg == crate::l7::redact::MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_replace_variable_segments() {
        for (path, route) in [
            ("/orders/42", "/orders/{id}"),
            ("/orders/42/items/7", "/orders/{id}/items/{id}"),
            ("/u/123e4567-e89b-12d3-a456-426614174000", "/u/{id}"),
            ("/obj/5f9b2c3a1d4e6f7a8b9c0d1e", "/obj/{id}"),
            ("/t/abcdefghij0123456789xyz", "/t/{id}"),
            ("/static/app.css", "/static/app.css"),
            ("/v1/traces", "/v1/traces"),
            ("/", "/"),
            ("", "/"),
            ("/mail/***", "/mail/{id}"),
        ] {
            assert_eq!(infer_route(path), route, "{path}");
        }
    }
}
