//! RabbitMQ's definitions export (`rabbitmqctl export_definitions`, the
//! management API's `/api/definitions`): users with their password hashes,
//! vhosts, permissions and the topology, imported into an empty broker at
//! boot (`--definitions FILE`), as RabbitMQ's `load_definitions` does.

use crate::auth::{
    Auth, HashAlgorithm, Password, Permission, TopicPermission, User, VhostMeta, parse_tags,
};
use crate::core::snapshot::AdminError;
use crate::core::{Core, CoreConfig};
use amqp_router::definitions::{Topology, json_to_table};
use serde::Deserialize;
use std::time::Instant;

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
    /// Topic permissions.
    #[serde(default)]
    pub topic_permissions: Vec<TopicPermissionDef>,
    /// Exchanges, queues, bindings, policies.
    #[serde(flatten)]
    pub topology: Topology,
    /// Whether the export has a `users` key (RabbitMQ's full exports and
    /// the data directory's `definitions.json` do): its users, vhosts and
    /// permissions are then the whole of them.
    #[serde(skip)]
    pub has_auth: bool,
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
    /// `{"max-connections": n, "max-channels": n}` (RabbitMQ's user
    /// limits).
    #[serde(default)]
    pub limits: Option<serde_json::Value>,
}

impl UserDef {
    /// The user's limits, when the export gives any.
    pub fn limits(&self) -> Result<Option<crate::core::UserLimits>, String> {
        self.limits
            .as_ref()
            .map(|l| {
                crate::core::snapshot::user_limits_from_json(l)
                    .map_err(|e| format!("user '{}': {e}", self.name))
            })
            .transpose()
    }
}

/// A vhost of the export.
#[derive(Debug, Clone, Deserialize)]
pub struct VhostDef {
    /// Name.
    pub name: String,
    /// `{"description": .., "tags": [..]}` (RabbitMQ 3.8+).
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// Older exports' description.
    #[serde(default)]
    pub description: Option<serde_json::Value>,
    /// Older exports' tags.
    #[serde(default)]
    pub tags: Option<serde_json::Value>,
}

impl VhostDef {
    /// Its description and tags, when the export gives any.
    pub fn meta(&self) -> Option<VhostMeta> {
        let m = self.metadata.as_ref();
        let description = m
            .and_then(|m| m.get("description"))
            .or(self.description.as_ref());
        let tags = m.and_then(|m| m.get("tags")).or(self.tags.as_ref());
        if description.is_none() && tags.is_none() {
            return None;
        }
        Some(VhostMeta {
            description: match description {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            },
            tags: tags.map(parse_tags).unwrap_or_default(),
        })
    }
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

/// A topic permission of the export (`rabbitmqctl
/// set_topic_permissions`).
#[derive(Debug, Clone, Deserialize)]
pub struct TopicPermissionDef {
    /// User.
    pub user: String,
    /// Vhost.
    pub vhost: String,
    /// Exchange.
    pub exchange: String,
    /// Pattern over published routing keys.
    pub write: String,
    /// Pattern over binding keys.
    pub read: String,
}

impl TopicPermissionDef {
    /// The key and permission, or why the patterns are refused.
    pub fn permission(&self) -> Result<((String, String, String), TopicPermission), String> {
        let p = TopicPermission::new(&self.write, &self.read).map_err(|e| {
            format!(
                "topic permissions of '{}' in '{}' on '{}': {e}",
                self.user, self.vhost, self.exchange
            )
        })?;
        Ok((
            (self.user.clone(), self.vhost.clone(), self.exchange.clone()),
            p,
        ))
    }
}

impl Definitions {
    /// Parses an export; the error names what is wrong.
    pub fn from_json(text: &str) -> Result<Definitions, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not a definitions export: {e}"))?;
        let has_auth = v.get("users").is_some();
        let mut d: Definitions =
            serde_json::from_value(v).map_err(|e| format!("not a definitions export: {e}"))?;
        d.has_auth = has_auth;
        Ok(d)
    }

    fn user(u: &UserDef) -> Result<User, String> {
        let algo = HashAlgorithm::from_name(u.hashing_algorithm.as_deref())
            .map_err(|e| format!("user '{}': {e}", u.name))?;
        let password = Password::from_stored_hash(&u.password_hash, algo)
            .map_err(|e| format!("user '{}': {e}", u.name))?;
        Ok(User {
            name: u.name.clone(),
            password,
            tags: parse_tags(&u.tags),
        })
    }

