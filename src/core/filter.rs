//! Which jobs a request means: labels and their rules, label selectors (the Kubernetes syntax),
//! and the filters of `GET /v1/jobs` and the bulk routes. Pure; `query.rs` serves them from the
//! indexes.

use std::collections::BTreeMap;

use crate::limits::{
    LABELS_COUNT_MAX, LABEL_KEY_CHARS_MAX, LABEL_VALUE_CHARS_MAX, SELECTOR_BYTES_MAX,
    SELECTOR_REQUIREMENTS_MAX, SELECTOR_VALUES_MAX,
};

use super::command::Job;
use super::plan::job_next_due;

/// Why a label set or a selector is refused: the message names the culprit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// A label key: `[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?`.
pub fn label_key(key: &str) -> Result<(), Refused> {
    let inner = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !key.is_empty()
        && key.len() <= LABEL_KEY_CHARS_MAX
        && key.starts_with(inner)
        && key.ends_with(inner)
        && key
            .chars()
            .all(|c| inner(c) || matches!(c, '.' | '_' | '/' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Refused(format!(
            "label key {key:?} must be 1 to {LABEL_KEY_CHARS_MAX} characters of a-z, 0-9, \
             '.', '_', '/', '-', starting and ending with a-z or 0-9"
        )))
    }
}

