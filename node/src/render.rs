//! TEMPORARY: the rendering module is being written in parallel; this placeholder only lets the
//! server compile and is replaced before anything lands.
#![allow(missing_docs)]
#[derive(Debug, Clone, Copy)]
pub enum Format {
    Png,
    Jpeg { quality: u8 },
}
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub center: f64,
    pub width: f64,
}
#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub window: Option<Window>,
    pub format: Format,
    pub viewport: Option<(u32, u32)>,
}
#[derive(Debug, Clone)]
pub struct FrameInfo {
    pub frames: u32,
}
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    #[error("no pixel data")]
    NoPixelData,
    #[error("frame {frame} out of range ({frames})")]
    FrameOutOfRange { frame: u32, frames: u32 },
    #[error("unsupported {transfer_syntax}: {reason}")]
    Unsupported {
        transfer_syntax: String,
        reason: String,
    },
    #[error("decode: {0}")]
    Decode(String),
}
pub fn info(_b: &[u8]) -> Result<FrameInfo, RenderError> {
    Err(RenderError::Decode("placeholder".into()))
}
pub fn render(_b: &[u8], _f: u32, _o: &RenderOptions) -> Result<Vec<u8>, RenderError> {
    Err(RenderError::Decode("placeholder".into()))
}
pub fn raw_frame(_b: &[u8], _f: u32) -> Result<Vec<u8>, RenderError> {
    Err(RenderError::Decode("placeholder".into()))
}
