//! Users, passwords, virtual hosts and permissions, as RabbitMQ's internal
//! authentication backend models them.

use regex::Regex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How RabbitMQ hashed a stored password (`hashing_algorithm` in a
/// definitions export).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// `rabbit_password_hashing_sha256`, the default.
    Sha256,
    /// `rabbit_password_hashing_sha512`.
    Sha512,
    /// `rabbit_password_hashing_md5` (and exports without
    /// `hashing_algorithm`).
    Md5,
}

impl HashAlgorithm {
    /// From a definitions export's `hashing_algorithm` (absent: MD5, as
    /// RabbitMQ reads old exports).
    pub fn from_name(name: Option<&str>) -> Result<Self, String> {
        match name {
            None | Some("rabbit_password_hashing_md5") => Ok(HashAlgorithm::Md5),
            Some("rabbit_password_hashing_sha256") => Ok(HashAlgorithm::Sha256),
            Some("rabbit_password_hashing_sha512") => Ok(HashAlgorithm::Sha512),
            Some(other) => Err(format!("unknown hashing_algorithm '{other}'")),
        }
    }

    /// The name RabbitMQ exports.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "rabbit_password_hashing_sha256",
            HashAlgorithm::Sha512 => "rabbit_password_hashing_sha512",
            HashAlgorithm::Md5 => "rabbit_password_hashing_md5",
        }
    }

    fn digest(self, salt: &[u8], password: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        let mut input = salt.to_vec();
        input.extend_from_slice(password);
        match self {
            HashAlgorithm::Sha256 => sha2::Sha256::digest(&input).to_vec(),
            HashAlgorithm::Sha512 => sha2::Sha512::digest(&input).to_vec(),
            HashAlgorithm::Md5 => md5::Md5::digest(&input).to_vec(),
        }
    }
}

/// A stored password.
#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    /// Given in clear in the configuration file.
    Plain(String),
    /// RabbitMQ's `password_hash`: a 4-byte salt followed by the digest of
    /// salt and password.
    Hashed {
        /// The digest's algorithm.
        algorithm: HashAlgorithm,
        /// Salt then digest, as decoded from base64.
        salted: Vec<u8>,
    },
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

/// `a == b` in time that depends on their lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Password {
    /// A `password_hash` from a definitions export or `amqp-broker
    /// hash-password`.
    pub fn from_hash(hash: &str, algorithm: HashAlgorithm) -> Result<Self, String> {
        use base64::Engine;
        let salted = base64::engine::general_purpose::STANDARD
            .decode(hash)
            .map_err(|e| format!("password_hash is not base64: {e}"))?;
        if salted.len() <= 4 {
            return Err("password_hash is too short for a salt and a digest".into());
        }
        Ok(Password::Hashed { algorithm, salted })
    }

    /// A `password_hash` as RabbitMQ's management API and definitions
    /// import take it: any base64, even one too short to hold a salt and a
    /// digest (`""` is RabbitMQ's user without a password, who cannot log
    /// in with one).
    pub fn from_stored_hash(hash: &str, algorithm: HashAlgorithm) -> Result<Self, String> {
        use base64::Engine;
        let salted = base64::engine::general_purpose::STANDARD
            .decode(hash)
            .map_err(|_| format!("password_hash is not base64: {hash}"))?;
        Ok(Password::Hashed { algorithm, salted })
    }

    /// A clear-text password hashed as RabbitMQ stores it, with a random
    /// salt.
    pub fn hashed(password: &str, algorithm: HashAlgorithm) -> Self {
        let salt = random_salt();
        let mut salted = salt.to_vec();
        salted.extend(algorithm.digest(&salt, password.as_bytes()));
        Password::Hashed { algorithm, salted }
    }

    /// RabbitMQ's hash of `password` with this 4-byte salt, base64.
    pub fn hash(password: &str, salt: [u8; 4], algorithm: HashAlgorithm) -> String {
        use base64::Engine;
        let mut salted = salt.to_vec();
        salted.extend(algorithm.digest(&salt, password.as_bytes()));
        base64::engine::general_purpose::STANDARD.encode(salted)
    }

    /// Whether `given` is this password.
    pub fn verify(&self, given: &str) -> bool {
        match self {
            Password::Plain(p) => same(p.as_bytes(), given.as_bytes()),
            // Too short for a salt and a digest: no password (RabbitMQ's
            // `password_hash` "").
            Password::Hashed { salted, .. } if salted.len() <= 4 => false,
            Password::Hashed { algorithm, salted } => {
                let (salt, digest) = salted.split_at(4);
                same(&algorithm.digest(salt, given.as_bytes()), digest)
            }
        }
    }
}

