//! Reference client for Meridian's encrypted profile images. It encrypts an image before
//! upload and decrypts it after download, so the server only ever holds ciphertext.
//!
//! - [`envelope`]: [`seal`](envelope::seal) and [`open`](envelope::open), AES-256-GCM-SIV
//!   bound to the header and the user id.
//! - [`secret`]: a passphrase from the environment or a 32-byte user key file, and `keygen`.
//! - [`media`]: recognizing PNG, JPEG, WebP and GIF by their magic bytes.
//! - [`service`]: uploading to the command service and downloading from the query service.
//! - [`cli`]: the `meridian-image` command line.

pub mod cli;
pub mod envelope;
pub mod media;
pub mod secret;
pub mod service;
