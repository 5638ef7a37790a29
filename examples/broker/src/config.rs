//! The configuration file (`--config FILE`, TOML).
//!
//! ```toml
//! product = "amqp-broker"          # server-properties "product" (some clients check for "RabbitMQ")
//! heartbeat = 60                   # seconds offered in connection.tune (0 = off)
//! frame_max = 131072
//! channel_max = 2047
//! loopback_users = ["guest"]       # users that may only log in over loopback
//! consumer_timeout = 1800000       # ms an unacknowledged delivery may wait (false: forever)
//! max_message_size = 134217728     # bytes (RabbitMQ's default, 128 MiB)
//!
//! [[vhosts]]
//! name = "/"
//! max_connections = 1000           # optional, as rabbitmqctl set_vhost_limits
//! max_queues = 500                 # optional
//!
//! [[users]]
//! name = "guest"
//! password = "guest"
//! tags = ["administrator"]
//! max_connections = 10             # optional, as rabbitmqctl set_user_limits
//! max_channels = 100               # optional: channels over all the user's connections
//!
//! [[permissions]]
//! user = "guest"
//! vhost = "/"
//! configure = ".*"
//! write = ".*"
//! read = ".*"
//!
//! [[topic_permissions]]            # as `rabbitmqctl set_topic_permissions`
//! user = "guest"
//! vhost = "/"
//! exchange = "amq.topic"           # a topic exchange
//! write = "^{username}\\."         # routing keys it may publish with ({username}, {vhost} expand)
//! read = ".*"                      # binding keys it may bind with ("" matches nothing)
//!
//! [[policies]]                     # as `rabbitmqctl set_policy`
//! vhost = "/"
//! name = "orders"
//! pattern = "^orders\\."
//! apply-to = "queues"              # queues, exchanges or all (default)
//! priority = 0
//! definition = { max-length = 10000, overflow = "reject-publish", dead-letter-exchange = "dlx" }
//!
//! [tls]                            # amqps:// (the --tls-* flags override these)
//! cert = "server.pem"              # certificate chain, PEM; paths relative to this file
//! key = "server.key"               # its private key, PEM
//! listen = ["0.0.0.0:5671"]        # the default when a certificate is configured
//! ca = "ca.pem"                    # verify client certificates against these CAs (verify_peer)
//! fail_if_no_peer_cert = false     # true: refuse clients without a certificate
//! ssl_cert_login_from = "distinguished_name"  # or common_name: the user EXTERNAL logs in
//! handshake_timeout = 10000        # ms a TLS handshake may take
//!
//! [paging]                         # queues beyond this go to disk (data dir's paging/)
//! enabled = true
//! window_messages = 16384          # messages a queue keeps in memory
//! window_bytes = 16777216          # or bytes (bodies + 160 each), whichever first
//! page_messages = 4096             # messages per page file
//! page_bytes = 4194304             # or bytes per page file
//! memory_budget = 0                # page past the window only while all queues' ready
//!                                  # messages hold more bytes than this (0: always;
//!                                  # default: half the memory high watermark)
//! ```
//!
//! Without `users`, the broker has RabbitMQ's first-boot user guest/guest
//! with every permission on `/`; without `vhosts`, the one vhost `/`.

use crate::auth::{Auth, HashAlgorithm, Password, Permission, User};
use crate::core::CoreConfig;
use serde::Deserialize;

/// The file's contents.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `product` in server-properties.
    pub product: Option<String>,
    /// Heartbeat offered, seconds.
    pub heartbeat: Option<u16>,
    /// frame_max offered.
    pub frame_max: Option<u32>,
    /// channel_max offered.
    pub channel_max: Option<u16>,
    /// Users restricted to loopback.
    pub loopback_users: Option<Vec<String>>,
    /// `consumer_timeout`: milliseconds, or `false` for none.
    pub consumer_timeout: Option<ConsumerTimeout>,
    /// The largest message body accepted, bytes.
    pub max_message_size: Option<u64>,
    /// Virtual hosts.
    #[serde(default)]
    pub vhosts: Vec<VhostDef>,
    /// Users.
    #[serde(default)]
    pub users: Vec<UserDef>,
    /// Permissions.
    #[serde(default)]
    pub permissions: Vec<PermissionDef>,
    /// Topic permissions.
    #[serde(default)]
    pub topic_permissions: Vec<crate::definitions::TopicPermissionDef>,
    /// Policies (`vhost` defaults to `/`).
    #[serde(default)]
    pub policies: Vec<amqp_router::definitions::PolicyDef>,
    /// The TLS listener.
    pub tls: Option<TlsDef>,
    /// Paging of long queues.
    pub paging: Option<PagingDef>,
}

