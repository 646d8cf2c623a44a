//! Frames from the device: ACKs (coalesced), marks, pings.

use super::*;

impl Session {
    pub(super) fn client(
        &mut self,
        f: ClientFrame,
        io: Io,
        out: &mut Out<'_>,
    ) -> Result<(), Ending> {
        let ids_ok = |ids: &[String]| -> Result<(), String> {
            ids.iter()
                .try_for_each(|i| validate_id("ids", i).map_err(|e| e.to_string()))
        };
        let epoch = self.epoch;
        let parse_up_to = |s: &Option<String>| -> Result<Option<i64>, String> {
            match s.as_deref().map(str::parse::<Cursor>) {
                None => Ok(None),
                Some(Ok(c)) if c.matches(epoch) => Ok(Some(c.seq.min(i64::MAX as u64) as i64)),
                Some(Ok(_)) => Err("cursor from another epoch".into()),
                Some(Err(e)) => Err(e.to_string()),
            }
        };
        let invalid = |out: &mut Out<'_>, message: String| {
            out.frame(ServerFrame::Error {
                code: "invalid_request".into(),
                message,
            })
        };
        let event = match f {
            ClientFrame::Hello { .. } => {
                return Err(Ending::new(Close::ProtocolError, "hello was already sent"));
            }
            ClientFrame::Ping {} => {
                out.frame(ServerFrame::Pong);
                return Ok(());
            }
            ClientFrame::Ack { ids, up_to } => {
                let up_to = match ids_ok(&ids).and_then(|()| parse_up_to(&up_to)) {
                    Ok(u) => u,
                    Err(e) => {
                        invalid(out, e);
                        return Ok(());
                    }
                };
                self.processed(&ids, up_to.map(|u| u as u64), Some(io.now_ms));
                if let Some(u) = up_to {
                    self.ack_up_to = Some(self.ack_up_to.map_or(u, |a| a.max(u)));
                }
                // Coalesced: every ACK since the last pump becomes one event.
                if !ids.is_empty() || up_to.is_some() {
                    self.progress_since.get_or_insert(io.now_ms);
                }
                self.ack_ids.extend(ids);
                return Ok(());
            }
            ClientFrame::Read { ids, up_to } => {
                match ids_ok(&ids).and_then(|()| parse_up_to(&up_to)) {
                    // As over HTTP: a mark of nothing is refused, not appended.
                    Ok(None) if ids.is_empty() => {
                        invalid(out, "name ids (or up_to for read)".into());
                        return Ok(());
                    }
                    Ok(up_to) => UserEvent::Read(self.mark(ids, up_to, io.now_ms)),
                    Err(e) => {
                        invalid(out, e);
                        return Ok(());
                    }
                }
            }
            ClientFrame::Unread { ids } | ClientFrame::Archive { ids } if ids.is_empty() => {
                invalid(out, "name ids".into());
                return Ok(());
            }
            ClientFrame::Unread { ids } => match ids_ok(&ids) {
                Ok(()) => UserEvent::Unread(self.mark(ids, None, io.now_ms)),
                Err(e) => {
                    invalid(out, e);
                    return Ok(());
                }
            },
            ClientFrame::Archive { ids } => match ids_ok(&ids) {
                Ok(()) => UserEvent::Archived(self.mark(ids, None, io.now_ms)),
                Err(e) => {
                    invalid(out, e);
                    return Ok(());
                }
            },
        };
        out.actions.push(Action::Append(vec![event]));
        Ok(())
    }

    pub(super) fn mark(&self, ids: Vec<String>, up_to: Option<i64>, at: i64) -> MarkChange {
        MarkChange {
            user_id: self.user.clone(),
            device_id: Some(self.device.clone()),
            notification_ids: ids,
            up_to,
            at,
        }
    }
}
