//! Small value parsers shared by validation and by the kinds that check their own settings:
//! durations, ratios, file modes, outbound URLs.

use std::time::Duration;

/// `90s`, `5m`, `24h`, `30d`, `1h 30m`. Zero is refused: every duration keyturn takes is a
/// period or a timeout, and zero would mean a busy loop or an instant failure.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|_| {
        format!(
            "\"{text}\" is not a duration: expected a number and a unit such as \"90s\", \"5m\", \"24h\" or \"30d\""
        )
    })?;
    if duration.is_zero() {
        return Err(format!("must be longer than zero, got \"{text}\""));
    }
    Ok(duration)
}

/// Durations that may be zero (`jitter = "0s"`): everything else is a period or a timeout.
pub fn optional_duration(text: &str) -> Result<Duration, String> {
    if matches!(text.trim(), "0" | "0s") { Ok(Duration::ZERO) } else { parse_duration(text) }
}

/// A URL keyturn sends something to (an event collector, a reload endpoint): https anywhere,
/// plain http only to a loopback address, since the request may carry a bearer token; no
/// credentials in it (they belong in `bearer_token_file`, which is read at each request and
/// never printed). Messages show the URL without credentials or query ([`shown_url`]).
pub fn check_outbound_url(url: &str) -> Result<(), String> {
    let shown = shown_url(url);
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "\"{shown}\": credentials in a URL end up in logs and process listings; put a token in bearer_token_file"
        ));
    }
    match (parsed.scheme(), is_loopback(&parsed)) {
        ("https", _) | ("http", true) => Ok(()),
        ("http", false) => Err(format!("\"{shown}\": plain http is allowed only to a loopback address; use https")),
        (other, _) => Err(format!("\"{shown}\": unsupported scheme \"{other}\"; use http (loopback) or https")),
    }
}

/// A URL as messages show it: scheme, host, port and path, without credentials, query or
/// fragment, which may hold a token or a signature.
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => {
            let host = parsed.host_str().unwrap_or("");
            let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{host}{port}{}", parsed.scheme(), parsed.path())
        }
        Err(_) => "(not a URL)".to_string(),
    }
}

/// Whether a URL's host is this machine: `localhost`, or a loopback address.
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// `10%` or `0.1`, as a fraction in `0.0..=max`.
pub fn parse_ratio(text: &str, max: f64) -> Result<f64, String> {
    let trimmed = text.trim();
    let value = match trimmed.strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().map(|p| p / 100.0),
        None => trimmed.parse::<f64>(),
    };
    match value {
        Ok(v) if (0.0..=max).contains(&v) => Ok(v),
        _ => Err(format!("expected a percentage from 0% to {}% such as \"10%\", got \"{text}\"", max * 100.0)),
    }
}

/// An octal file mode such as `"0400"` or `"0440"`. Only permission bits; set-id and sticky
/// bits make no sense on a secret file.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(mode),
        _ => Err(format!("expected an octal mode from \"0000\" to \"0777\" such as \"0400\", got \"{text}\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases: &[(&str, Option<u64>)] = &[
            ("90s", Some(90)),
            ("5m", Some(300)),
            ("24h", Some(86_400)),
            ("30d", Some(2_592_000)),
            ("1h 30m", Some(5_400)),
            ("0s", None),
            ("ten", None),
            ("", None),
            ("-5s", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).ok().map(|d| d.as_secs()), *want, "{text}");
        }
    }

    #[test]
    fn ratios() {
        assert_eq!(parse_ratio("10%", 0.5), Ok(0.1));
        assert_eq!(parse_ratio("0.25", 0.5), Ok(0.25));
        assert_eq!(parse_ratio("0%", 0.5), Ok(0.0));
        assert!(parse_ratio("60%", 0.5).is_err());
        assert!(parse_ratio("-1%", 0.5).is_err());
        assert!(parse_ratio("abc", 0.5).is_err());
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0400"), Ok(0o400));
        assert_eq!(parse_mode("440"), Ok(0o440));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("4755").is_err());
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("").is_err());
    }
}
