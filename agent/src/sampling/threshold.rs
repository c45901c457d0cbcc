//! OpenTelemetry consistent probability sampling: 56-bit randomness R, rejection threshold T,
//! keep iff R >= T, and the `ot=th:...;rv:...` entry of the W3C trace state.
//!
//! Follows the specification's "tracestate probability sampling" document and the
//! collector's `pkg/sampling` (precision handling, encoding, adjusted counts).

/// 2^56: the threshold that rejects everything, and the number of randomness values.
pub const MAX_THRESHOLD: u64 = 1 << 56;
/// Hex digits of a full threshold or randomness value.
pub const NUM_HEX_DIGITS: u32 = 14;
/// Default threshold precision in hex digits (the specification recommends 4).
pub const DEFAULT_PRECISION: u32 = 4;

/// A rejection threshold in [0, 2^56]: 0 keeps everything, 2^56 nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Threshold(u64);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ThresholdError {
    #[error("sampling probability {0} is outside [2^-56, 1]")]
    Range(f64),
    #[error("threshold {0:?} is not 1 to 14 hex digits")]
    BadThreshold(String),
    #[error("randomness {0:?} is not 14 hex digits")]
    BadRandomness(String),
}

impl Threshold {
    pub const ALWAYS: Threshold = Threshold(0);
    pub const NEVER: Threshold = Threshold(MAX_THRESHOLD);

    pub fn from_raw(t: u64) -> Threshold {
        Threshold(t.min(MAX_THRESHOLD))
    }

    pub fn raw(self) -> u64 {
        self.0
    }

    /// The threshold for probability `p`, rounded to `precision` significant hex digits
    /// (more near 0 and 1, as the collector does), so that the `th` written is exactly the
    /// decision made.
    pub fn from_probability(p: f64, precision: u32) -> Result<Threshold, ThresholdError> {
        if p.is_nan() || p < 1.0 / MAX_THRESHOLD as f64 || p > 1.0 {
            return Err(ThresholdError::Range(p));
        }
        if p == 1.0 {
            return Ok(Threshold::ALWAYS);
        }
        let exp_f = frexp_exp(p);
        let exp_r = frexp_exp(1.0 - p);
        let precision = NUM_HEX_DIGITS
            .min((precision as i32 + exp_f / -4).max(precision as i32 + exp_r / -4) as u32);
        let scaled = (p * MAX_THRESHOLD as f64).round() as u64;
        let mut t = MAX_THRESHOLD - scaled;
        let shift = 4 * (NUM_HEX_DIGITS - precision);
        if shift != 0 {
            let half = 1u64 << (shift - 1);
            t = ((t + half) >> shift) << shift;
        }
        Ok(Threshold(t.min(MAX_THRESHOLD - 1)))
    }

    /// Like `from_probability`, clamping `p` into the valid range (0 and below: never; NaN:
    /// never).
    pub fn from_probability_clamped(p: f64, precision: u32) -> Threshold {
        if p.is_nan() || p <= 0.0 {
            return Threshold::NEVER;
        }
        Threshold::from_probability(p.clamp(1.0 / MAX_THRESHOLD as f64, 1.0), precision)
            .unwrap_or(Threshold::NEVER)
    }

    /// Keep probability.
    pub fn probability(self) -> f64 {
        (MAX_THRESHOLD - self.0) as f64 / MAX_THRESHOLD as f64
    }

    /// How many spans a kept span stands for: 2^56 / (2^56 - T). Infinite for NEVER.
    pub fn adjusted_count(self) -> f64 {
        if self.0 >= MAX_THRESHOLD {
            return f64::INFINITY;
        }
        MAX_THRESHOLD as f64 / (MAX_THRESHOLD - self.0) as f64
    }

    pub fn keeps(self, r: Randomness) -> bool {
        r.0 >= self.0
    }

    /// The `th` value: hex without trailing zeros, "0" for ALWAYS. None for NEVER (not a
    /// probability).
    pub fn encode(self) -> Option<String> {
        if self.0 >= MAX_THRESHOLD {
            return None;
        }
        if self.0 == 0 {
            return Some("0".to_string());
        }
        let s = format!("{:014x}", self.0);
        Some(s.trim_end_matches('0').to_string())
    }

