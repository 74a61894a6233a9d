//! Exit codes: scripts and service managers can tell failures apart.

use std::process::ExitCode;

use porthole_engine::client::ClientError;

pub const OK: u8 = 0;
pub const ERROR: u8 = 1;
pub const USAGE: u8 = 2;
pub const AUTH_REJECTED: u8 = 3;
pub const SOURCE_REFUSED: u8 = 4;
pub const VERSION_MISMATCH: u8 = 5;

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
            Some(ClientError::Bind { .. } | ClientError::NoForwards) => USAGE,
            None => ERROR,
        };
        Self { code, error }
    }
}

pub fn report(result: Result<(), Exit>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(OK),
        Err(e) => {
            eprintln!("error: {:#}", e.error);
            ExitCode::from(e.code)
        }
    }
}
