//! Users, passwords, virtual hosts and permissions, as RabbitMQ's internal
//! authentication backend models them.

use regex::Regex;
use std::collections::HashMap;

/// A user and how to check their password.
#[derive(Debug, Clone)]
pub struct User {
    /// The user name.
    pub name: String,
    /// The password, compared as given (hashed forms come with the security
    /// work).
    pub password: String,
    /// Tags (`administrator`, `monitoring`, ...).
    pub tags: Vec<String>,
}

/// What a user may do in one virtual host: three regular expressions over
/// resource names, matched unanchored as RabbitMQ does.
#[derive(Debug, Clone)]
pub struct Permission {
    /// Declare and delete.
    pub configure: Regex,
    /// Publish, bind as destination.
    pub write: Regex,
    /// Consume, get, purge, bind as source.
    pub read: Regex,
}

impl Permission {
    /// Builds a permission from its three patterns.
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Self, regex::Error> {
        Ok(Permission {
            configure: Regex::new(configure)?,
            write: Regex::new(write)?,
            read: Regex::new(read)?,
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
        // The pattern is a constant known to compile.
        Permission::new(".*", ".*", ".*").unwrap_or_else(|_| unreachable!())
    }
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
                password: "guest".into(),
                tags: vec!["administrator".into()],
            },
        );
        let mut permissions = HashMap::new();
        permissions.insert(("guest".to_owned(), "/".to_owned()), Permission::all());
        Auth {
            users,
            permissions,
            loopback_users: vec!["guest".into()],
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
        u.password == password
    }

    /// Whether `user` may open `vhost` (has any permission there).
    pub fn may_open(&self, user: &str, vhost: &str) -> bool {
        self.permissions
            .contains_key(&(user.to_owned(), vhost.to_owned()))
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
    fn guest_only_over_loopback() {
        let a = Auth::default();
        assert!(a.login("guest", "guest", true));
        assert!(!a.login("guest", "guest", false));
        assert!(!a.login("guest", "nope", true));
        assert!(!a.login("nobody", "guest", true));
    }

    #[test]
    fn permissions_match_unanchored() {
        let mut a = Auth::default();
        a.users.insert(
            "bob".into(),
            User {
                name: "bob".into(),
                password: "pw".into(),
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
}