/// Four random bytes (std seeds its hasher keys from the OS's randomness,
/// and a counter makes successive calls differ).
pub fn random_salt() -> [u8; 4] {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let h = std::collections::hash_map::RandomState::new().hash_one((std::process::id(), n));
    (h as u32).to_be_bytes()
}

/// A user and how to check their password.
#[derive(Debug, Clone)]
pub struct User {
    /// The user name.
    pub name: String,
    /// The password.
    pub password: Password,
    /// Tags (`administrator`, `monitoring`, ...).
    pub tags: Vec<String>,
}

impl User {
    /// The password as RabbitMQ exports it: (`password_hash`,
    /// `hashing_algorithm`). A stored hash is given back as it is; a
    /// clear-text password (from the configuration file) is hashed with
    /// SHA-256 and a salt derived from the user name, so that the export is
    /// stable.
    pub fn password_hash(&self) -> (String, &'static str) {
        use base64::Engine;
        match &self.password {
            Password::Hashed { algorithm, salted } => (
                base64::engine::general_purpose::STANDARD.encode(salted),
                algorithm.name(),
            ),
            Password::Plain(p) => {
                use sha2::Digest as _;
                let d = sha2::Sha256::digest(self.name.as_bytes());
                let salt = [d[0], d[1], d[2], d[3]];
                let algorithm = HashAlgorithm::Sha256;
                (Password::hash(p, salt, algorithm), algorithm.name())
            }
        }
    }

    /// The user as RabbitMQ's `/api/users` and definitions export show it.
    pub fn to_json(&self) -> serde_json::Value {
        let (hash, algorithm) = self.password_hash();
        serde_json::json!({
            "name": self.name,
            "password_hash": hash,
            "hashing_algorithm": algorithm,
            "tags": self.tags,
            "limits": {},
        })
    }
}

/// Tags as RabbitMQ's API and exports give them: a list, or a
/// comma-separated string; other values are left out.
pub fn parse_tags(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|t| match t {
                serde_json::Value::String(s) => Some(s.trim().to_owned()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .filter(|t| !t.is_empty())
            .collect(),
        serde_json::Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// A virtual host's metadata (RabbitMQ's `description` and `tags`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VhostMeta {
    /// Free text.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
}

/// What a user may do in one virtual host: three regular expressions over
/// resource names, matched unanchored as RabbitMQ does. Clones share the
/// compiled expressions (each connection holds its user's: a clone of a
/// `Regex` itself would allocate a cache of its own, 2.5 KB a connection).
#[derive(Debug, Clone)]
pub struct Permission {
    /// Declare and delete.
    pub configure: Arc<Regex>,
    /// Publish, bind as destination.
    pub write: Arc<Regex>,
    /// Consume, get, purge, bind as source.
    pub read: Arc<Regex>,
}

impl Permission {
    /// Builds a permission from its three patterns.
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Self, regex::Error> {
        Ok(Permission {
            configure: Arc::new(Regex::new(configure)?),
            write: Arc::new(Regex::new(write)?),
            read: Arc::new(Regex::new(read)?),
        })
    }

    /// Whether this permission grants `access` to the resource `name`.
    pub fn allows(&self, access: Access, name: &[u8]) -> bool {
        let re = match access {
            Access::Configure => &self.configure,
            Access::Write => &self.write,
            Access::Read => &self.read,
        };
        match std::str::from_utf8(name) {
            Ok(s) => re.is_match(s),
            Err(_) => re.is_match(&String::from_utf8_lossy(name)),
        }
    }

    /// `.*` for all three.
    pub fn all() -> Self {
        // Compiled once per process (a core is made per simulated restart;
        // clones share the compiled program).
        static ALL: std::sync::OnceLock<Arc<Regex>> = std::sync::OnceLock::new();
        // The pattern is a constant known to compile.
        let re = ALL.get_or_init(|| Arc::new(Regex::new(".*").unwrap_or_else(|_| unreachable!())));
        Permission {
            configure: re.clone(),
            write: re.clone(),
            read: re.clone(),
        }
    }
}

/// A topic permission (RabbitMQ's `set_topic_permissions`): for one
/// user, virtual host and exchange, a write and a read pattern over the
/// routing keys of a topic exchange. `{username}` and `{vhost}` in a
/// pattern stand for the connection's user and virtual host; an empty
/// pattern matches nothing (RabbitMQ reads it as `^$`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPermission {
    /// Pattern for `basic.publish` routing keys.
    pub write: String,
    /// Pattern for binding keys (`queue.bind`, `queue.unbind`,
    /// `exchange.bind` and `exchange.unbind` from the exchange).
    pub read: String,
}

impl TopicPermission {
    /// A topic permission; refused when a pattern, its variables
    /// expanded, is not a regular expression.
    pub fn new(write: &str, read: &str) -> Result<Self, String> {
        let p = TopicPermission {
            write: write.to_owned(),
            read: read.to_owned(),
        };
        for pattern in [write, read] {
            if let Err(e) = Regex::new(&expand(pattern, "user", "vhost")) {
                return Err(format!("invalid regexp '{pattern}': {e}"));
            }
        }
        Ok(p)
    }

    /// The patterns compiled for one connection, variables expanded.
    pub fn compile(&self, exchange: &str, user: &str, vhost: &str) -> TopicGrant {
        let re = |p: &str| Regex::new(&expand(p, user, vhost)).ok();
        TopicGrant {
            exchange: exchange.to_owned(),
            write: re(&self.write),
            read: re(&self.read),
        }
    }
}

/// `pattern` with `{username}` and `{vhost}` replaced (an empty pattern
/// is RabbitMQ's `^$`).
fn expand(pattern: &str, user: &str, vhost: &str) -> String {
    if pattern.is_empty() {
        return "^$".into();
    }
    pattern
        .replace("{username}", user)
        .replace("{vhost}", vhost)
}

/// A connection's topic permission on one exchange, compiled (`None`: the
/// expanded pattern does not compile, and matches nothing).
#[derive(Debug, Clone)]
pub struct TopicGrant {
    /// The exchange.
    pub exchange: String,
    /// Publish pattern.
    pub write: Option<Regex>,
    /// Bind pattern.
    pub read: Option<Regex>,
}

/// Whether `grants` let `key` through `exchange` (a topic exchange) for
/// `access` (`Write` or `Read`): yes when none names the exchange, as in
/// RabbitMQ.
pub fn topic_allowed(grants: &[TopicGrant], exchange: &[u8], access: Access, key: &[u8]) -> bool {
    let Some(g) = grants.iter().find(|g| g.exchange.as_bytes() == exchange) else {
        return true;
    };
    let re = match access {
        Access::Write => &g.write,
        _ => &g.read,
    };
    re.as_ref()
        .is_some_and(|re| re.is_match(&String::from_utf8_lossy(key)))
}

/// Which permission an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Declare, delete.
    Configure,
    /// Publish, bind into.
    Write,
    /// Consume, get, purge, bind from.
    Read,
}

