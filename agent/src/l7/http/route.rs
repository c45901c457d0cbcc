//! Routes: paths with their variable segments replaced, so span names and `http.route` stay
//! low-cardinality.

/// A path with its variable segments (numbers, UUIDs, long hex or mixed tokens) replaced by
/// `{id}`: a low-cardinality route such as `/orders/{id}/items`.
pub fn infer_route(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    push_route(path, &mut out);
    out
}

/// [`infer_route`], appended to `out` (no allocation when it has room).
pub fn push_route(path: &str, out: &mut String) {
    if !path.starts_with('/') {
        out.push('/');
        return;
    }
    let b = path.as_bytes();
    // Each segment follows its '/' (the first, before the leading '/', is empty).
    let mut start = 1;
    out.push('/');
    for end in memchr::memchr_iter(b'/', &b[1..])
        .map(|i| i + 1)
        .chain(std::iter::once(b.len()))
    {
        let seg = &path[start..end];
        if is_id(seg) {
            out.push_str("{id}");
        } else {
            out.push_str(seg);
        }
        if end < b.len() {
            out.push('/');
        }
        start = end + 1;
    }
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
