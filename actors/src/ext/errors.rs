//! Storage errors as stanza errors: the one place where a failed repository
//! or account call becomes what the requester sees (as MongooseIM's
//! `mongoose_xmpp_errors`).

use meerkat_storage::StorageError;

use crate::auth::AccountError;
use meerkat_xmpp::error::StanzaErrorCondition;

/// The stanza error for a failed repository call, logged with `what` failed.
///
/// A duplicate key is the requester's `conflict`; everything else, transient
/// or not, is the server's fault: `internal-server-error` (RFC 6120 §8.3.3.6),
/// with the cause in the log rather than on the wire.
pub fn storage_error(what: &'static str) -> impl FnOnce(StorageError) -> StanzaErrorCondition {
    move |e| {
        tracing::error!(error = %e, retryable = e.is_retryable(), "{what} failed");
        match e {
            StorageError::Conflict(_) => StanzaErrorCondition::Conflict,
            _ => StanzaErrorCondition::InternalServerError,
        }
    }
}

/// The stanza error for a failed account operation, logged with `what` failed
/// when it is the server's fault.
pub fn account_error(what: &'static str) -> impl FnOnce(AccountError) -> StanzaErrorCondition {
    move |e| match e {
        AccountError::Exists => StanzaErrorCondition::Conflict,
        AccountError::InvalidUsername(_) | AccountError::EmptyPassword | AccountError::InvalidPassword => {
            StanzaErrorCondition::NotAcceptable
        }
        AccountError::NotFound | AccountError::UnknownHost(_) => StanzaErrorCondition::ItemNotFound,
        AccountError::Storage(e) => storage_error(what)(e),
        AccountError::Hashing(_) => {
            tracing::error!(error = %e, "{what} failed");
            StanzaErrorCondition::InternalServerError
        }
    }
}
