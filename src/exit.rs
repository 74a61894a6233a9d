//! Exit codes: scripts and service managers can tell failures apart.

use std::process::ExitCode;

use porthole_engine::client::ClientError;

pub const OK: u8 = 0;
pub const ERROR: u8 = 1;
pub const USAGE: u8 = 2;
pub const AUTH_REJECTED: u8 = 3;
pub const SOURCE_REFUSED: u8 = 4;
pub const VERSION_MISMATCH: u8 = 5;
pub const ACCESS_REVOKED: u8 = 6;
pub const PUBLISH_REFUSED: u8 = 7;

/// An error with the exit code it deserves.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Exit {
    pub fn usage(error: anyhow::Error) -> Self {
        Self { code: USAGE, error }
    }
}

impl From<anyhow::Error> for Exit {
    fn from(error: anyhow::Error) -> Self {
        let code = match error.downcast_ref::<ClientError>() {
            Some(ClientError::AuthRejected) => AUTH_REJECTED,
            Some(ClientError::SourceRefused { .. }) => SOURCE_REFUSED,
            Some(ClientError::Version(_)) => VERSION_MISMATCH,
            Some(ClientError::AccessRevoked) => ACCESS_REVOKED,
            Some(ClientError::PublishRefused { .. }) => PUBLISH_REFUSED,
            Some(
                ClientError::Bind { .. } | ClientError::BindProxy { .. } | ClientError::NoForwards,
            ) => USAGE,
            None => ERROR,
        };
        Self { code, error }
    }
}

/// What the user can do about an engine error, in the command line's own terms (the
/// engine does not know the flags).
fn hint(error: &anyhow::Error) -> Option<&'static str> {
    match error.downcast_ref::<ClientError>()? {
        ClientError::AuthRejected => Some(
            "check --auth-token-file / PORTHOLE_AUTH_TOKEN / auth_token_file against the \
             server's --auth-tokens-file / auth_tokens",
        ),
        ClientError::NoForwards => Some("give at least one --source/--listen pair"),
        ClientError::Version(_) => Some("run the same porthole version on both sides"),
        ClientError::PublishRefused { .. } => Some(
            "the server's operator decides where clients may publish (--allowed-bind-tcp, \
             --allowed-bind-udp, --allowed-bind-name); an address another client holds is \
             free again when that client stops",
        ),
        ClientError::AccessRevoked => Some(
            "ask the server's operator: this client was removed from its access file, its \
             token from the tokens file, or its access expired",
        ),
        _ => None,
    }
}

pub fn report(result: Result<(), Exit>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(OK),
        Err(e) => {
            eprintln!("error: {:#}", e.error);
            if let Some(h) = hint(&e.error) {
                eprintln!("hint: {h}");
            }
            ExitCode::from(e.code)
        }
    }
}
