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
}

impl MessageStatus {
    pub const ALL: [MessageStatus; 10] = [
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
        }
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
        for s in super::MessageStatus::ALL {
            assert_eq!(s.as_str().parse::<super::MessageStatus>().unwrap(), s);
        }
    }
}
