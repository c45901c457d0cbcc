//! Durations as users write them (`500us`, `20ms`, `5s`, `1m`, or a number of nanoseconds):
//! parsing, printing, and the serde forms the config files use. A leaf module: the CLI, the
//! config and the samplers all take their durations from here.
use std::time::Duration;

/// Parses `20ms`, `1s`, `500us`, or a bare number of nanoseconds.
pub fn parse(s: &str) -> Result<Duration, String> {
    if s.trim_start().starts_with('-') {
        return Err("a duration cannot be negative (examples: 500us, 20ms, 5s, 1m)".into());
    }
    if let Ok(ns) = s.parse::<u64>() {
        return Ok(Duration::from_nanos(ns));
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500us, 20ms, 5s, 1m)"))
}

/// `1s 500ms`-style text, as config files accept back.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Saturating nanoseconds.
pub fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// `Duration` fields written as text (`20ms`) or a number of nanoseconds.
pub mod serde_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Duration::from_nanos(n)),
            Raw::S(s) => super::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// `Option<Duration>` fields, as [`serde_text`].
pub mod serde_opt_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serde_text::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        // `null` (as --print-config writes an unset one) is None.
        #[derive(serde::Deserialize)]
        struct Wrap(#[serde(with = "super::serde_text")] Duration);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

/// `u64` nanosecond fields written as text or a number (the samplers' settings).
pub mod serde_ns {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*d)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        super::serde_text::deserialize(d).map(super::nanos)
    }
}

/// `Option<u64>` nanosecond fields, as [`serde_ns`].
pub mod serde_opt_ns {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(v) => s.serialize_u64(*v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(serde::Deserialize)]
        struct Wrap(#[serde(with = "super::serde_ns")] u64);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!(parse("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse("1500"), Ok(Duration::from_nanos(1500)));
        assert!(parse("-1s").is_err());
        assert!(parse("fast").is_err());
        assert_eq!(format(Duration::from_millis(2500)), "2s 500ms");
        assert_eq!(
            parse(&format(Duration::from_micros(1234))),
            Ok(Duration::from_micros(1234))
        );
        assert_eq!(nanos(Duration::MAX), u64::MAX);
    }
}