/// The users, virtual hosts and permissions of a broker.
#[derive(Debug, Clone)]
pub struct Auth {
    /// Users by name.
    pub users: HashMap<String, User>,
    /// Permissions by (user, vhost).
    pub permissions: HashMap<(String, String), Permission>,
    /// Users that may only connect over loopback (RabbitMQ's
    /// `loopback_users`, `guest` by default).
    pub loopback_users: Vec<String>,
    /// Virtual hosts' descriptions and tags, by name (none: empty).
    pub vhost_meta: HashMap<String, VhostMeta>,
    /// Topic permissions by (user, vhost, exchange).
    pub topic_permissions: BTreeMap<(String, String, String), TopicPermission>,
}

impl Default for Auth {
    /// RabbitMQ's first boot: user guest/guest, administrator, all
    /// permissions on `/`, loopback only.
    fn default() -> Self {
        let mut users = HashMap::new();
        users.insert(
            "guest".to_owned(),
            User {
                name: "guest".into(),
                password: Password::Plain("guest".into()),
                tags: vec!["administrator".into()],
            },
        );
        let mut permissions = HashMap::new();
        permissions.insert(("guest".to_owned(), "/".to_owned()), Permission::all());
        Auth {
            users,
            permissions,
            loopback_users: vec!["guest".into()],
            vhost_meta: HashMap::new(),
            topic_permissions: BTreeMap::new(),
        }
    }
}

impl Auth {
    /// Whether these credentials log in from a peer (`loopback` tells
    /// whether it connected over a loopback address).
    pub fn login(&self, user: &str, password: &str, loopback: bool) -> bool {
        let Some(u) = self.users.get(user) else {
            return false;
        };
        if !loopback && self.loopback_users.iter().any(|l| l == user) {
            return false;
        }
        u.password.verify(password)
    }

    /// Whether `user`, named by a verified client certificate (SASL
    /// `EXTERNAL`), logs in: it must exist, and connect over loopback if
    /// it is one of the loopback users. No password is checked.
    pub fn login_external(&self, user: &str, loopback: bool) -> bool {
        self.users.contains_key(user)
            && (loopback || !self.loopback_users.iter().any(|l| l == user))
    }

