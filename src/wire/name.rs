//! User names: UTF-8, normalised to NFC, 1 to [`MAX_NAME_CHARS`] characters,
//! at most [`MAX_NAME_BYTES`] bytes, no control characters.

use unicode_normalization::UnicodeNormalization;

use crate::limits::{MAX_NAME_BYTES, MAX_NAME_CHARS};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// More than [`MAX_NAME_CHARS`] characters after normalisation.
    #[error("name has {0} characters, at most {MAX_NAME_CHARS} allowed")]
    TooManyChars(usize),
    /// More than [`MAX_NAME_BYTES`] bytes after normalisation.
    #[error("name has {0} bytes, at most {MAX_NAME_BYTES} allowed")]
    TooManyBytes(usize),
    /// The name contains a control character (Unicode category Cc).
    #[error("name contains a control character")]
    ControlChar,
}

/// Normalises a name to NFC and checks it. The relay stores and compares
/// names only in this form, so "é" typed precomposed or decomposed is the
/// same account.
///
/// # Errors
/// [`NameError`] says which rule the name breaks.
pub fn normalize_name(name: &str) -> Result<String, NameError> {
    let nfc: String = name.nfc().collect();
    check_normalized(&nfc)?;
    Ok(nfc)
}

/// Checks a name that should already be NFC: the rules of
/// [`normalize_name`] plus "normalisation does not change it".
///
/// # Errors
/// [`NameError`] as for [`normalize_name`]; a name that is not in NFC is
/// reported by the rule its normal form breaks, or as `Ok(false)`.
pub fn is_normalized_name(name: &str) -> Result<bool, NameError> {
    check_normalized(name)?;
    Ok(unicode_normalization::is_nfc(name))
}

fn check_normalized(nfc: &str) -> Result<(), NameError> {
    if nfc.is_empty() {
        return Err(NameError::Empty);
    }
    if nfc.len() > MAX_NAME_BYTES {
        return Err(NameError::TooManyBytes(nfc.len()));
    }
    let chars = nfc.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(NameError::TooManyChars(chars));
    }
    if nfc.chars().any(char::is_control) {
        return Err(NameError::ControlChar);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfc_makes_decomposed_and_precomposed_equal() {
        let decomposed = "e\u{0301}ve";
        let precomposed = "\u{00e9}ve";
        assert_eq!(
            normalize_name(decomposed).unwrap(),
            normalize_name(precomposed).unwrap()
        );
        assert_eq!(is_normalized_name(decomposed), Ok(false));
        assert_eq!(is_normalized_name(precomposed), Ok(true));
    }

    #[test]
    fn max_name_chars_limit() {
        assert!(normalize_name(&"a".repeat(MAX_NAME_CHARS)).is_ok());
        assert_eq!(
            normalize_name(&"a".repeat(MAX_NAME_CHARS + 1)),
            Err(NameError::TooManyChars(MAX_NAME_CHARS + 1))
        );
    }

    #[test]
    fn max_name_bytes_limit() {
        // 50 four-byte characters: within the character count, 200 bytes.
        let ok = "\u{1F600}".repeat(MAX_NAME_BYTES / 4);
        assert!(normalize_name(&ok).is_ok());
        // 41 five-plus-byte clusters are impossible; use 3-byte chars past 200 bytes.
        let long = "\u{20AC}".repeat(MAX_NAME_CHARS); // 150 bytes, fine
        assert!(normalize_name(&long).is_ok());
        let too_long = format!("{ok}a");
        assert!(matches!(
            normalize_name(&too_long),
            Err(NameError::TooManyBytes(201))
        ));
    }

    #[test]
    fn empty_and_control_refused() {
        assert_eq!(normalize_name(""), Err(NameError::Empty));
        assert_eq!(normalize_name("a\nb"), Err(NameError::ControlChar));
        assert_eq!(normalize_name("a\u{7f}"), Err(NameError::ControlChar));
    }
}
