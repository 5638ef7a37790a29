//! RabbitMQ's definitions export (`rabbitmqctl export_definitions`, the
//! management API's `/api/definitions`): users with their password hashes,
//! vhosts, permissions and the topology, imported into an empty broker at
//! boot (`--definitions FILE`), as RabbitMQ's `load_definitions` does.

use crate::auth::{Auth, HashAlgorithm, Password, Permission, User};
use crate::core::CoreConfig;
use amqp_router::definitions::Topology;
use serde::Deserialize;

/// The parts of a definitions export the broker reads.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Definitions {
    /// Users.
    #[serde(default)]
    pub users: Vec<UserDef>,
    /// Virtual hosts.
    #[serde(default)]
    pub vhosts: Vec<VhostDef>,
    /// Permissions.
    #[serde(default)]
    pub permissions: Vec<PermissionDef>,
    /// Exchanges, queues, bindings, policies.
    #[serde(flatten)]
    pub topology: Topology,
}

/// A user of the export.
#[derive(Debug, Clone, Deserialize)]
pub struct UserDef {
    /// Name.
    pub name: String,
    /// base64 of salt and digest.
    pub password_hash: String,
    /// The digest's algorithm (absent: MD5).
    pub hashing_algorithm: Option<String>,
    /// Tags: a list, or a comma-separated string in older exports.
    #[serde(default)]
    pub tags: serde_json::Value,
}

/// A vhost of the export.
#[derive(Debug, Clone, Deserialize)]
pub struct VhostDef {
    /// Name.
    pub name: String,
}

/// A permission of the export.
#[derive(Debug, Clone, Deserialize)]
pub struct PermissionDef {
    /// User.
    pub user: String,
    /// Vhost.
    pub vhost: String,
    /// Configure pattern.
    pub configure: String,
    /// Write pattern.
    pub write: String,
    /// Read pattern.
    pub read: String,
}

impl Definitions {
    /// Parses an export; the error names what is wrong.
    pub fn from_json(text: &str) -> Result<Definitions, String> {
        serde_json::from_str(text).map_err(|e| format!("not a definitions export: {e}"))
    }

    /// Adds the export's users, vhosts and permissions to `config` (the
    /// export's users replace the first-boot guest when it has any).
    pub fn apply(&self, config: &mut CoreConfig) -> Result<(), String> {
        if !self.users.is_empty() {
            config.auth = Auth {
                users: Default::default(),
                permissions: Default::default(),
                loopback_users: config.auth.loopback_users.clone(),
            };
        }
        for u in &self.users {
            let algo = HashAlgorithm::from_name(u.hashing_algorithm.as_deref())
                .map_err(|e| format!("user '{}': {e}", u.name))?;
            let password = Password::from_hash(&u.password_hash, algo)
                .map_err(|e| format!("user '{}': {e}", u.name))?;
            let tags = match &u.tags {
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect(),
                serde_json::Value::String(s) => s
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect(),
                _ => Vec::new(),
            };
            config.auth.users.insert(
                u.name.clone(),
                User {
                    name: u.name.clone(),
                    password,
                    tags,
                },
            );
        }
        for v in &self.vhosts {
            if !config.vhosts.contains(&v.name) {
                config.vhosts.push(v.name.clone());
            }
        }
        for p in &self.permissions {
            let perm = Permission::new(&p.configure, &p.write, &p.read)
                .map_err(|e| format!("permissions of '{}' in '{}': {e}", p.user, p.vhost))?;
            config
                .auth
                .permissions
                .insert((p.user.clone(), p.vhost.clone()), perm);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rabbitmq_export_logs_its_users_in() {
        // From `rabbitmqctl export_definitions` (RabbitMQ 3.10.8) after
        // `rabbitmqctl add_user limited limited`.
        let text = r#"{"rabbit_version":"3.10.8","users":[
            {"hashing_algorithm":"rabbit_password_hashing_sha256","limits":{},"name":"guest",
             "password_hash":"jfsx+8mbmsQG4/GkyuDWoiCnfhDFATh+D0SP6OYjc92sBGoY","tags":["administrator"]},
            {"hashing_algorithm":"rabbit_password_hashing_sha256","limits":{},"name":"limited",
             "password_hash":"y/P+ciiN49Dio/5HPudInHnbMmYOsR/VIYuvvDHOLilTVj3D","tags":[]}],
            "vhosts":[{"limits":[],"metadata":{"description":"","tags":[]},"name":"/"},{"name":"other-vhost"}],
            "permissions":[{"configure":".*-mine.*","read":".*-mine.*","user":"limited","vhost":"/","write":".*-mine.*"}],
            "queues":[{"name":"jobs","vhost":"/","durable":true,"auto_delete":false,"arguments":{"x-max-length":10}}],
            "exchanges":[],"bindings":[],"policies":[],"parameters":[],"global_parameters":[],"topic_permissions":[]}"#;
        let d = Definitions::from_json(text).unwrap();
        let mut c = CoreConfig::default();
        d.apply(&mut c).unwrap();
        assert!(c.auth.login("guest", "guest", true));
        assert!(c.auth.login("limited", "limited", false));
        assert!(!c.auth.login("limited", "guest", false));
        assert_eq!(c.vhosts, ["/", "other-vhost"]);
        assert!(c.auth.may_open("limited", "/") && !c.auth.may_open("limited", "other-vhost"));
        assert_eq!(d.topology.queues.len(), 1);
        assert!(Definitions::from_json("[]").is_err());
    }
}