    /// Parses a `th` value: 1 to 14 hex digits, missing trailing digits are zeros.
    pub fn parse(s: &str) -> Result<Threshold, ThresholdError> {
        if s.is_empty()
            || s.len() > NUM_HEX_DIGITS as usize
            || !s.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(ThresholdError::BadThreshold(s.to_string()));
        }
        let v = u64::from_str_radix(s, 16).map_err(|_| ThresholdError::BadThreshold(s.into()))?;
        Ok(Threshold(v << (4 * (NUM_HEX_DIGITS - s.len() as u32))))
    }
}

/// `math.Frexp`'s exponent: x = m * 2^e with m in [0.5, 1).
fn frexp_exp(x: f64) -> i32 {
    if x == 0.0 || !x.is_finite() {
        return 0;
    }
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    if exp == 0 {
        // Subnormal: normalize.
        return frexp_exp(x * (1u64 << 54) as f64) - 54;
    }
    exp - 1022
}

/// 56 bits of randomness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Randomness(u64);

impl Randomness {
    pub fn from_raw(r: u64) -> Randomness {
        Randomness(r & (MAX_THRESHOLD - 1))
    }

    pub fn raw(self) -> u64 {
        self.0
    }

    /// The low 56 bits of a trace id (W3C level 2 random trace ids).
    pub fn from_trace_id(id: [u8; 16]) -> Randomness {
        let mut b = [0u8; 8];
        b[1..].copy_from_slice(&id[9..16]);
        Randomness(u64::from_be_bytes(b))
    }

    /// Parses an `rv` value: exactly 14 hex digits.
    pub fn parse(s: &str) -> Result<Randomness, ThresholdError> {
        if s.len() != NUM_HEX_DIGITS as usize || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ThresholdError::BadRandomness(s.to_string()));
        }
        u64::from_str_radix(s, 16)
            .map(Randomness)
            .map_err(|_| ThresholdError::BadRandomness(s.into()))
    }

    pub fn encode(self) -> String {
        format!("{:014x}", self.0)
    }
}

/// The OpenTelemetry entry (`ot=`) of a W3C trace state: `th`, `rv` and other sub-keys kept
/// as they were.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OtTraceState {
    pub threshold: Option<Threshold>,
    pub randomness: Option<Randomness>,
    /// Other `key:value` pairs, in order.
    pub rest: Vec<(String, String)>,
}

