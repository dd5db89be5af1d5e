//! Engine errors, each knowing the HTTP status the API answers with.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    /// The container could not start; `code` is the exit code Docker gives
    /// (127 command not found, 126 not executable, 125 other).
    #[error("{message}")]
    StartFailed { message: String, code: i32 },
    #[error(transparent)]
    Image(#[from] berth_image::ImageError),
    #[error("{0}")]
    Internal(String),
}

impl EngineError {
    pub fn status(&self) -> u16 {
        match self {
            EngineError::NotFound(_) => 404,
            EngineError::Conflict(_) => 409,
            EngineError::BadRequest(_) | EngineError::StartFailed { .. } => 400,
            EngineError::Image(e) => image_status(e),
            EngineError::Internal(_) => 500,
        }
    }

    pub fn exit_code(&self) -> Option<i32> {
        match self {
            EngineError::StartFailed { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn internal(context: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        EngineError::Internal(format!("{context}: {e}"))
    }
}

fn image_status(e: &berth_image::ImageError) -> u16 {
    let text = e.to_string();
    if text.starts_with("no such image") {
        404
    } else if text.contains("in use") || text.contains("conflict") {
        409
    } else {
        400
    }
}
