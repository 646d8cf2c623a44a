//! Recipient resolution: who a notification request goes to, as of the directory.
//!
//! [`resolve`] reads what it needs through [`DirectoryState`], which each projection adapter
//! implements over its store, as it implements [`crate::projection::ProjectionState`] for the
//! fold. The RBAC rule lives here once ([`topic_allowed`]): a user with roles receives a topic
//! only if one of their roles lists it (or `*`); a user without roles receives every topic they
//! follow.

use std::collections::BTreeSet;

use crate::model::{Recipients, RoleDefinition};

/// What recipient resolution reads: the directory.
pub trait DirectoryState {
    type Error;
    /// The members of a group.
    fn group_members(&mut self, group: &str) -> Result<Vec<String>, Self::Error>;
    /// The users who follow a topic.
    fn topic_subscribers(&mut self, topic: &str) -> Result<Vec<String>, Self::Error>;
    /// A user's roles; none for a user without roles or not known.
    fn user_roles(&mut self, user_id: &str) -> Result<Vec<String>, Self::Error>;
    /// The topics a role's users may receive; none for a role not defined.
    fn role_topics(&mut self, role: &str) -> Result<Vec<String>, Self::Error>;
    /// Every known user (for `everyone`).
    fn all_users(&mut self) -> Result<Vec<String>, Self::Error>;
}

/// The recipients of a request: sorted, each user once. Topic subscribers are filtered by RBAC
/// ([`topic_allowed`]).
pub fn resolve<S: DirectoryState>(state: &mut S, r: &Recipients) -> Result<Vec<String>, S::Error> {
    let mut users: BTreeSet<String> = r.users.iter().cloned().collect();
    for g in &r.groups {
        users.extend(state.group_members(g)?);
    }
    if let Some(t) = &r.topic {
        for u in state.topic_subscribers(t)? {
            if topic_allowed(state, &u, t)? {
                users.insert(u);
            }
        }
    }
    if r.everyone {
        users.extend(state.all_users()?);
    }
    Ok(users.into_iter().collect())
}

/// RBAC: whether `user` may receive `topic` (no roles: yes; else one of the roles lists it).
/// Reads the roles' topics one role at a time and stops at the first that allows.
pub fn topic_allowed<S: DirectoryState>(
    state: &mut S,
    user: &str,
    topic: &str,
) -> Result<bool, S::Error> {
    let roles = state.user_roles(user)?;
    if roles.is_empty() {
        return Ok(true);
    }
    for role in roles {
        if RoleDefinition::allows(&state.role_topics(&role)?, topic) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::ProjectionSnapshot;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn topic_subscribers_are_filtered_by_their_roles_and_users_come_out_sorted_once() {
        let mut d = ProjectionSnapshot::default();
        d.users.insert("ann".into(), strings(&["ops"]));
        d.users.insert("bob".into(), strings(&["sales"]));
        d.users.insert("cy".into(), Vec::new());
        d.users.insert("dee".into(), strings(&["admin"]));
        d.roles.insert("ops".into(), strings(&["alerts"]));
        d.roles.insert("sales".into(), strings(&["deals"]));
        d.roles.insert("admin".into(), strings(&["*"]));
        for u in ["ann", "bob", "cy", "dee"] {
            d.topics.insert(("alerts".into(), u.into()));
        }
        d.groups.insert(("team".into(), "bob".into()));
        let r = Recipients {
            users: strings(&["zed", "bob"]),
            groups: strings(&["team"]),
            topic: Some("alerts".into()),
            everyone: false,
        };
        let Ok(users) = resolve(&mut d, &r);
        assert_eq!(users, strings(&["ann", "bob", "cy", "dee", "zed"]));
        let Ok(allowed) = topic_allowed(&mut d, "bob", "alerts");
        assert!(!allowed, "bob's only role does not list alerts");
        let everyone = Recipients {
            everyone: true,
            ..Recipients::default()
        };
        let Ok(users) = resolve(&mut d, &everyone);
        assert_eq!(users, strings(&["ann", "bob", "cy", "dee"]));
    }
}
