//! Masking of personal data and secrets in captured text (URL paths and query strings) before
//! it becomes a span attribute.
//!
//! Each pattern is a regular expression; every match is replaced by `***`. A pattern with a
//! capture group named `keep` keeps that group's text (`token=` of `token=abc` stays, so the
//! span still says which parameter was there). The defaults cover e-mail addresses, phone
//! numbers, payment card numbers, national id shapes (US SSN, UK NINO) and the values of
//! `api_key=`, `token=`, `secret=`, `password=` and similar parameters. `http.redact` replaces
//! them; `[]` turns masking off.
use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};

/// What a match becomes.
pub const MASK: &str = "***";

/// One configured pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pattern {
    pub name: String,
    /// A regular expression (Rust `regex` syntax). A group named `keep` is kept.
    pub regex: String,
}

/// The default patterns, in the order they are applied (secrets first: `token=a@b.c` keeps
/// `token=`).
pub fn default_patterns() -> Vec<Pattern> {
    let p = |name: &str, regex: &str| Pattern {
        name: name.into(),
        regex: regex.into(),
    };
    vec![
        p(
            "secret_parameter",
            r"(?i)(?P<keep>\b(?:api[_-]?key|apikey|access[_-]?token|refresh[_-]?token|id[_-]?token|token|secret|client[_-]?secret|password|passwd|pwd|auth|session[_-]?id|sig|signature)=)[^&;#\s]+",
        ),
        p(
            "email",
            r"(?i)[a-z0-9._%+\-]+(?:@|%40)[a-z0-9.\-]+\.[a-z]{2,}",
        ),
        p("card_number", r"\b(?:\d(?:[ \-]|%20)?){12,18}\d\b"),
        p("us_ssn", r"\b\d{3}-\d{2}-\d{4}\b"),
        p(
            "uk_nino",
            r"(?i)\b[a-ceghj-pr-tw-z][a-ceghj-npr-tw-z]\d{6}[a-d]\b",
        ),
        // International form (+ or %2B, then digits with separators), or the North American
        // 3-3-4 form. Bare runs of digits are left alone: they are more often ids.
        p(
            "phone",
            r"(?:\+|%2[bB])\d(?:[\d\-.()]|%20){6,}\d|\(?\b\d{3}\)?[\-. ]\d{3}[\-. ]\d{4}\b",
        ),
    ]
}

#[derive(Debug, thiserror::Error)]
#[error("http.redact pattern {name:?}: {source}")]
pub struct RedactError {
    pub name: String,
    #[source]
    pub source: regex::Error,
}

/// Compiled patterns.
#[derive(Debug, Clone)]
pub struct Redactor {
    any: RegexSet,
    each: Vec<(Regex, bool)>,
    /// The patterns are the defaults: text none of them can match is known without running
    /// them ([`could_match_defaults`]).
    defaults: bool,
}