/// `[paging]`: how much of each queue stays in memory
/// ([`crate::paging`]).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PagingDef {
    /// `false`: queues keep every message in memory.
    pub enabled: Option<bool>,
    /// Messages a queue keeps in memory.
    pub window_messages: Option<usize>,
    /// Bytes a queue keeps in memory.
    pub window_bytes: Option<usize>,
    /// Messages per page.
    pub page_messages: Option<usize>,
    /// Bytes per page.
    pub page_bytes: Option<usize>,
    /// Queues page past their windows only while their ready messages
    /// hold more than this many bytes in memory; 0: always. Default: half
    /// the memory high watermark (RabbitMQ's paging ratio).
    pub memory_budget: Option<usize>,
}

impl PagingDef {
    /// The sizes in force (`None`: paging is off); zero sizes are refused.
    pub fn paging(&self) -> Result<Option<crate::paging::Paging>, String> {
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let d = crate::paging::Paging::default();
        let p = crate::paging::Paging {
            window_messages: self.window_messages.unwrap_or(d.window_messages),
            window_bytes: self.window_bytes.unwrap_or(d.window_bytes),
            page_messages: self.page_messages.unwrap_or(d.page_messages),
            page_bytes: self.page_bytes.unwrap_or(d.page_bytes),
            memory_budget: self.memory_budget.unwrap_or(d.memory_budget),
        };
        if p.window_messages == 0
            || p.window_bytes == 0
            || p.page_messages == 0
            || p.page_bytes == 0
        {
            return Err(
                "[paging]: sizes must be at least 1 (enabled = false turns paging off)".into(),
            );
        }
        Ok(Some(p))
    }
}

/// `[tls]`: the TLS listener (RabbitMQ's `listeners.ssl` and
/// `ssl_options`). Relative paths are relative to the config file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsDef {
    /// Addresses (default `0.0.0.0:5671` when `cert` is set).
    #[serde(default)]
    pub listen: Vec<std::net::SocketAddr>,
    /// Certificate chain, PEM.
    pub cert: Option<std::path::PathBuf>,
    /// Private key, PEM.
    pub key: Option<std::path::PathBuf>,
    /// CA bundle for client certificates (`verify_peer`).
    pub ca: Option<std::path::PathBuf>,
    /// Refuse clients without a certificate.
    pub fail_if_no_peer_cert: Option<bool>,
    /// `distinguished_name` (default) or `common_name`.
    pub ssl_cert_login_from: Option<String>,
    /// Milliseconds a handshake may take (default 10000).
    pub handshake_timeout: Option<u64>,
}

/// `consumer_timeout = 1800000` (ms, as in rabbitmq.conf) or `false`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum ConsumerTimeout {
    /// Milliseconds.
    Ms(u64),
    /// `false`: no timeout (`true` is refused).
    Enabled(bool),
}

/// `[[vhosts]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostDef {
    /// Its name.
    pub name: String,
    /// `max-connections`.
    pub max_connections: Option<u64>,
    /// `max-queues`.
    pub max_queues: Option<u64>,
}

/// `[[users]]`: `password` in clear, or `password_hash` (RabbitMQ's
/// format, from `amqp-broker hash-password` or a definitions export) with
/// `hashing_algorithm` (default SHA-256).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDef {
    /// User name.
    pub name: String,
    /// Password in clear.
    pub password: Option<String>,
    /// RabbitMQ's salted hash, base64.
    pub password_hash: Option<String>,
    /// `rabbit_password_hashing_sha256` (default), `_sha512` or `_md5`.
    pub hashing_algorithm: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// `max-connections`.
    pub max_connections: Option<u64>,
    /// `max-channels`.
    pub max_channels: Option<u64>,
}

/// `[[permissions]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionDef {
    /// User name.
    pub user: String,
    /// Virtual host.
    pub vhost: String,
    /// Configure pattern.
    pub configure: String,
    /// Write pattern.
    pub write: String,
    /// Read pattern.
    pub read: String,
}