    /// Whether `user` may open `vhost` (has any permission there).
    pub fn may_open(&self, user: &str, vhost: &str) -> bool {
        self.permissions
            .contains_key(&(user.to_owned(), vhost.to_owned()))
    }

    /// The users as RabbitMQ lists them, by name.
    pub fn users_json(&self) -> Vec<serde_json::Value> {
        let mut users: Vec<&User> = self.users.values().collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users.iter().map(|u| u.to_json()).collect()
    }

    /// The permissions as RabbitMQ lists them, by user and vhost (only
    /// those of `user` and/or in `vhost` when given).
    pub fn permissions_json(
        &self,
        user: Option<&str>,
        vhost: Option<&str>,
    ) -> Vec<serde_json::Value> {
        let mut perms: Vec<_> = self
            .permissions
            .iter()
            .filter(|((u, v), _)| user.is_none_or(|x| x == u) && vhost.is_none_or(|x| x == v))
            .collect();
        perms.sort_by(|a, b| a.0.cmp(b.0));
        perms
            .iter()
            .map(|((user, vhost), p)| {
                serde_json::json!({
                    "user": user,
                    "vhost": vhost,
                    "configure": p.configure.as_str(),
                    "write": p.write.as_str(),
                    "read": p.read.as_str(),
                })
            })
            .collect()
    }

    /// The topic permissions as RabbitMQ lists them, by user, vhost and
    /// exchange (only those of `user` and/or in `vhost` when given).
    pub fn topic_permissions_json(
        &self,
        user: Option<&str>,
        vhost: Option<&str>,
    ) -> Vec<serde_json::Value> {
        self.topic_permissions
            .iter()
            .filter(|((u, v, _), _)| user.is_none_or(|x| x == u) && vhost.is_none_or(|x| x == v))
            .map(|((user, vhost, exchange), p)| {
                serde_json::json!({
                    "user": user,
                    "vhost": vhost,
                    "exchange": exchange,
                    "write": p.write,
                    "read": p.read,
                })
            })
            .collect()
    }

    /// `user`'s topic permissions in `vhost`, compiled for a connection.
    pub fn topic_grants(&self, user: &str, vhost: &str) -> Vec<TopicGrant> {
        self.topic_permissions
            .iter()
            .filter(|((u, v, _), _)| u == user && v == vhost)
            .map(|((_, _, x), p)| p.compile(x, user, vhost))
            .collect()
    }

