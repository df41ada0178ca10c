//! `format = "raw"`, the default: the bytes exactly as stored.

use super::{Context, Input, Kind, RenderError};
use crate::config::Section;
use crate::secret::SecretBytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw;

impl Kind for Raw {
    const NAME: &'static str = "raw";

    fn configure(_: &mut Section<'_, '_>, _: &Context<'_>) -> Option<Self> {
        Some(Raw)
    }

    fn render(&self, input: &Input<'_>) -> Result<SecretBytes, RenderError> {
        Ok(input.value().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::render;
    use super::*;

    #[test]
    fn the_bytes_as_stored_binary_too() {
        assert_eq!(render(&Raw, b"p@ss word\n").unwrap(), b"p@ss word\n");
        assert_eq!(render(&Raw, &[0xff, 0xfe, 0x00]).unwrap(), [0xff, 0xfe, 0x00]);
    }
}
