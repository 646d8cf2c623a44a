//! The statements of a write: a fold [`Write`] stamped with its event's offset (the crate's
//! rule 2), a [`DirectoryWrite`] with a strictly increasing wall clock, so a later change wins.

use herald_core::projection::{DirectoryWrite, Write};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use crate::ScyllaProjection;
use crate::layout::{big, bucket, hour, monotonic_micros, shard, text};
use crate::statements::Stmt;

impl ScyllaProjection {
    /// The statements of one write, stamped with its event's offset.
    pub(crate) fn statements_of(&self, offset: u64, write: Write) -> Vec<Stmt> {
        let st = &self.st;
        let ts = big(offset.saturating_add(1));
        let s = |st: &PreparedStatement, values: Vec<Option<CqlValue>>| Stmt {
            st: st.clone(),
            values,
        };
        match write {
            Write::PutRow(r) => {
                let (user, seq, b) = (text(&r.user_id), big(r.seq), big(bucket(r.seq)));
                let mut out = vec![
                    s(
                        &st.put_row,
                        vec![
                            b.clone(),
                            user.clone(),
                            seq.clone(),
                            text(&r.notification_id),
                            text(&r.event_type),
                            text(&r.source),
                            text(&r.payload),
                            text(r.priority.as_str()),
                            r.collapse_key.as_deref().and_then(text),
                            big(r.created_at),
                            r.deliver_at.and_then(big),
                            r.expires_at.and_then(big),
                            Some(CqlValue::Boolean(r.read)),
                            Some(CqlValue::Boolean(r.archived)),
                            Some(CqlValue::Boolean(r.expired)),
                            Some(CqlValue::Boolean(r.superseded)),
                            Some(CqlValue::Boolean(r.live)),
                            ts.clone(),
                        ],
                    ),
                    s(&st.put_bucket, vec![user.clone(), b.clone(), ts.clone()]),
                    s(
                        &st.put_id,
                        vec![
                            user.clone(),
                            text(&r.notification_id),
                            seq.clone(),
                            ts.clone(),
                        ],
                    ),
                ];
                out.push(if r.read {
                    s(
                        &st.del_unread,
                        vec![ts.clone(), user.clone(), b.clone(), seq.clone()],
                    )
                } else {
                    s(
                        &st.put_unread,
                        vec![user.clone(), b.clone(), seq.clone(), ts.clone()],
                    )
                });
                if let Some(key) = &r.collapse_key {
                    out.push(if r.listed() {
                        s(
                            &st.put_collapse,
                            vec![user.clone(), text(key), seq.clone(), ts.clone()],
                        )
                    } else {
                        s(
                            &st.del_collapse,
                            vec![ts.clone(), user.clone(), text(key), seq.clone()],
                        )
                    });
                }
                if let Some(at) = r.expires_at {
                    let h = big(hour(at));
                    if r.listed() {
                        out.push(s(
                            &st.put_expiry,
                            vec![
                                h.clone(),
                                big(at),
                                user.clone(),
                                seq.clone(),
                                text(&r.notification_id),
                                ts.clone(),
                            ],
                        ));
                        out.push(s(&st.put_expiry_hour, vec![h, big(monotonic_micros())]));
                    } else {
                        out.push(s(&st.del_expiry, vec![ts, h, big(at), user, seq]));
                    }
                }
                out
            }
            Write::SetUnreadCount { user_id, count } => {
                vec![s(&st.set_count, vec![text(&user_id), big(count), ts])]
            }
            Write::AckSeq {
                user_id,
                device_id,
                seq,
            } => vec![s(
                &st.put_ack,
                vec![
                    text(&user_id),
                    text(&device_id),
                    big(bucket(seq)),
                    big(seq),
                    ts,
                ],
            )],
            Write::SetDeviceCursor {
                user_id,
                device_id,
                seq,
            } => vec![s(
                &st.set_cursor,
                // The largest cursor wins whatever order the writes land in.
                vec![
                    text(&user_id),
                    text(&device_id),
                    big(seq),
                    big(seq.saturating_add(1)),
                ],
            )],
            Write::KnowUser { user_id } => vec![s(&st.know_user, vec![text(&user_id), ts])],
            Write::SetPreferences {
                user_id,
                preferences,
            } => {
                let doc = serde_json::to_string(&preferences).expect("preferences serialize");
                vec![s(&st.put_preferences, vec![text(&user_id), text(&doc), ts])]
            }
        }
    }

    pub(crate) fn directory_statements(&self, w: DirectoryWrite) -> Stmt {
        let st = &self.st;
        let ts = big(monotonic_micros());
        let json = |v: &Vec<String>| serde_json::to_string(v).expect("strings serialize");
        // A member set's key: (name, shard of the user), user.
        let member =
            |name: &str, user: &str| vec![text(name), Some(CqlValue::Int(shard(user))), text(user)];
        let (st, values) = match w {
            DirectoryWrite::UpsertUser { user_id, roles } => {
                (&st.set_roles, vec![text(&user_id), text(&json(&roles)), ts])
            }
            DirectoryWrite::KnowUser { user_id } => (&st.know_user, vec![text(&user_id), ts]),
            DirectoryWrite::AddMember { group, user_id } => (
                &st.add_member,
                [member(&group, &user_id), vec![ts]].concat(),
            ),
            DirectoryWrite::RemoveMember { group, user_id } => (
                &st.del_member,
                [vec![ts], member(&group, &user_id)].concat(),
            ),
            DirectoryWrite::Subscribe { topic, user_id } => {
                (&st.subscribe, [member(&topic, &user_id), vec![ts]].concat())
            }
            DirectoryWrite::Unsubscribe { topic, user_id } => (
                &st.unsubscribe,
                [vec![ts], member(&topic, &user_id)].concat(),
            ),
            DirectoryWrite::DefineRole { role, topics } => {
                (&st.define_role, vec![text(&role), text(&json(&topics)), ts])
            }
        };
        Stmt {
            st: st.clone(),
            values,
        }
    }
}
