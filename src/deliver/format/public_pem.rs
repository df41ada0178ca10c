//! `format = "public-pem"`: the public key as SPKI PEM.

use super::{Context, Input, Kind, RenderError};
use crate::config::Section;
use crate::secret::SecretBytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicPem;

impl Kind for PublicPem {
    const NAME: &'static str = "public-pem";
    const NEEDS_KEY: bool = true;

    fn configure(_: &mut Section<'_, '_>, _: &Context<'_>) -> Option<Self> {
        Some(PublicPem)
    }

    fn render(&self, input: &Input<'_>) -> Result<SecretBytes, RenderError> {
        Ok(SecretBytes::from(input.private_key(Self::NAME)?.public_key().spki_pem()))
    }
}