/// A job's labels: at most `LABELS_COUNT_MAX`, keys by `label_key`, values of at most
/// `LABEL_VALUE_CHARS_MAX` characters without control characters.
pub fn labels(labels: &BTreeMap<String, String>) -> Result<(), Refused> {
    if labels.len() > LABELS_COUNT_MAX {
        return Err(Refused(format!("at most {LABELS_COUNT_MAX} labels")));
    }
    for (k, v) in labels {
        label_key(k)?;
        if v.chars().count() > LABEL_VALUE_CHARS_MAX || v.chars().any(char::is_control) {
            return Err(Refused(format!(
                "the value of label {k:?} must be at most {LABEL_VALUE_CHARS_MAX} characters, \
                 none of them a control character"
            )));
        }
    }
    Ok(())
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key`
    Exists(String),
    /// `!key`
    Absent(String),
    /// `key=v`, `key==v`, `key in (v1,v2)`: the key is there with one of the values.
    In(String, Vec<String>),
    /// `key!=v`, `key notin (v1,v2)`: the key is missing or has none of the values.
    NotIn(String, Vec<String>),
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        }
    }
}

/// Characters that end a value or key token in a selector.
fn is_special(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | '(' | ')' | '=' | '!')
}

/// Parses a label selector: requirements separated by commas, all of which must hold.
/// `team=payments,env!=dev,tier in (gold,silver),canary,!legacy`.
pub fn parse_selector(text: &str) -> Result<Vec<Requirement>, Refused> {
    if text.len() > SELECTOR_BYTES_MAX {
        return Err(Refused(format!("at most {SELECTOR_BYTES_MAX} bytes")));
    }
    let mut p = Parser { rest: text };
    let mut reqs = Vec::new();
    loop {
        reqs.push(p.requirement()?);
        if reqs.len() > SELECTOR_REQUIREMENTS_MAX {
            return Err(Refused(format!(
                "at most {SELECTOR_REQUIREMENTS_MAX} requirements"
            )));
        }
        p.skip_space();
        if p.rest.is_empty() {
            return Ok(reqs);
        }
        p.expect(",")?;
    }
}

struct Parser<'a> {
    rest: &'a str,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        match self.rest.strip_prefix(token) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), Refused> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("{token:?}")))
        }
    }

    fn unexpected(&self, wanted: &str) -> Refused {
        match self.rest.chars().next() {
            Some(c) => Refused(format!("expected {wanted} at {c:?} in {:?}", self.rest)),
            None => Refused(format!("expected {wanted} at the end")),
        }
    }

    /// A run of characters that are not special (possibly empty).
    fn token(&mut self) -> &str {
        self.skip_space();
        let end = self.rest.find(is_special).unwrap_or(self.rest.len());
        let (token, rest) = self.rest.split_at(end);
        self.rest = rest;
        token
    }

    fn key(&mut self) -> Result<String, Refused> {
        let key = self.token();
        if key.is_empty() {
            return Err(self.unexpected("a label key"));
        }
        let key = key.to_owned();
        label_key(&key)?;
        Ok(key)
    }

    fn requirement(&mut self) -> Result<Requirement, Refused> {
        if self.eat("!") {
            return Ok(Requirement::Absent(self.key()?));
        }
        let key = self.key()?;
        if self.eat("!=") {
            return Ok(Requirement::NotIn(key, vec![self.token().to_owned()]));
        }
        if self.eat("==") || self.eat("=") {
            return Ok(Requirement::In(key, vec![self.token().to_owned()]));
        }
        // `in` and `notin` are words: what follows the key after a space.
        let save = self.rest;
        match self.token() {
            "in" => Ok(Requirement::In(key, self.values()?)),
            "notin" => Ok(Requirement::NotIn(key, self.values()?)),
            _ => {
                self.rest = save;
                Ok(Requirement::Exists(key))
            }
        }
    }

    /// `(v1, v2, …)`.
    fn values(&mut self) -> Result<Vec<String>, Refused> {
        self.expect("(")?;
        let mut values = vec![self.token().to_owned()];
        while self.eat(",") {
            values.push(self.token().to_owned());
            if values.len() > SELECTOR_VALUES_MAX {
                return Err(Refused(format!(
                    "at most {SELECTOR_VALUES_MAX} values in a set"
                )));
            }
        }
        self.expect(")")?;
        Ok(values)
    }
}

/// A job's state as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Active,
    Paused,
    /// Fires no more (a one-shot that fired; a schedule with no fire left).
    Completed,
}

impl JobState {
    pub fn of(job: &Job) -> JobState {
        JobState::given(job.spec.paused, job_next_due(job))
    }

    /// The state of a job that is `paused` or not, with `next` its next due instant.
    pub fn given(paused: bool, next: Option<i64>) -> JobState {
        match (paused, next) {
            (true, _) => JobState::Paused,
            (false, Some(_)) => JobState::Active,
            (false, None) => JobState::Completed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Active => "active",
            JobState::Paused => "paused",
            JobState::Completed => "completed",
        }
    }

    pub fn parse(text: &str) -> Option<JobState> {
        [JobState::Active, JobState::Paused, JobState::Completed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// The `host:port` a URL delivers to (host lowercased, the scheme's port when none is given).
pub fn target_of(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let host = u.host_str()?.to_ascii_lowercase();
    let port = u.port_or_known_default()?;
    Some(format!("{host}:{port}"))
}

/// Which jobs: every given part must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub selector: Vec<Requirement>,
    pub state: Option<JobState>,
    /// A `host:port` as `target_of` gives it.
    pub target: Option<String>,
    /// An id prefix.
    pub prefix: Option<String>,
}

impl JobFilter {
    pub fn is_empty(&self) -> bool {
        *self == JobFilter::default()
    }

    pub fn matches(&self, job: &Job) -> bool {
        let labels = &job.spec.ext.labels;
        self.prefix.as_ref().is_none_or(|p| job.id.starts_with(p))
            && self.selector.iter().all(|r| r.matches(labels))
            && self
                .target
                .as_ref()
                .is_none_or(|t| target_of(&job.spec.url).as_ref() == Some(t))
            && self.state.is_none_or(|s| JobState::of(job) == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_parse_as_kubernetes_writes_them() {
        use Requirement::*;
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let table: &[(&str, Vec<Requirement>)] = &[
            ("team=payments", vec![In("team".into(), s(&["payments"]))]),
            ("team==payments", vec![In("team".into(), s(&["payments"]))]),
            ("env!=dev", vec![NotIn("env".into(), s(&["dev"]))]),
            (
                "tier in (gold, silver)",
                vec![In("tier".into(), s(&["gold", "silver"]))],
            ),
            ("tier notin (a)", vec![NotIn("tier".into(), s(&["a"]))]),
            ("canary", vec![Exists("canary".into())]),
            ("!legacy", vec![Absent("legacy".into())]),
            ("k=", vec![In("k".into(), s(&[""]))]),
            (
                "team=payments,env!=dev,tier in (gold,silver),canary,!legacy",
                vec![
                    In("team".into(), s(&["payments"])),
                    NotIn("env".into(), s(&["dev"])),
                    In("tier".into(), s(&["gold", "silver"])),
                    Exists("canary".into()),
                    Absent("legacy".into()),
                ],
            ),
            // A key named like the operator is still a key.
            ("in", vec![Exists("in".into())]),
            (
                " a = b , c ",
                vec![In("a".into(), s(&["b"])), Exists("c".into())],
            ),
        ];
        for (text, want) in table {
            assert_eq!(parse_selector(text).as_ref(), Ok(want), "{text}");
        }
    }

    #[test]
    fn malformed_selectors_are_refused_with_a_reason() {
        for text in [
            "", ",", "a=b,", "A=b", "a in b", "a in (b", "a=(b)", "!", "a b", "a=b c", "-a",
        ] {
            let refused = parse_selector(text);
            assert!(refused.is_err(), "{text:?} was accepted: {refused:?}");
        }
        let long = vec!["k"; SELECTOR_REQUIREMENTS_MAX + 1].join(",");
        assert!(parse_selector(&long).is_err());
    }

    #[test]
    fn requirements_match_as_kubernetes_defines_them() {
        let labels = map(&[("team", "pay"), ("env", "prod")]);
        let yes = [
            "team=pay",
            "team in (x,pay)",
            "env!=dev",
            "missing!=x",
            "env",
            "!missing",
        ];
        let no = [
            "team=x",
            "team notin (pay)",
            "!env",
            "missing",
            "missing=x",
            "missing in (x)",
        ];
        for text in yes {
            let reqs = parse_selector(text).unwrap();
            assert!(reqs.iter().all(|r| r.matches(&labels)), "{text}");
        }
        for text in no {
            let reqs = parse_selector(text).unwrap();
            assert!(!reqs.iter().all(|r| r.matches(&labels)), "{text}");
        }
    }

    #[test]
    fn label_rules() {
        assert!(labels(&map(&[("a", ""), ("team.io/x-y_z", "any text ü")])).is_ok());
        let bad_key = ["", "A", "-a", "a-", "a b", &"k".repeat(64)];
        for k in bad_key {
            assert!(labels(&map(&[(k, "v")])).is_err(), "{k:?}");
        }
        assert!(labels(&map(&[("k", &"v".repeat(257))])).is_err());
        assert!(labels(&map(&[("k", "a\nb")])).is_err());
        let many: BTreeMap<_, _> = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(labels(&many).is_err());
    }

    #[test]
    fn targets_are_host_and_port() {
        assert_eq!(
            target_of("https://Example.COM/x").as_deref(),
            Some("example.com:443")
        );
        assert_eq!(
            target_of("http://127.0.0.1:8080/").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(target_of("http://[::1]/").as_deref(), Some("[::1]:80"));
        assert_eq!(target_of("nonsense"), None);
    }
}
