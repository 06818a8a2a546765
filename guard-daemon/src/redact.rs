//! Masks secrets in what records carry (command lines) before a record
//! leaves the host: passwords in URLs, `--password=` style options and the
//! argument after `--password`, `NAME_TOKEN=` style assignments, bearer
//! tokens, AWS access key ids, private key blocks, and patterns the
//! operator adds. A masked secret reads `***`.

use regex::Regex;

pub const MASK: &str = "***";

/// Built-in patterns. Where a pattern has a `secret` group, only that group
/// is masked; else the whole match.
const BUILT_IN: &[&str] = &[
    // scheme://user:PASSWORD@host
    r"[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:(?P<secret>[^\s@/]+)@",
    // --password=X, PGPASSWORD=X, api_key: X, client-secret=X ... (not a
    // value masked already, as in user-token:***@host)
    r"(?i)[a-z0-9_.-]*(?:passw(?:or)?d|secret|token|api[_-]?key|access[_-]?key|credential)[a-z0-9_.-]*\s*[=:]\s*(?P<secret>[^\s&;,*][^\s&;,]*)",
    // Authorization: Bearer X
    r"(?i)\bbearer\s+(?P<secret>[A-Za-z0-9._~+/=-]+)",
    // AWS access key ids
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    // PEM private keys
    r"(?s)-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
];

/// An option whose next argument is a secret: `--password X`, `-p X` is
/// not included (too many programs use `-p` for other things).
const SECRET_OPTION: &str = r"(?i)^--?[a-z0-9_-]*(?:passw(?:or)?d|secret|token|api[_-]?key)$";

pub struct Redactor {
    patterns: Vec<Regex>,
    secret_option: Regex,
}

#[derive(Debug, thiserror::Error)]
#[error("redaction pattern `{pattern}`: {error}")]
pub struct PatternError {
    pattern: String,
    error: regex::Error,
}

impl Redactor {
    /// The built-in patterns and `extra` ones (regular expressions; a
    /// `secret` group limits the mask to it).
    pub fn new(extra: &[String]) -> Result<Self, PatternError> {
        let compile = |pattern: &str| {
            Regex::new(pattern).map_err(|error| PatternError {
                pattern: pattern.into(),
                error,
            })
        };
        Ok(Self {
            patterns: BUILT_IN
                .iter()
                .copied()
                .chain(extra.iter().map(String::as_str))
                .map(compile)
                .collect::<Result<_, _>>()?,
            secret_option: compile(SECRET_OPTION)?,
        })
    }

    /// Masks secrets in a command line's arguments; true if any was.
    pub fn args(&self, args: &mut [String]) -> bool {
        let mut masked = false;
        let mut next_is_secret = false;
        for arg in args.iter_mut() {
            if std::mem::take(&mut next_is_secret) {
                *arg = MASK.into();
                masked = true;
                continue;
            }
            next_is_secret = self.secret_option.is_match(arg);
            if let Some(text) = self.text(arg) {
                *arg = text;
                masked = true;
            }
        }
        masked
    }

    /// `text` with its secrets masked, or `None` if it has none.
    pub fn text(&self, text: &str) -> Option<String> {
        let mut out = text.to_string();
        for pattern in &self.patterns {
            if !pattern.is_match(&out) {
                continue;
            }
            out = pattern
                .replace_all(&out, |caps: &regex::Captures| {
                    let all = caps.get(0).expect("a match");
                    match caps.name("secret") {
                        Some(secret) => format!(
                            "{}{MASK}{}",
                            &all.as_str()[..secret.start() - all.start()],
                            &all.as_str()[secret.end() - all.start()..]
                        ),
                        None => MASK.into(),
                    }
                })
                .into_owned();
        }
        (out != text).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(args: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Redactor::new(&[]).unwrap().args(&mut args);
        args
    }

    #[test]
    fn passwords_in_urls_keep_the_rest_of_the_url() {
        assert_eq!(
            masked(&["psql", "postgres://app:s3cret@db.internal:5432/prod"]),
            ["psql", "postgres://app:***@db.internal:5432/prod"]
        );
        assert_eq!(
            masked(&["git", "clone", "https://x-token:ghp_abc123@github.com/o/r"]),
            ["git", "clone", "https://x-token:***@github.com/o/r"]
        );
    }

    #[test]
    fn password_options_both_forms() {
        assert_eq!(
            masked(&["mysql", "--password=hunter2", "-u", "root"]),
            ["mysql", "--password=***", "-u", "root"]
        );
        assert_eq!(
            masked(&["tool", "--api-key", "abc123", "--verbose"]),
            ["tool", "--api-key", "***", "--verbose"]
        );
        assert_eq!(
            masked(&[
                "env",
                "PGPASSWORD=hunter2",
                "GITHUB_TOKEN=ghp_x",
                "HOME=/root"
            ]),
            ["env", "PGPASSWORD=***", "GITHUB_TOKEN=***", "HOME=/root"]
        );
    }

    #[test]
    fn bearer_tokens_aws_keys_and_private_keys() {
        assert_eq!(
            masked(&["curl", "-H", "Authorization: Bearer eyJhbGciOi.x.y"]),
            ["curl", "-H", "Authorization: Bearer ***"]
        );
        assert_eq!(
            masked(&["aws", "--key", "AKIAIOSFODNN7EXAMPLE"]),
            ["aws", "--key", "***"]
        );
        assert_eq!(
            masked(&[
                "echo",
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"
            ]),
            ["echo", "***"]
        );
    }

    #[test]
    fn ordinary_arguments_are_untouched() {
        let args = ["rm", "-rf", "/srv/data", "--no-preserve-root", "-p", "5432"];
        assert_eq!(masked(&args), args);
        let mut owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        assert!(!Redactor::new(&[]).unwrap().args(&mut owned));
    }

    #[test]
    fn operator_patterns_mask_their_secret_group_or_whole_match() {
        let redactor = Redactor::new(&[
            r"ticket-(?P<secret>\d+)".into(),
            r"sk_live_[0-9a-z]+".into(),
        ])
        .unwrap();
        assert_eq!(
            redactor.text("see ticket-4711").as_deref(),
            Some("see ticket-***")
        );
        assert_eq!(
            redactor.text("key sk_live_abc9").as_deref(),
            Some("key ***")
        );
        assert!(Redactor::new(&["(".into()]).is_err());
    }
}