    /// Whether `user` has `access` to the resource `name` in `vhost`.
    pub fn allowed(&self, user: &str, vhost: &str, access: Access, name: &[u8]) -> bool {
        self.permissions
            .get(&(user.to_owned(), vhost.to_owned()))
            .is_some_and(|p| p.allows(access, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_password_hashes() {
        // `rabbitmqctl hash_password guest`-style values: salt + digest.
        for algo in [
            HashAlgorithm::Sha256,
            HashAlgorithm::Sha512,
            HashAlgorithm::Md5,
        ] {
            let h = Password::hash("s3cret", [1, 2, 3, 4], algo);
            let p = Password::from_hash(&h, algo).unwrap();
            assert!(p.verify("s3cret"));
            assert!(!p.verify("s3cre"));
            assert!(!p.verify(""));
        }
        // A known vector: base64(salt 0xCAFEBABE ++ sha256(salt ++ "guest")).
        let h = Password::hash("guest", [0xca, 0xfe, 0xba, 0xbe], HashAlgorithm::Sha256);
        assert!(h.starts_with("yv66v"), "{h}");
        assert!(Password::from_hash("!!", HashAlgorithm::Sha256).is_err());
        assert!(Password::from_hash("AAAA", HashAlgorithm::Sha256).is_err());
        assert_eq!(HashAlgorithm::from_name(None), Ok(HashAlgorithm::Md5));
        assert!(HashAlgorithm::from_name(Some("nope")).is_err());
    }

    #[test]
    fn stored_hashes_as_the_management_api_takes_them() {
        // RabbitMQ's user without a password: "" (or a bare salt) never
        // matches, not even the empty password.
        for h in ["", "yv66vg=="] {
            let p = Password::from_stored_hash(h, HashAlgorithm::Sha256).unwrap();
            assert!(!p.verify("") && !p.verify("guest"));
        }
        assert!(Password::from_stored_hash("!!", HashAlgorithm::Sha256).is_err());
        let p = Password::hashed("pw", HashAlgorithm::Sha512);
        assert!(p.verify("pw") && !p.verify("pw2"));
        let u = User {
            name: "u".into(),
            password: p,
            tags: vec![],
        };
        let (hash, algo) = u.password_hash();
        assert_eq!(algo, "rabbit_password_hashing_sha512");
        let back = Password::from_stored_hash(&hash, HashAlgorithm::Sha512).unwrap();
        assert!(back.verify("pw"));
        assert_ne!(random_salt(), random_salt());
    }

    #[test]
    fn tags_as_list_or_comma_separated() {
        use serde_json::json;
        assert_eq!(parse_tags(&json!("a, b,,c")), ["a", "b", "c"]);
        assert_eq!(parse_tags(&json!(["x", 1, null, ""])), ["x", "1"]);
        assert!(parse_tags(&json!({"a": 1})).is_empty());
    }

    #[test]
    fn guest_only_over_loopback() {
        let a = Auth::default();
        assert!(a.login("guest", "guest", true));
        assert!(!a.login("guest", "guest", false));
        assert!(!a.login("guest", "nope", true));
        assert!(!a.login("nobody", "guest", true));
    }

    #[test]
    fn external_needs_the_user_and_keeps_the_loopback_rule() {
        let a = Auth::default();
        assert!(a.login_external("guest", true));
        assert!(!a.login_external("guest", false));
        assert!(!a.login_external("CN=guest", true));
    }

    #[test]
    fn permissions_match_unanchored() {
        let mut a = Auth::default();
        a.users.insert(
            "bob".into(),
            User {
                name: "bob".into(),
                password: Password::Plain("pw".into()),
                tags: vec![],
            },
        );
        a.permissions.insert(
            ("bob".into(), "/".into()),
            Permission::new("^bob-", "", "orders").unwrap(),
        );
        assert!(a.allowed("bob", "/", Access::Configure, b"bob-q"));
        assert!(!a.allowed("bob", "/", Access::Configure, b"q-bob-"));
        assert!(a.allowed("bob", "/", Access::Read, b"all-orders-eu"));
        // An empty pattern matches everything unanchored, as in RabbitMQ,
        // whose "no access" is "^$".
        assert!(a.allowed("bob", "/", Access::Write, b"x"));
        assert!(!a.allowed("bob", "other", Access::Read, b"orders"));
        assert!(a.may_open("bob", "/") && !a.may_open("bob", "other"));
    }

    #[test]
    fn topic_permissions_expand_variables_and_empty_matches_nothing() {
        let mut a = Auth::default();
        a.topic_permissions.insert(
            ("bob".into(), "v1".into(), "amq.topic".into()),
            TopicPermission::new("^{username}\\.", "^({vhost}|public)\\.").unwrap(),
        );
        a.topic_permissions.insert(
            ("bob".into(), "v1".into(), "t2".into()),
            TopicPermission::new("", ".*").unwrap(),
        );
        a.topic_permissions.insert(
            ("alice".into(), "v1".into(), "amq.topic".into()),
            TopicPermission::new("^$", "^$").unwrap(),
        );
        let g = a.topic_grants("bob", "v1");
        assert_eq!(g.len(), 2);
        let t = b"amq.topic";
        assert!(topic_allowed(&g, t, Access::Write, b"bob.x"));
        assert!(!topic_allowed(&g, t, Access::Write, b"alice.x"));
        assert!(!topic_allowed(&g, t, Access::Write, b"xbob.x"));
        assert!(topic_allowed(&g, t, Access::Read, b"v1.#"));
        assert!(topic_allowed(&g, t, Access::Read, b"public.a"));
        assert!(!topic_allowed(&g, t, Access::Read, b"v2.a"));
        // Empty: only the empty key.
        assert!(topic_allowed(&g, b"t2", Access::Write, b""));
        assert!(!topic_allowed(&g, b"t2", Access::Write, b"a"));
        // Exchanges without a topic permission are open.
        assert!(topic_allowed(&g, b"other", Access::Write, b"anything"));
        assert!(a.topic_grants("bob", "v2").is_empty());
        // A pattern that does not compile is refused when set; one that
        // stops compiling once expanded matches nothing.
        assert!(TopicPermission::new("(", ".*").is_err());
        let odd = TopicPermission::new("^{username}$", ".*").unwrap();
        let g = [odd.compile("x", "a(b", "/")];
        assert!(!topic_allowed(&g, b"x", Access::Write, b"a(b"));
        let json = a.topic_permissions_json(Some("bob"), None);
        assert_eq!(json.len(), 2);
        assert_eq!(json[0]["exchange"], "amq.topic");
        assert_eq!(json[0]["write"], "^{username}\\.");
        assert_eq!(a.topic_permissions_json(None, Some("v1")).len(), 3);
    }
}