    /// Makes the export's users, vhosts (with their metadata) and
    /// permissions the whole of `config`'s (a data directory's saved state
    /// at boot: it is authoritative over the configuration file's).
    pub fn restore(&self, config: &mut CoreConfig) -> Result<(), String> {
        let mut auth = Auth {
            users: Default::default(),
            permissions: Default::default(),
            loopback_users: config.auth.loopback_users.clone(),
            vhost_meta: Default::default(),
            topic_permissions: Default::default(),
        };
        for u in &self.users {
            auth.users.insert(u.name.clone(), Self::user(u)?);
        }
        config.limits.users.clear();
        self.user_limits_into(&mut config.limits.users)?;
        config.vhosts.clear();
        for v in &self.vhosts {
            if !config.vhosts.contains(&v.name) {
                config.vhosts.push(v.name.clone());
            }
            if let Some(m) = v.meta() {
                auth.vhost_meta.insert(v.name.clone(), m);
            }
        }
        for p in &self.permissions {
            let perm = Permission::new(&p.configure, &p.write, &p.read)
                .map_err(|e| format!("permissions of '{}' in '{}': {e}", p.user, p.vhost))?;
            auth.permissions
                .insert((p.user.clone(), p.vhost.clone()), perm);
        }
        for t in &self.topic_permissions {
            let (key, p) = t.permission()?;
            auth.topic_permissions.insert(key, p);
        }
        config.auth = auth;
        Ok(())
    }

    /// Imports the export into a running broker (`POST /api/definitions`),
    /// adding to what it has and updating what it names, in RabbitMQ's
    /// order: users, vhosts, permissions, policies, queues, exchanges,
    /// bindings. Objects without a vhost go to `vhost` when given (`POST
    /// /api/definitions/vhost`), else to `/`. New vhosts give `creator`
    /// every permission, as creating them through the API does. Stops at
    /// the first error (what came before it stays).
    pub fn import(
        &self,
        core: &mut Core,
        vhost: Option<&str>,
        creator: Option<&str>,
        now: Instant,
    ) -> Result<(), AdminError> {
        let bad = AdminError::BadRequest;
        for u in &self.users {
            core.admin_put_user(Self::user(u).map_err(bad)?);
            if let Some(l) = u.limits().map_err(bad)? {
                core.admin_set_user_limits(&u.name, l);
            }
        }
        for v in &self.vhosts {
            core.admin_add_vhost(&v.name, v.meta(), creator)?;
        }
        for p in &self.permissions {
            let perm = Permission::new(&p.configure, &p.write, &p.read)
                .map_err(|e| bad(format!("permissions of '{}' in '{}': {e}", p.user, p.vhost)))?;
            core.admin_set_permission(&p.user, &p.vhost, perm)?;
        }
        for t in &self.topic_permissions {
            let ((user, vhost, exchange), p) = t.permission().map_err(bad)?;
            core.admin_set_topic_permission(&user, &vhost, &exchange, p)?;
        }
        let vh = |v: &Option<String>| v.clone().unwrap_or_else(|| vhost.unwrap_or("/").to_owned());
        // RabbitMQ's reason for a missing vhost; existing queues and
        // exchanges are left as they are (no equivalence check), as its
        // import does.
        let exists = |core: &Core, v: &str, name: &str, queue: bool| {
            core.admin_exists(v, name, queue)
                .map_err(|_| bad(serde_json::json!(["no_such_vhost", v]).to_string()))
        };
        let t = &self.topology;
        for p in &t.policies {
            let v = vh(&p.vhost);
            exists(core, &v, "", false)?;
            core.set_policy(&v, p, now)?;
        }
        for q in &t.queues {
            if exists(core, &vh(&q.vhost), &q.name, true)? {
                continue;
            }
            core.admin_declare_queue(
                &vh(&q.vhost),
                &q.name,
                q.durable,
                q.auto_delete,
                &json_to_table(&q.arguments),
                now,
            )?;
        }
        for x in &t.exchanges {
            if x.name.starts_with("amq.") || exists(core, &vh(&x.vhost), &x.name, false)? {
                continue;
            }
            core.admin_declare_exchange(
                &vh(&x.vhost),
                &x.name,
                &x.kind,
                x.durable,
                x.auto_delete,
                x.internal,
                &json_to_table(&x.arguments),
            )?;
        }
        for b in &t.bindings {
            exists(core, &vh(&b.vhost), "", false)?;
            core.admin_bind(
                &vh(&b.vhost),
                &b.source,
                &b.destination,
                b.destination_type == "queue",
                &b.routing_key,
                &json_to_table(&b.arguments),
            )?;
        }
        Ok(())
    }