/// Whether text could hold what a default pattern masks: every one needs an `=`, `@`, `%`
/// or `+`, or at least six digits (a NINO has six, the others more). Most paths have none,
/// and pass without a regex.
fn could_match_defaults(text: &str) -> bool {
    let mut digits = 0;
    for b in text.bytes() {
        match b {
            b'=' | b'@' | b'%' | b'+' => return true,
            b'0'..=b'9' => {
                digits += 1;
                if digits >= 6 {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new(&default_patterns()).expect("the default patterns compile")
    }
}

impl Redactor {
    pub fn new(patterns: &[Pattern]) -> Result<Redactor, RedactError> {
        let each = patterns
            .iter()
            .map(|p| {
                Regex::new(&p.regex)
                    .map(|r| {
                        let keep = r.capture_names().any(|n| n == Some("keep"));
                        (r, keep)
                    })
                    .map_err(|source| RedactError {
                        name: p.name.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let any =
            RegexSet::new(patterns.iter().map(|p| &p.regex)).map_err(|source| RedactError {
                name: "(all)".into(),
                source,
            })?;
        Ok(Redactor {
            any,
            each,
            defaults: patterns == default_patterns().as_slice(),
        })
    }

    /// `text` with every match masked. Text that matches nothing is returned as is, after one
    /// pass of the combined pattern set.
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if self.each.is_empty()
            || (self.defaults && !could_match_defaults(text))
            || !self.any.is_match(text)
        {
            return std::borrow::Cow::Borrowed(text);
        }
        let mut out = text.to_string();
        for (re, keep) in &self.each {
            let replaced = if *keep {
                re.replace_all(&out, format!("${{keep}}{MASK}").as_str())
            } else {
                re.replace_all(&out, MASK)
            };
            if let std::borrow::Cow::Owned(s) = replaced {
                out = s;
            }
        }
        std::borrow::Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> String {
        Redactor::default().redact(s).into_owned()
    }

    /// The prefilter never skips text a default pattern would mask.
    #[test]
    fn the_prefilter_agrees_with_the_defaults() {
        let any = RegexSet::new(default_patterns().iter().map(|p| &p.regex)).unwrap();
        for text in [
            "/orders/12345",
            "/a/b/c",
            "/u/AB123456C",
            "/x?tel=555-123-4567",
            "/jane@example.com",
            "/token=abc",
            "/tel/+4420",
            "/12345-6789",
            "/mail/jane%40x.org",
        ] {
            if any.is_match(text) {
                assert!(could_match_defaults(text), "{text}");
            }
        }
        assert!(!could_match_defaults("/orders/1234/items/7"));
    }

    proptest::proptest! {
        #[test]
        fn the_prefilter_skips_nothing_the_defaults_mask(text in "[a-zA-Z0-9/._@%=+ -]{0,40}") {
            let any = RegexSet::new(default_patterns().iter().map(|p| &p.regex)).unwrap();
            if any.is_match(&text) {
                proptest::prop_assert!(could_match_defaults(&text));
            }
        }
    }

    #[test]
    fn each_default_pattern_masks_its_shape() {
        assert_eq!(r("to=jane.doe@example.com&x=1"), "to=***&x=1");
        assert_eq!(r("to=jane.doe%40example.com"), "to=***");
        assert_eq!(r("card=4111 1111 1111 1111"), "card=***");
        assert_eq!(r("card=4111-1111-1111-1111&ok=1"), "card=***&ok=1");
        assert_eq!(r("card=4111111111111111"), "card=***");
        assert_eq!(r("ssn=123-45-6789"), "ssn=***");
        assert_eq!(r("nino=AB123456C"), "nino=***");
        assert_eq!(r("tel=555-123-4567"), "tel=***");
        assert_eq!(r("tel=+44%2020%207946%200958"), "tel=***");
        assert_eq!(r("tel=+1-202-555-0143"), "tel=***");
        assert_eq!(r("api_key=abc123&q=shoes"), "api_key=***&q=shoes");
        assert_eq!(r("token=eyJhbGciOi.x.y"), "token=***");
        assert_eq!(r("Secret=s3cr3t"), "Secret=***");
        assert_eq!(r("password=hunter2;x"), "password=***;x");
        assert_eq!(r("access_token=a%40b.cc"), "access_token=***");
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        for s in [
            "/orders/42",
            "page=2&sort=price",
            "/api/v1/items/123e4567-e89b-12d3-a456-426614174000",
            "q=shoes+size+42",
            "tokens=5",
            "id=426614174000",
        ] {
            assert_eq!(r(s), s, "{s}");
        }
    }

    #[test]
    fn configured_patterns_replace_the_defaults() {
        let red = Redactor::new(&[Pattern {
            name: "order".into(),
            regex: r"(?P<keep>order=)\d+".into(),
        }])
        .unwrap();
        assert_eq!(
            red.redact("order=77&email=a@b.com"),
            "order=***&email=a@b.com"
        );
        assert_eq!(Redactor::new(&[]).unwrap().redact("a@b.com"), "a@b.com");
        let err = Redactor::new(&[Pattern {
            name: "bad".into(),
            regex: "(".into(),
        }])
        .unwrap_err();
        assert!(err.to_string().starts_with("http.redact pattern \"bad\""));
    }
}