impl OtTraceState {
    /// Parses the value of the `ot` key (`th:8;rv:...`). Malformed `th`/`rv` values are
    /// dropped (the specification says to ignore them), other keys are kept.
    pub fn parse(value: &str) -> OtTraceState {
        let mut out = OtTraceState::default();
        for part in value.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once(':') else {
                continue;
            };
            match k {
                "th" => out.threshold = Threshold::parse(v).ok(),
                "rv" => out.randomness = Randomness::parse(v).ok(),
                _ => out.rest.push((k.to_string(), v.to_string())),
            }
        }
        out
    }

    pub fn encode(&self) -> String {
        let mut parts = Vec::new();
        if let Some(th) = self.threshold.and_then(Threshold::encode) {
            parts.push(format!("th:{th}"));
        }
        if let Some(rv) = self.randomness {
            parts.push(format!("rv:{}", rv.encode()));
        }
        for (k, v) in &self.rest {
            parts.push(format!("{k}:{v}"));
        }
        parts.join(";")
    }

    /// Removes a `th` that contradicts the randomness (a kept span with R < T cannot have
    /// been sampled with that threshold): its adjusted count would be wrong.
    pub fn erase_inconsistent(&mut self, r: Randomness) -> bool {
        if self.threshold.is_some_and(|t| !t.keeps(r)) {
            self.threshold = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn th(p: f64, prec: u32) -> String {
        Threshold::from_probability(p, prec)
            .unwrap()
            .encode()
            .unwrap()
    }

    /// The specification's table (1-in-N at precision 3, 4 and 5).
    #[test]
    fn specification_table() {
        #[rustfmt::skip]
        let table: &[(f64, [&str; 3], [f64; 3])] = &[
            (1e-6, ["ffffef4", "ffffef39", "ffffef391"], [1.0016248358208955e6, 999992.38556461, 1.0000069374699865e6]),
            (1e-5, ["ffff584", "ffff583a", "ffff583a5"], [100013.21013412817, 99999.238556461, 99999.96614643588]),
            (1e-4, ["fff972", "fff9724", "fff97247"], [9998.340882002383, 9999.830725674266, 9999.99370426336]),
            (1e-3, ["ffbe7", "ffbe77", "ffbe76d"], [999.5958055290753, 1000.012874769029, 1000.0016987352618]),
            (0.01, ["fd71", "fd70a", "fd70a4"], [100.05496183206107, 99.99771123402633, 100.00009536752259]),
            (0.0625, ["f", "f", "f"], [16.0; 3]),
            (0.1, ["e66", "e666", "e6666"], [9.990243902439024, 9.99938968568813, 9.999961853172863]),
            (0.125, ["e", "e", "e"], [8.0; 3]),
            (0.2, ["ccd", "cccd", "ccccd"], [5.001221001221001, 5.0000762951094835, 5.0000047683761295]),
            (0.25, ["c", "c", "c"], [4.0; 3]),
            (1.0 / 3.0, ["aab", "aaab", "aaaab"], [3.0007326007326007, 3.00004577706569, 3.0000028610256777]),
            (0.5, ["8", "8", "8"], [2.0; 3]),
            (1.0, ["0", "0", "0"], [1.0; 3]),
        ];
        for (p, ths, counts) in table {
            for (i, prec) in [3, 4, 5].into_iter().enumerate() {
                assert_eq!(th(*p, prec), ths[i], "p={p} precision {prec}");
                let t = Threshold::parse(ths[i]).unwrap();
                let rel = (t.adjusted_count() - counts[i]).abs() / counts[i];
                assert!(
                    rel < 1e-9,
                    "p={p} prec {prec}: {} vs {}",
                    t.adjusted_count(),
                    counts[i]
                );
            }
        }
    }

    #[test]
    fn issue_examples() {
        assert_eq!(th(1.0, 4), "0");
        assert_eq!(th(0.5, 4), "8");
        assert_eq!(th(0.25, 4), "c");
        assert_eq!(th(0.01, 4), "fd70a");
        // 1 % with 5 significant digits (at precision 4 the leading f adds one): fd70a and
        // nine zeros. (The specification's prose example prints 0xfd70a00000000, one zero
        // short, from 0.99 * 2^52; its table and the collector agree on `fd70a`.)
        assert_eq!(
            Threshold::from_probability(0.01, 4).unwrap().raw(),
            0xfd70a000000000
        );
        assert_eq!(Threshold::parse("8").unwrap().adjusted_count(), 2.0);
        assert!(Threshold::from_probability(0.0, 4).is_err());
        assert!(Threshold::from_probability(1.5, 4).is_err());
        assert_eq!(Threshold::NEVER.encode(), None);
    }

    #[test]
    fn parsing_what_others_wrote() {
        let ot = OtTraceState::parse("th:c;rv:0123456789abcd;x:y");
        assert_eq!(ot.threshold, Some(Threshold::from_raw(0xc << 52)));
        assert_eq!(ot.randomness, Some(Randomness::from_raw(0x0123456789abcd)));
        assert_eq!(ot.rest, vec![("x".into(), "y".into())]);
        assert_eq!(ot.encode(), "th:c;rv:0123456789abcd;x:y");
        // Malformed values are ignored, not errors.
        let ot = OtTraceState::parse("th:xyz;rv:12;th2:1");
        assert_eq!(ot.threshold, None);
        assert_eq!(ot.randomness, None);
        assert!(Threshold::parse("123456789abcdef").is_err());
        assert!(Threshold::parse("").is_err());
        // Erasing an inconsistent th: R below T means this span could not have been kept.
        let mut ot = OtTraceState::parse("th:8;rv:10000000000000");
        let r = ot.randomness.unwrap();
        assert!(ot.erase_inconsistent(r));
        assert_eq!(ot.encode(), "rv:10000000000000");
        let mut ok = OtTraceState::parse("th:8;rv:90000000000000");
        assert!(!ok.erase_inconsistent(ok.randomness.unwrap()));
    }

    #[test]
    fn randomness_from_trace_id() {
        let id = [
            0u8, 1, 2, 3, 4, 5, 6, 7, 8, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x11,
        ];
        assert_eq!(Randomness::from_trace_id(id).raw(), 0xaabbccddeeff11);
        let t = Threshold::parse("8").unwrap();
        assert!(t.keeps(Randomness::from_raw(0x80000000000000)));
        assert!(!t.keeps(Randomness::from_raw(0x7fffffffffffff)));
        assert!(Threshold::ALWAYS.keeps(Randomness::from_raw(0)));
        assert!(!Threshold::NEVER.keeps(Randomness::from_raw(MAX_THRESHOLD - 1)));
    }
}
