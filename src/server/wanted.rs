//! Which channels an SSE or long-poll request wants, from which positions, and attaching them.
//!
//! Both HTTP transports name their channels the same way (`?channel=`, `from`, `rewind`,
//! `Last-Event-ID`), so they parse and attach them here alike.

use axum::http::HeaderMap;
use tidings_protocol::{ErrorCode, Position, ServerFrame};

use super::state::AppState;
use super::subscription::{parse_positions, Subscription};
use crate::channel::ChannelName;
use crate::error::ApiError;
use crate::grant::{Operation, Principal};
use crate::publish;

/// Channels, positions and rewind taken from the query string and `Last-Event-ID`.
pub(super) struct Wanted {
    pub channels: Vec<ChannelName>,
    pub from: Vec<(ChannelName, Position)>,
    pub rewind: Option<u64>,
}

impl Wanted {
    /// Parse `channel=A&channel=B&from=A=e:5,B=e:7&rewind=N` (and `Last-Event-ID`, which wins over
    /// `from` because the browser sends it on reconnect and it is newer).
    pub(super) fn parse(pairs: &[(String, String)], headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut channels = Vec::new();
        let mut from = None;
        let mut rewind = None;
        for (key, value) in pairs {
            match key.as_str() {
                "channel" => channels.push(publish::channel(value)?),
                "from" | "lastEventId" => from = Some(value.clone()),
                "rewind" => {
                    rewind = Some(value.parse::<u64>().map_err(|_| {
                        ApiError::new(ErrorCode::InvalidRequest, "`rewind` must be a whole number")
                    })?)
                }
                _ => {}
            }
        }
        if let Some(id) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
            if !id.is_empty() {
                from = Some(id.to_owned());
            }
        }
        if channels.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "name at least one channel: ?channel=NAME (repeatable)",
            ));
        }
        let from = match from {
            Some(text) => parse_positions(&text)?,
            None => Vec::new(),
        };
        Ok(Wanted {
            channels,
            from,
            rewind,
        })
    }

    /// Attach every wanted channel, checking capabilities first.
    pub(super) async fn attach(
        &self,
        state: &AppState,
        principal: &Principal,
    ) -> Result<(Subscription, Vec<ServerFrame>), ApiError> {
        let wanted = self;
        for channel in &wanted.channels {
            publish::authorize(principal, Operation::Subscribe, channel)?;
            // Rewind reads history; resuming one's own position does not.
            let resumes = wanted.from.iter().any(|(c, _)| c == channel);
            if wanted.rewind.is_some() && !resumes {
                publish::authorize(principal, Operation::History, channel)?;
            }
        }
        let mut sub = Subscription::new(state.log.clone(), state.hub.clone());
        let mut attached = Vec::new();
        for channel in &wanted.channels {
            let from = wanted
                .from
                .iter()
                .find(|(c, _)| c == channel)
                .map(|(_, p)| p);
            let rewind = if from.is_some() { None } else { wanted.rewind };
            let a = sub.attach(channel, from, rewind).await?;
            attached.push(ServerFrame::Attached {
                channel: channel.to_string(),
                epoch: a.epoch.to_string(),
                serial: a.serial,
                resumed: a.resumed,
                reason: a.reason,
            });
        }
        Ok((sub, attached))
    }
}