impl Config {
    /// Parses a configuration file's text; errors name the problem.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The core's configuration.
    pub fn core(&self) -> Result<CoreConfig, String> {
        let mut cfg = CoreConfig::default();
        if !self.vhosts.is_empty() {
            cfg.vhosts = self.vhosts.iter().map(|v| v.name.clone()).collect();
        }
        for v in &self.vhosts {
            let l = crate::core::VhostLimits {
                max_connections: v.max_connections,
                max_queues: v.max_queues,
            };
            if l != crate::core::VhostLimits::default() {
                cfg.limits.vhosts.insert(v.name.clone(), l);
            }
        }
        for u in &self.users {
            let l = crate::core::UserLimits {
                max_connections: u.max_connections,
                max_channels: u.max_channels,
            };
            if l != crate::core::UserLimits::default() {
                cfg.limits.users.insert(u.name.clone(), l);
            }
        }
        if let Some(m) = self.max_message_size {
            cfg.limits.max_message_size = m;
        }
        if !self.users.is_empty() {
            let mut auth = Auth {
                users: Default::default(),
                permissions: Default::default(),
                loopback_users: vec!["guest".into()],
                vhost_meta: Default::default(),
                topic_permissions: Default::default(),
            };
            for u in &self.users {
                let password = match (&u.password, &u.password_hash) {
                    (Some(p), None) => Password::Plain(p.clone()),
                    (None, Some(h)) => {
                        let algo = HashAlgorithm::from_name(Some(
                            u.hashing_algorithm
                                .as_deref()
                                .unwrap_or("rabbit_password_hashing_sha256"),
                        ))
                        .map_err(|e| format!("user '{}': {e}", u.name))?;
                        Password::from_hash(h, algo)
                            .map_err(|e| format!("user '{}': {e}", u.name))?
                    }
                    _ => {
                        return Err(format!(
                            "user '{}': give exactly one of password and password_hash",
                            u.name
                        ));
                    }
                };
                auth.users.insert(
                    u.name.clone(),
                    User {
                        name: u.name.clone(),
                        password,
                        tags: u.tags.clone(),
                    },
                );
            }
            for p in &self.permissions {
                if !auth.users.contains_key(&p.user) {
                    return Err(format!("permissions for unknown user '{}'", p.user));
                }
                if !cfg.vhosts.contains(&p.vhost) {
                    return Err(format!("permissions in unknown vhost '{}'", p.vhost));
                }
                let perm = Permission::new(&p.configure, &p.write, &p.read)
                    .map_err(|e| format!("permissions of '{}': {e}", p.user))?;
                auth.permissions
                    .insert((p.user.clone(), p.vhost.clone()), perm);
            }
            cfg.auth = auth;
        }
        for t in &self.topic_permissions {
            if !cfg.auth.users.contains_key(&t.user) {
                return Err(format!("topic_permissions for unknown user '{}'", t.user));
            }
            if !cfg.vhosts.contains(&t.vhost) {
                return Err(format!("topic_permissions in unknown vhost '{}'", t.vhost));
            }
            let (key, p) = t.permission()?;
            cfg.auth.topic_permissions.insert(key, p);
        }
        if let Some(l) = &self.loopback_users {
            cfg.auth.loopback_users = l.clone();
        }
        for p in &self.policies {
            let vhost = p.vhost.as_deref().unwrap_or("/");
            if !cfg.vhosts.iter().any(|v| v == vhost) {
                return Err(format!("policy '{}' in unknown vhost '{vhost}'", p.name));
            }
            crate::policy::Policy::new(p)
                .map_err(|e| format!("policy '{}': {}", p.name, e.trim().replace("\n\n", ": ")))?;
        }
        cfg.policies = self.policies.clone();
        match self.consumer_timeout {
            None => {}
            Some(ConsumerTimeout::Ms(ms)) => {
                cfg.consumer_timeout = Some(std::time::Duration::from_millis(ms));
            }
            Some(ConsumerTimeout::Enabled(false)) => cfg.consumer_timeout = None,
            Some(ConsumerTimeout::Enabled(true)) => {
                return Err(
                    "consumer_timeout: give milliseconds (RabbitMQ's default is 1800000) or false"
                        .into(),
                );
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let text = "product = \"RabbitMQ\"\nheartbeat = 30\n[[vhosts]]\nname = \"/\"\n[[vhosts]]\nname = \"prod\"\n[[users]]\nname = \"bob\"\npassword = \"pw\"\n[[permissions]]\nuser = \"bob\"\nvhost = \"prod\"\nconfigure = \"^bob\"\nwrite = \".*\"\nread = \".*\"\n";
        let c = Config::parse(text).unwrap();
        assert_eq!(c.heartbeat, Some(30));
        let core = c.core().unwrap();
        assert_eq!(core.vhosts, ["/", "prod"]);
        assert!(core.auth.login("bob", "pw", false));
        assert!(core.auth.may_open("bob", "prod") && !core.auth.may_open("bob", "/"));
        assert_eq!(core.consumer_timeout, Some(crate::core::CONSUMER_TIMEOUT));
        let ms = Config::parse("consumer_timeout = 5000")
            .unwrap()
            .core()
            .unwrap();
        assert_eq!(ms.consumer_timeout, Some(std::time::Duration::from_secs(5)));
        let off = Config::parse("consumer_timeout = false")
            .unwrap()
            .core()
            .unwrap();
        assert_eq!(off.consumer_timeout, None);
        let p = Config::parse(
            "[[policies]]\nname = \"o\"\npattern = \"^o\"\napply-to = \"queues\"\npriority = 2\ndefinition = { max-length = 5, overflow = \"reject-publish\" }\n",
        )
        .unwrap()
        .core()
        .unwrap();
        assert_eq!(p.policies.len(), 1);
        assert_eq!(p.policies[0].definition["max-length"], 5);
        let bad = Config::parse(
            "[[policies]]\nname = \"o\"\npattern = \"^o\"\ndefinition = { max-length = -1 }\n",
        )
        .unwrap()
        .core()
        .unwrap_err();
        assert_eq!(
            bad,
            "policy 'o': Validation failed: -1 is not a valid maximum length"
        );
    }

    #[test]
    fn tls_section() {
        let c = Config::parse(
            "[tls]\ncert = \"s.pem\"\nkey = \"s.key\"\nlisten = [\"127.0.0.1:5671\"]\nca = \"ca.pem\"\nfail_if_no_peer_cert = true\nssl_cert_login_from = \"common_name\"\nhandshake_timeout = 500\n",
        )
        .unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.listen, ["127.0.0.1:5671".parse().unwrap()]);
        assert_eq!(t.ca.unwrap(), std::path::Path::new("ca.pem"));
        assert_eq!(t.fail_if_no_peer_cert, Some(true));
        assert_eq!(t.ssl_cert_login_from.as_deref(), Some("common_name"));
        assert_eq!(t.handshake_timeout, Some(500));
        let e = Config::parse("[tls]\nverify = true\n").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Config::parse("nope = 1").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = Config::parse("consumer_timeout = true")
            .unwrap()
            .core()
            .unwrap_err();
        assert!(e.contains("consumer_timeout"), "{e}");
        let c = Config::parse("[[users]]\nname = \"a\"\npassword = \"b\"\n[[permissions]]\nuser = \"a\"\nvhost = \"x\"\nconfigure = \"\"\nwrite = \"\"\nread = \"\"\n").unwrap();
        assert!(c.core().unwrap_err().contains("unknown vhost 'x'"));
        let t = "[[topic_permissions]]\nuser = \"guest\"\nvhost = \"/\"\nexchange = \"amq.topic\"\nwrite = \"(\"\nread = \"\"\n";
        let e = Config::parse(t).unwrap().core().unwrap_err();
        assert!(e.contains("invalid regexp"), "{e}");
        let e = Config::parse(&t.replace("guest", "nobody"))
            .unwrap()
            .core()
            .unwrap_err();
        assert!(e.contains("unknown user 'nobody'"), "{e}");
    }

    #[test]
    fn topic_permissions_section() {
        let c = Config::parse(
            "[[topic_permissions]]\nuser = \"guest\"\nvhost = \"/\"\nexchange = \"amq.topic\"\nwrite = \"^{username}\\\\.\"\nread = \".*\"\n",
        )
        .unwrap()
        .core()
        .unwrap();
        let key = ("guest".to_owned(), "/".to_owned(), "amq.topic".to_owned());
        assert_eq!(c.auth.topic_permissions[&key].write, "^{username}\\.");
        let g = c.auth.topic_grants("guest", "/");
        use crate::auth::{Access, topic_allowed};
        assert!(topic_allowed(&g, b"amq.topic", Access::Write, b"guest.a"));
        assert!(!topic_allowed(&g, b"amq.topic", Access::Write, b"other.a"));
    }
}
