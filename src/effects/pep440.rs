//! PEP 440 versions and version specifiers, as far as choosing a wheel from an index needs
//! them: parsing with the standard's normal forms, the total order (epoch, release, pre, post,
//! dev, local), and `==` (with `.*` and local-label rules), `!=`, `<=`, `>=`, `<`, `>` (with the
//! exclusions of pre-, post- and local releases of the bound), `~=` and `===`, following the
//! reference implementation (`packaging.specifiers`). Pre-release filtering is left to the
//! installer: a candidate matches here if the specifiers admit it at all.

use regex::Regex;
use std::cmp::Ordering;
use std::sync::OnceLock;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LocalPart {
    Num(u64),
    Text(String),
}

/// Equality is PEP 440's (`1.0 == 1.0.0`), so it agrees with the order.
#[derive(Debug, Clone)]
pub struct Version {
    epoch: u64,
    release: Vec<u64>,
    /// (0 = a, 1 = b, 2 = rc, number)
    pre: Option<(u8, u64)>,
    post: Option<u64>,
    dev: Option<u64>,
    local: Vec<LocalPart>,
}

fn pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"(?ix)^\s*v?
            (?:(?P<epoch>[0-9]+)!)?
            (?P<release>[0-9]+(?:\.[0-9]+)*)
            (?:[-_.]?(?P<pre_l>alpha|beta|preview|pre|rc|a|b|c)[-_.]?(?P<pre_n>[0-9]+)?)?
            (?:-(?P<post_n1>[0-9]+)|[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>[0-9]+)?)?
            (?:[-_.]?(?P<dev_l>dev)[-_.]?(?P<dev_n>[0-9]+)?)?
            (?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?
            \s*$",
        )
        .expect("version pattern")
    })
}

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        let c = pattern().captures(text)?;
        let num = |name: &str| c.name(name).and_then(|m| m.as_str().parse::<u64>().ok());
        let pre = c.name("pre_l").map(|l| {
            let kind = match l.as_str().to_ascii_lowercase().as_str() {
                "a" | "alpha" => 0,
                "b" | "beta" => 1,
                _ => 2,
            };
            (kind, num("pre_n").unwrap_or(0))
        });
        let post = if c.name("post_n1").is_some() {
            num("post_n1")
        } else {
            c.name("post_l").map(|_| num("post_n2").unwrap_or(0))
        };
        Some(Version {
            epoch: num("epoch").unwrap_or(0),
            release: c["release"]
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
            pre,
            post,
            dev: c.name("dev_l").map(|_| num("dev_n").unwrap_or(0)),
            local: c
                .name("local")
                .map(|l| {
                    l.as_str()
                        .split(['.', '-', '_'])
                        .map(|p| match p.parse() {
                            Ok(n) => LocalPart::Num(n),
                            Err(_) => LocalPart::Text(p.to_ascii_lowercase()),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Without the local label (`2.1.0+cu121` -> `2.1.0`).
    pub fn public(&self) -> Version {
        Version {
            local: vec![],
            ..self.clone()
        }
    }

    /// Epoch and release only (`2.1.0rc1.post2` -> `2.1.0`).
    fn base(&self) -> Version {
        Version {
            epoch: self.epoch,
            release: self.release.clone(),
            pre: None,
            post: None,
            dev: None,
            local: vec![],
        }
    }

    pub fn is_prerelease(&self) -> bool {
        self.pre.is_some() || self.dev.is_some()
    }

    pub fn has_local(&self) -> bool {
        !self.local.is_empty()
    }

    pub fn release(&self) -> &[u64] {
        &self.release
    }
}

fn trimmed(release: &[u64]) -> &[u64] {
    let n = release.iter().rposition(|x| *x != 0).map_or(0, |i| i + 1);
    &release[..n]
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        // packaging's _cmpkey: a dev release without pre or post sorts before the pre-releases.
        let pre_key = |v: &Version| match (v.pre, v.post, v.dev) {
            (None, None, Some(_)) => (0u8, 0u8, 0u64),
            (Some((k, n)), _, _) => (1, k, n),
            (None, _, _) => (2, 0, 0),
        };
        let post_key = |v: &Version| v.post.map_or((0u8, 0u64), |n| (1, n));
        let dev_key = |v: &Version| v.dev.map_or((1u8, 0u64), |n| (0, n));
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| trimmed(&self.release).cmp(trimmed(&other.release)))
            .then_with(|| pre_key(self).cmp(&pre_key(other)))
            .then_with(|| post_key(self).cmp(&post_key(other)))
            .then_with(|| dev_key(self).cmp(&dev_key(other)))
            .then_with(|| {
                // Numbers sort after text, and a longer label after its prefix.
                let key = |p: &LocalPart| match p {
                    LocalPart::Num(n) => (1u8, *n, String::new()),
                    LocalPart::Text(t) => (0, 0, t.clone()),
                };
                let a: Vec<_> = self.local.iter().map(key).collect();
                let b: Vec<_> = other.local.iter().map(key).collect();
                a.cmp(&b)
            })
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Le,
    Ge,
    Lt,
    Gt,
    Compatible,
    Arbitrary,
}

/// One clause of a specifier set, like `==2.1.*` or `>=1.11`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Specifier {
    pub op: Op,
    /// As written, without `.*`.
    pub version: String,
    pub wildcard: bool,
}

/// Parses `==2.1.0, >=1.0` (clauses separated by commas; empty text: no constraint).
pub fn parse_specifiers(text: &str) -> Result<Vec<Specifier>, String> {
    let mut out = Vec::new();
    for clause in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let ops = [
            ("===", Op::Arbitrary),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("~=", Op::Compatible),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        let (op, rest) = ops
            .iter()
            .find_map(|(s, op)| clause.strip_prefix(s).map(|r| (*op, r.trim())))
            .ok_or_else(|| format!("{clause:?} is not a version specifier"))?;
        let (version, wildcard) = match rest.strip_suffix(".*") {
            Some(v) if matches!(op, Op::Eq | Op::Ne) => (v.trim(), true),
            _ => (rest, false),
        };
        if op != Op::Arbitrary && Version::parse(version).is_none() {
            return Err(format!("{clause:?}: {version:?} is not a version"));
        }
        if op == Op::Compatible && Version::parse(version).is_some_and(|v| v.release.len() < 2) {
            return Err(format!("{clause:?}: ~= needs at least two release numbers"));
        }
        out.push(Specifier {
            op,
            version: version.to_string(),
            wildcard,
        });
    }
    Ok(out)
}

fn prefix_match(candidate: &Version, prefix: &Version) -> bool {
    let c = candidate.public();
    if c.epoch != prefix.epoch {
        return false;
    }
    let n = prefix.release.len();
    let mut rel = c.release.clone();
    rel.resize(rel.len().max(n), 0);
    rel[..n] == prefix.release[..]
}

impl Specifier {
    pub fn contains(&self, candidate: &Version) -> bool {
        if self.op == Op::Arbitrary {
            // Exact identity, local label included (the original text is not kept).
            return Version::parse(&self.version).is_some_and(|v| v == *candidate);
        }
        let Some(spec) = Version::parse(&self.version) else {
            return false;
        };
        let equal = || {
            if self.wildcard {
                prefix_match(candidate, &spec)
            } else if spec.has_local() {
                *candidate == spec
            } else {
                candidate.public() == spec
            }
        };
        match self.op {
            Op::Eq => equal(),
            Op::Ne => !equal(),
            Op::Le => candidate.public() <= spec,
            Op::Ge => candidate.public() >= spec,
            Op::Lt => {
                *candidate < spec
                    && (spec.is_prerelease()
                        || !candidate.is_prerelease()
                        || candidate.base() != spec.base())
            }
            Op::Gt => {
                *candidate > spec
                    && (spec.post.is_some()
                        || candidate.post.is_none()
                        || candidate.base() != spec.base())
                    && (!candidate.has_local() || candidate.base() != spec.base())
            }
            Op::Compatible => {
                let mut prefix = spec.base();
                prefix.release.pop();
                candidate.public() >= spec && prefix_match(candidate, &prefix)
            }
            Op::Arbitrary => false,
        }
    }
}

/// Whether every clause admits `candidate`.
pub fn all_contain(specs: &[Specifier], candidate: &Version) -> bool {
    specs.iter().all(|s| s.contains(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap_or_else(|| panic!("{s}"))
    }

    fn ok(spec: &str, version: &str) -> bool {
        all_contain(&parse_specifiers(spec).unwrap(), &v(version))
    }

    #[test]
    fn ordering_follows_pep_440() {
        let sorted = [
            "1.0.dev1",
            "1.0a1",
            "1.0a2.dev1",
            "1.0a2",
            "1.0b1",
            "1.0rc1",
            "1.0",
            "1.0+abc",
            "1.0+1",
            "1.0+1.2",
            "1.0.post1.dev1",
            "1.0.post1",
            "1.1",
            "2!0.1",
        ];
        for w in sorted.windows(2) {
            assert!(v(w[0]) < v(w[1]), "{} < {}", w[0], w[1]);
        }
        assert_eq!(v("1.0"), v("1.0.0"));
        assert_eq!(v("1.0-1"), v("1.0.post1"));
        assert_eq!(v("1.0RC1"), v("1.0rc1"));
        assert_eq!(v("v2.1.0+CU121"), v("2.1.0+cu121"));
        assert!(Version::parse("2.1.0+").is_none());
        assert!(Version::parse("latest").is_none());
    }

    #[test]
    fn specifiers_follow_packaging() {
        // Local labels: ignored unless the specifier has one.
        assert!(ok("==2.1.0", "2.1.0+cu121"));
        assert!(ok("==2.1", "2.1.0+cu121"));
        assert!(ok("==2.1.0+cu121", "2.1.0+cu121"));
        assert!(!ok("==2.1.0+cu118", "2.1.0+cu121"));
        assert!(ok("==2.1.0.*", "2.1.0+cu121"));
        assert!(ok("==2.1.*", "2.1.2"));
        assert!(!ok("==2.1.*", "2.2.0"));
        assert!(ok("!=2.1.*", "2.2.0"));
        assert!(ok(">=2.0,<2.2", "2.1.0+cu121"));
        assert!(!ok(">=2.0,<2.2", "2.2.0"));
        assert!(ok("<=2.1.0", "2.1.0+cu121"));
        // < excludes pre-releases of the bound; > excludes its post and local releases.
        assert!(!ok("<2.1.0", "2.1.0rc1"));
        assert!(ok("<2.1.0rc2", "2.1.0rc1"));
        assert!(!ok(">2.1.0", "2.1.0.post1"));
        assert!(!ok(">2.1.0", "2.1.0+cu121"));
        assert!(ok(">2.1.0", "2.1.1+cu121"));
        assert!(ok("~=2.1.0", "2.1.5"));
        assert!(!ok("~=2.1.0", "2.2.0"));
        assert!(ok("~=2.1", "2.9"));
        assert!(ok("===2.1.0", "2.1.0"));
        assert!(ok("", "0.1"));
        assert!(parse_specifiers("=2.1").is_err());
        assert!(parse_specifiers("==two").is_err());
        assert!(parse_specifiers("~=2").is_err());
    }
}
