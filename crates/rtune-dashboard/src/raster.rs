//! PNG pictures of the server-rendered SVG plots (`rtune report --format png`): resvg draws the
//! same SVG text that `--format svg` writes. The text is set in DejaVu Sans, embedded into the
//! binary (assets/fonts/, with its license), so a picture looks the same on every machine and
//! needs no fonts installed.

use std::sync::Arc;

use resvg::tiny_skia::{Pixmap, Transform};
use resvg::usvg::{self, fontdb};

/// The font every PNG's text is drawn in.
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const FONT_FAMILY: &str = "DejaVu Sans";

/// How many PNG pixels per SVG unit: the plots are 900 x 500 units, so 1800 x 1000 pixels, sharp
/// on high-density screens and in slides.
pub const PNG_SCALE: f32 = 2.0;

#[derive(Debug, thiserror::Error)]
pub enum RasterError {
    #[error("the SVG is not valid: {0}")]
    Parse(#[from] usvg::Error),
    #[error("a {width} x {height} picture is too large to draw")]
    Size { width: f32, height: f32 },
    #[error("cannot encode the PNG: {0}")]
    Encode(String),
}

/// Draws SVG text made by [`crate::svg`] into PNG bytes at [`PNG_SCALE`].
pub struct Rasterizer {
    options: usvg::Options<'static>,
}

impl Default for Rasterizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Rasterizer {
    pub fn new() -> Rasterizer {
        let mut db = fontdb::Database::new();
        db.load_font_data(FONT.to_vec());
        // The SVGs ask for `sans-serif`; it and any other family resolve to the embedded font.
        db.set_sans_serif_family(FONT_FAMILY);
        db.set_serif_family(FONT_FAMILY);
        db.set_monospace_family(FONT_FAMILY);
        let options = usvg::Options {
            font_family: FONT_FAMILY.to_string(),
            fontdb: Arc::new(db),
            ..usvg::Options::default()
        };
        Rasterizer { options }
    }

    pub fn png(&self, svg: &str) -> Result<Vec<u8>, RasterError> {
        let tree = usvg::Tree::from_str(svg, &self.options)?;
        let size = tree.size();
        let (width, height) = (size.width() * PNG_SCALE, size.height() * PNG_SCALE);
        let mut pixmap = Pixmap::new(width.ceil() as u32, height.ceil() as u32)
            .ok_or(RasterError::Size { width, height })?;
        resvg::render(
            &tree,
            Transform::from_scale(PNG_SCALE, PNG_SCALE),
            &mut pixmap.as_mut(),
        );
        pixmap
            .encode_png()
            .map_err(|e| RasterError::Encode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a PNG into (width, height, RGBA pixels).
    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        let pixmap = Pixmap::decode_png(png).expect("a PNG");
        (pixmap.width(), pixmap.height(), pixmap.data().to_vec())
    }

    #[test]
    fn text_is_drawn_with_the_embedded_font() {
        let r = Rasterizer::new();
        let blank = r
            .png(r#"<svg xmlns="http://www.w3.org/2000/svg" width="100" height="40"><rect width="100%" height="100%" fill="white"/></svg>"#)
            .expect("png");
        let text = r
            .png(r#"<svg xmlns="http://www.w3.org/2000/svg" width="100" height="40" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="5" y="25" font-size="16">loss</text></svg>"#)
            .expect("png");
        let (w, h, blank) = decode(&blank);
        assert_eq!((w, h), (200, 80));
        let (_, _, text) = decode(&text);
        let dark = |px: &[u8]| px.chunks(4).filter(|p| p[0] < 128).count();
        assert_eq!(dark(&blank), 0);
        assert!(
            dark(&text) > 100,
            "the text left {} dark pixels",
            dark(&text)
        );
    }

    #[test]
    fn bad_svg_is_an_error_not_a_panic() {
        assert!(matches!(
            Rasterizer::new().png("<svg"),
            Err(RasterError::Parse(_))
        ));
    }
}
