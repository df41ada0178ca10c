//! `format = "base64"`: standard base64 of the value, no trailing newline.

use ::base64::Engine as _;

use super::{Context, Input, Kind, RenderError};
use crate::config::Section;
use crate::secret::SecretBytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base64;

impl Kind for Base64 {
    const NAME: &'static str = "base64";

    fn configure(_: &mut Section<'_, '_>, _: &Context<'_>) -> Option<Self> {
        Some(Base64)
    }

    fn render(&self, input: &Input<'_>) -> Result<SecretBytes, RenderError> {
        Ok(SecretBytes::from(::base64::engine::general_purpose::STANDARD.encode(input.value().expose())))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::render;
    use super::*;

    #[test]
    fn encodes() {
        assert_eq!(render(&Base64, b"hello").unwrap(), b"aGVsbG8=");
        assert_eq!(render(&Base64, &[0xff, 0x00]).unwrap(), b"/wA=");
    }
}
