//! The message state machine. Statuses only move forward; every transition is recorded as an event.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Scheduled,
    Queued,
    Sending,
    Sent,
    Delivered,
    Bounced,
    Complained,
    Failed,
    Cancelled,
    Suppressed,
    /// Not sent before its `expires_at`: no provider was called.
    Expired,
}

impl MessageStatus {
    pub const ALL: [MessageStatus; 11] = [
        Self::Scheduled,
        Self::Queued,
        Self::Sending,
        Self::Sent,
        Self::Delivered,
        Self::Bounced,
        Self::Complained,
        Self::Failed,
        Self::Cancelled,
        Self::Suppressed,
        Self::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Bounced => "bounced",
            Self::Complained => "complained",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Suppressed => "suppressed",
            Self::Expired => "expired",
        }
    }

    /// Whether `self -> to` is a legal move. Late provider events may move `sent`/`delivered`
    /// further, never back.
    pub fn can_transition(self, to: MessageStatus) -> bool {
        use MessageStatus::*;
        matches!(
            (self, to),
            (Scheduled, Queued)
                | (Scheduled | Queued, Cancelled | Suppressed)
                | (Queued, Sending)
                | (Scheduled | Queued | Sending, Expired)
                | (Sending, Queued | Sent | Failed | Suppressed)
                | (Sent, Delivered | Bounced | Complained)
                | (Delivered, Bounced | Complained)
        )
    }

    /// No delivery work remains for a message in this status.
    pub fn is_final_for_delivery(self) -> bool {
        !matches!(self, Self::Scheduled | Self::Queued | Self::Sending)
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown status `{0}`")]
pub struct UnknownStatus(pub String);

impl FromStr for MessageStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// What happened to a message, in its timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Queued,
    /// A provider tried within an attempt that failed over to the next one.
    ProviderTry,
    AttemptFailed,
    Sent,
    Failed,
    Released,
    Cancelled,
    /// A recipient was dropped before sending because it is on the suppression list (or, with
    /// no recipient left, the whole message).
    Suppressed,
    Delivered,
    Bounced,
    Complained,
    Opened,
    Clicked,
    Deferred,
    Unsubscribed,
    /// The message reached its `expires_at` before it could be sent.
    Expired,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::ProviderTry => "provider_try",
            Self::AttemptFailed => "attempt_failed",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Released => "released",
            Self::Cancelled => "cancelled",
            Self::Suppressed => "suppressed",
            Self::Delivered => "delivered",
            Self::Bounced => "bounced",
            Self::Complained => "complained",
            Self::Opened => "opened",
            Self::Clicked => "clicked",
            Self::Deferred => "deferred",
            Self::Unsubscribed => "unsubscribed",
            Self::Expired => "expired",
        }
    }
}

/// How urgently a message is claimed within its project: `high` before `normal` before `low`.
/// Across tenants and projects claims stay round-robin, so a priority never lets one project
/// take another's turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "high" => Ok(Self::High),
            "normal" => Ok(Self::Normal),
            "low" => Ok(Self::Low),
            _ => Err("must be one of high, normal, low".into()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }

    /// The queue's sort key: lower is claimed first.
    pub fn rank(self) -> i64 {
        match self {
            Self::High => 0,
            Self::Normal => 1,
            Self::Low => 2,
        }
    }
}

/// A message's sending category (`marketing`, `product-updates`…): what recipients unsubscribe
/// from. Lowercase letters, digits, `-` and `_`, 1 to 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Category(String);

impl Category {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err("must be 1 to 64 characters of a-z, 0-9, '-' and '_'".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::MessageStatus::*;

    #[test]
    fn transitions_only_move_forward() {
        assert!(Queued.can_transition(Sending));
        assert!(Sending.can_transition(Queued));
        assert!(Sending.can_transition(Sent));
        assert!(Sent.can_transition(Delivered));
        assert!(Delivered.can_transition(Bounced));
        assert!(!Bounced.can_transition(Delivered));
        assert!(!Sent.can_transition(Queued));
        assert!(!Failed.can_transition(Sent));
        assert!(!Sending.can_transition(Cancelled));
        assert!(Queued.can_transition(Expired));
        assert!(!Sent.can_transition(Expired));
        for p in [
            super::Priority::High,
            super::Priority::Normal,
            super::Priority::Low,
        ] {
            assert_eq!(super::Priority::parse(p.as_str()), Ok(p));
        }
        assert!(super::Priority::parse("urgent").is_err());
        for s in super::MessageStatus::ALL {
            assert_eq!(s.as_str().parse::<super::MessageStatus>().unwrap(), s);
        }
    }
}
