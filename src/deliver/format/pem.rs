//! `format = "pem"`: the private key as PKCS#8 PEM.

use super::{Context, Input, Kind, RenderError};
use crate::config::Section;
use crate::secret::SecretBytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pem;

impl Kind for Pem {
    const NAME: &'static str = "pem";
    const NEEDS_KEY: bool = true;

    fn configure(_: &mut Section<'_, '_>, _: &Context<'_>) -> Option<Self> {
        Some(Pem)
    }

    fn render(&self, input: &Input<'_>) -> Result<SecretBytes, RenderError> {
        Ok(input.private_key(Self::NAME)?.pkcs8_pem())
    }
}
