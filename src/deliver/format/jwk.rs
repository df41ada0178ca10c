//! `format = "jwk"`: the public key as one JSON Web Key (RFC 7517), its `kid` the RFC 7638
//! thumbprint.

use super::{Context, Input, Kind, RenderError};
use crate::config::Section;
use crate::secret::SecretBytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jwk;

impl Kind for Jwk {
    const NAME: &'static str = "jwk";
    const NEEDS_KEY: bool = true;

    fn configure(_: &mut Section<'_, '_>, _: &Context<'_>) -> Option<Self> {
        Some(Jwk)
    }

    fn render(&self, input: &Input<'_>) -> Result<SecretBytes, RenderError> {
        let mut text = input.private_key(Self::NAME)?.public_key().jwk().to_string();
        text.push('\n');
        Ok(SecretBytes::from(text))
    }
}