    /// Puts the users' limits into `limits` (users without any are left
    /// out, as the core keeps them).
    fn user_limits_into(
        &self,
        limits: &mut std::collections::HashMap<String, crate::core::UserLimits>,
    ) -> Result<(), String> {
        for u in &self.users {
            match u.limits()? {
                Some(l) if l != crate::core::UserLimits::default() => {
                    limits.insert(u.name.clone(), l);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Adds the export's users, vhosts and permissions to `config` (the
    /// export's users replace the first-boot guest when it has any).
    pub fn apply(&self, config: &mut CoreConfig) -> Result<(), String> {
        if !self.users.is_empty() {
            config.auth = Auth {
                users: Default::default(),
                permissions: Default::default(),
                loopback_users: config.auth.loopback_users.clone(),
                vhost_meta: Default::default(),
                topic_permissions: Default::default(),
            };
        }
        for u in &self.users {
            config.auth.users.insert(u.name.clone(), Self::user(u)?);
        }
        self.user_limits_into(&mut config.limits.users)?;
        for v in &self.vhosts {
            if !config.vhosts.contains(&v.name) {
                config.vhosts.push(v.name.clone());
            }
            if let Some(m) = v.meta() {
                config.auth.vhost_meta.insert(v.name.clone(), m);
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
        for t in &self.topic_permissions {
            let (key, p) = t.permission()?;
            config.auth.topic_permissions.insert(key, p);
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
            {"hashing_algorithm":"rabbit_password_hashing_sha256","limits":{"max-channels":2,"max-connections":-1},"name":"limited",
             "password_hash":"y/P+ciiN49Dio/5HPudInHnbMmYOsR/VIYuvvDHOLilTVj3D","tags":[]}],
            "vhosts":[{"limits":[],"metadata":{"description":"","tags":[]},"name":"/"},{"name":"other-vhost"}],
            "permissions":[{"configure":".*-mine.*","read":".*-mine.*","user":"limited","vhost":"/","write":".*-mine.*"}],
            "queues":[{"name":"jobs","vhost":"/","durable":true,"auto_delete":false,"arguments":{"x-max-length":10}}],
            "exchanges":[],"bindings":[],"policies":[],"parameters":[],"global_parameters":[],
            "topic_permissions":[{"user":"limited","vhost":"/","exchange":"amq.topic","write":"^{username}\\.","read":""}]}"#;
        let d = Definitions::from_json(text).unwrap();
        let mut c = CoreConfig::default();
        d.apply(&mut c).unwrap();
        assert!(c.auth.login("guest", "guest", true));
        assert!(c.auth.login("limited", "limited", false));
        assert_eq!(c.limits.users["limited"].max_channels, Some(2));
        assert_eq!(c.limits.users["limited"].max_connections, None);
        assert!(!c.limits.users.contains_key("guest"));
        assert!(!c.auth.login("limited", "guest", false));
        assert_eq!(c.vhosts, ["/", "other-vhost"]);
        assert!(c.auth.may_open("limited", "/") && !c.auth.may_open("limited", "other-vhost"));
        assert_eq!(d.topology.queues.len(), 1);
        let key = ("limited".to_owned(), "/".to_owned(), "amq.topic".to_owned());
        assert_eq!(c.auth.topic_permissions[&key].write, "^{username}\\.");
        assert_eq!(c.auth.topic_permissions[&key].read, "");
        assert!(Definitions::from_json("[]").is_err());
        let bad = text.replace("^{username}", "(");
        let e = Definitions::from_json(&bad)
            .unwrap()
            .apply(&mut CoreConfig::default())
            .unwrap_err();
        assert!(e.contains("topic permissions of 'limited'"), "{e}");
    }

    #[test]
    fn saved_state_replaces_the_configuration() {
        // The data directory's file: users, vhosts with metadata,
        // permissions; a passwordless user ("" hash) is kept.
        let text = r#"{"users":[{"name":"ops","password_hash":"","hashing_algorithm":"rabbit_password_hashing_sha256","tags":"administrator"},
            {"name":"app","password_hash":"","hashing_algorithm":"rabbit_password_hashing_sha256","tags":[],"limits":{"max-connections":3}}],
            "vhosts":[{"name":"prod","limits":[],"metadata":{"description":"live","tags":["a"]}}],
            "permissions":[{"user":"ops","vhost":"prod","configure":".*","write":".*","read":".*"}]}"#;
        let d = Definitions::from_json(text).unwrap();
        assert!(d.has_auth);
        let mut c = CoreConfig::default();
        c.limits.users.insert(
            "ops".into(),
            crate::core::UserLimits {
                max_channels: Some(1),
                ..Default::default()
            },
        );
        d.restore(&mut c).unwrap();
        assert_eq!(c.vhosts, ["prod"]);
        // The users' limits come back with them (a definitions import
        // set them; the file keeps them across a restart).
        assert_eq!(c.limits.users["app"].max_connections, Some(3));
        assert!(!c.limits.users.contains_key("ops"), "saved state replaces");
        assert!(!c.auth.users.contains_key("guest"));
        assert_eq!(c.auth.users["ops"].tags, ["administrator"]);
        assert!(!c.auth.login("ops", "", true));
        assert!(c.auth.may_open("ops", "prod"));
        assert_eq!(c.auth.vhost_meta["prod"].description, "live");
        // An older file with the topology only leaves the configuration.
        assert!(!Definitions::from_json(r#"{"queues":[]}"#).unwrap().has_auth);
    }
}
