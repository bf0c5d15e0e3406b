//! Who may call the device routes: a bearer token and/or basic credentials, both read from the
//! environment at start. Compared in constant time, so that timing does not tell how much of a
//! guess was right.

use base64::Engine as _;
use subtle::ConstantTimeEq;

/// The secrets the API accepts. `Debug` never shows them.
#[derive(Clone, Default)]
pub struct Credentials {
    token: Option<Vec<u8>>,
    /// `user:password`
    basic: Option<Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("basic", &self.basic.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Credentials {
    pub fn new(token: Option<String>, basic: Option<String>) -> Self {
        Credentials {
            token: token.filter(|t| !t.is_empty()).map(String::into_bytes),
            basic: basic.filter(|b| !b.is_empty()).map(String::into_bytes),
        }
    }

    /// Reads the variables the `[api]` section names; fails naming a variable that is not set.
    pub fn from_env(token_env: Option<&str>, basic_env: Option<&str>) -> anyhow::Result<Self> {
        let read = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| anyhow::anyhow!("the environment variable {name} is not set"))
        };
        let token = token_env.map(read).transpose()?;
        let basic = basic_env.map(read).transpose()?;
        if token.is_none() && basic.is_none() {
            anyhow::bail!("no authentication configured: give token_env and/or basic_env");
        }
        Ok(Credentials::new(token, basic))
    }

    /// Whether an `Authorization` header value carries one of the accepted secrets.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let Some(header) = authorization else {
            return false;
        };
        let Ok(header) = std::str::from_utf8(header) else {
            return false;
        };
        let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return self
                .token
                .as_deref()
                .is_some_and(|t| same(t, rest.as_bytes()));
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let Some(expected) = self.basic.as_deref() else {
                return false;
            };
            return base64::engine::general_purpose::STANDARD
                .decode(rest)
                .is_ok_and(|given| same(expected, &given));
        }
        false
    }
}

/// Constant time in the content; a length mismatch returns early, which tells only the length.
fn same(expected: &[u8], given: &[u8]) -> bool {
    expected.len() == given.len() && bool::from(expected.ct_eq(given))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configured_token_or_credentials_pass() {
        let both = Credentials::new(
            Some("0123456789abcdef".into()),
            Some("admin:s3cret-pass".into()),
        );
        assert!(both.allows(Some(b"Bearer 0123456789abcdef")));
        assert!(both.allows(Some(b"bearer  0123456789abcdef ")));
        assert!(!both.allows(Some(b"Bearer 0123456789abcdeF")));
        assert!(!both.allows(Some(b"Bearer 0123456789abcde")));
        assert!(!both.allows(Some(b"Bearer ")));
        assert!(!both.allows(None));
        assert!(!both.allows(Some(b"0123456789abcdef")));
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:s3cret-pass");
        assert!(both.allows(Some(format!("Basic {basic}").as_bytes())));
        let wrong = base64::engine::general_purpose::STANDARD.encode("admin:s3cret-pasS");
        assert!(!both.allows(Some(format!("Basic {wrong}").as_bytes())));
        assert!(!both.allows(Some(b"Basic !!not base64!!")));
        assert!(!both.allows(Some(&[0xff, 0xfe])));

        let token_only = Credentials::new(Some("0123456789abcdef".into()), None);
        assert!(!token_only.allows(Some(format!("Basic {basic}").as_bytes())));
        let basic_only = Credentials::new(None, Some("admin:s3cret-pass".into()));
        assert!(!basic_only.allows(Some(b"Bearer admin:s3cret-pass")));
    }

    #[test]
    fn secrets_never_print() {
        let c = Credentials::new(Some("0123456789abcdef".into()), Some("a:b".into()));
        let shown = format!("{c:?}");
        assert!(!shown.contains("0123") && !shown.contains("a:b"), "{shown}");
    }
}
