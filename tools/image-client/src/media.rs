//! Recognizing an image format by the magic bytes at the start of the file.

use meridian_domain::profile::envelope::MediaType;

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG_SIGNATURE: &[u8] = b"\xff\xd8\xff";
const GIF_SIGNATURES: [&[u8]; 2] = [b"GIF87a", b"GIF89a"];

/// Returns the format whose magic bytes `bytes` starts with, or `None` when it is none of
/// PNG, JPEG, WebP and GIF. Only the signature is checked, not the rest of the file.
pub fn sniff(bytes: &[u8]) -> Option<MediaType> {
    if bytes.starts_with(PNG_SIGNATURE) {
        return Some(MediaType::Png);
    }
    if bytes.starts_with(JPEG_SIGNATURE) {
        return Some(MediaType::Jpeg);
    }
    // A WebP file is a RIFF container: "RIFF", a 4-byte size, then "WEBP".
    if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        return Some(MediaType::Webp);
    }
    if GIF_SIGNATURES
        .iter()
        .any(|signature| bytes.starts_with(signature))
    {
        return Some(MediaType::Gif);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_signature_is_png() {
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            Some(MediaType::Png)
        );
    }

    #[test]
    fn jpeg_signature_is_jpeg() {
        assert_eq!(sniff(b"\xff\xd8\xff\xe0\0\x10JFIF"), Some(MediaType::Jpeg));
    }

    #[test]
    fn riff_webp_is_webp() {
        assert_eq!(sniff(b"RIFF\x24\0\0\0WEBPVP8 "), Some(MediaType::Webp));
    }

    #[test]
    fn riff_wave_is_not_an_image() {
        assert_eq!(sniff(b"RIFF\x24\0\0\0WAVEfmt "), None);
    }

    #[test]
    fn both_gif_versions_are_gif() {
        assert_eq!(sniff(b"GIF87a\x01\0\x01\0"), Some(MediaType::Gif));
        assert_eq!(sniff(b"GIF89a\x01\0\x01\0"), Some(MediaType::Gif));
    }

    #[test]
    fn text_is_not_an_image() {
        assert_eq!(sniff(b"hello, world"), None);
    }

    #[test]
    fn truncated_png_signature_is_not_an_image() {
        assert_eq!(sniff(b"\x89PNG"), None);
    }
}
