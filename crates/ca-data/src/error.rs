//! Typed errors of `ca-data`: every error names the path it concerns (when there is one) and,
//! where a user can act, says what to do.

use std::path::PathBuf;

/// An error from opening, decoding or batching a dataset.
///
/// Displayed as "`<what>` '`<path>`': `<detail>`", e.g.
/// "cannot read image 'x/target/0007.png': truncated PNG (file is 120 bytes); remove it or set
/// data.skip_bad_images = true".
#[derive(Debug, thiserror::Error)]
#[error("{}", render(.path, .kind))]
pub struct DataError {
    /// The file or folder the error concerns, if any.
    pub path: Option<PathBuf>,
    /// What went wrong.
    pub kind: DataErrorKind,
}

/// What went wrong, without the path.
#[derive(Debug, thiserror::Error)]
pub enum DataErrorKind {
    /// A folder the dataset needs does not exist.
    #[error("folder not found; {hint}")]
    MissingFolder {
        /// What to do about it.
        hint: String,
    },
    /// A split folder holds no usable image.
    #[error("no {what} found; {hint}")]
    EmptySet {
        /// What was looked for (e.g. "images (png/jpg/jpeg/bmp/webp)").
        what: String,
        /// What to do about it.
        hint: String,
    },
    /// An image file could not be decoded (corrupt, truncated, zero bytes, unsupported).
    #[error("{detail}; remove it or set data.skip_bad_images = true")]
    BadImage {
        /// The decoder's complaint, with the file size.
        detail: String,
    },
    /// An image whose header declares dimensions beyond what we accept.
    #[error(
        "image is {width}x{height} px (read from its header, not decoded); this loader accepts at most {max} px a side and {max_mpx} megapixels: resize it first or remove it"
    )]
    TooLarge {
        /// Declared width in pixels.
        width: u32,
        /// Declared height in pixels.
        height: u32,
        /// The limit per side in pixels.
        max: u32,
        /// The limit on the pixel count, in megapixels (2^20 px).
        max_mpx: u64,
    },
    /// A `.npy` file is malformed or of an unsupported shape or dtype.
    #[error("{0}")]
    Npy(String),
    /// `labels.csv` is malformed or names a file that does not exist.
    #[error("{0}")]
    Labels(String),
    /// A configuration value is out of range.
    #[error("invalid data config: {0}")]
    Config(String),
    /// Refusing to write into an existing, non-empty folder.
    #[error(
        "output folder exists and is not empty; choose a new folder (existing data is never overwritten)"
    )]
    OutputNotEmpty,
    /// An operating-system I/O error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// An image could not be encoded or written.
    #[error("cannot write image: {0}")]
    Encode(String),
    /// A loader worker thread stopped unexpectedly.
    #[error("data loader worker stopped: {0}")]
    Worker(String),
}

fn render(path: &Option<PathBuf>, kind: &DataErrorKind) -> String {
    let what = match kind {
        DataErrorKind::MissingFolder { .. } => "missing folder",
        DataErrorKind::EmptySet { .. } => "empty image set",
        DataErrorKind::BadImage { .. } | DataErrorKind::TooLarge { .. } => "cannot read image",
        DataErrorKind::Npy(_) => "cannot read .npy file",
        DataErrorKind::Labels(_) => "bad labels file",
        DataErrorKind::Config(_) => return kind.to_string(),
        DataErrorKind::OutputNotEmpty => "cannot export",
        DataErrorKind::Io(_) => "I/O error on",
        DataErrorKind::Encode(_) => "cannot export",
        DataErrorKind::Worker(_) => return kind.to_string(),
    };
    match path {
        Some(p) => format!("{what} '{}': {kind}", p.display()),
        None => format!("{what}: {kind}"),
    }
}

impl DataError {
    /// An error about `path`.
    pub fn at(path: impl Into<PathBuf>, kind: DataErrorKind) -> Self {
        Self {
            path: Some(path.into()),
            kind,
        }
    }

    /// An error with no path.
    pub fn new(kind: DataErrorKind) -> Self {
        Self { path: None, kind }
    }

    /// A configuration error.
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(DataErrorKind::Config(msg.into()))
    }

    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>, e: std::io::Error) -> Self {
        Self::at(path, DataErrorKind::Io(e))
    }
}

/// Result alias of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
