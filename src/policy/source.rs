//! Reads policy files from disk and fingerprints their contents.

use std::fs;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::PolicyError;

/// The raw bytes of one policy file, read once so that hashing and parsing see the same contents.
#[derive(Debug, Clone)]
pub(super) struct SourceFile {
    /// How the file is named in error messages (the path as the operator gave it).
    pub display: String,
    /// How the file is named in the fingerprint: the bare file name, so that mounting the same
    /// ConfigMap at another path does not change the fingerprint.
    pub key: String,
    pub bytes: Vec<u8>,
}

/// Reads a single file, or every `.yaml`/`.yml` file directly inside a directory in name order.
///
/// Names starting with '.' are skipped: in a mounted ConfigMap those are the `..data` link and the
/// timestamped directories behind it, while the visible `*.yaml` entries are symlinks into them,
/// which are followed.
pub(super) fn read_sources(path: &Path) -> Result<Vec<SourceFile>, PolicyError> {
    let io_error = |path: &Path, source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let metadata = fs::metadata(path).map_err(|source| io_error(path, source))?;
    if !metadata.is_dir() {
        let bytes = fs::read(path).map_err(|source| io_error(path, source))?;
        let key = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        return Ok(vec![SourceFile {
            display: path.display().to_string(),
            key,
            bytes,
        }]);
    }

    let mut names = Vec::new();
    for entry in fs::read_dir(path).map_err(|source| io_error(path, source))? {
        let entry = entry.map_err(|source| io_error(path, source))?;
        let Ok(name) = entry.file_name().into_string() else {
            tracing::warn!(directory = %path.display(), "skipping a policy file whose name is not UTF-8");
            continue;
        };
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let entry_path = entry.path();
        // fs::metadata follows symlinks, which is what makes ConfigMap mounts readable.
        let entry_metadata =
            fs::metadata(&entry_path).map_err(|source| io_error(&entry_path, source))?;
        if entry_metadata.is_file() {
            names.push(name);
        }
    }
    names.sort();

    names
        .into_iter()
        .map(|name| {
            let file_path = path.join(&name);
            let bytes = fs::read(&file_path).map_err(|source| io_error(&file_path, source))?;
            Ok(SourceFile {
                display: file_path.display().to_string(),
                key: name,
                bytes,
            })
        })
        .collect()
}

/// SHA-256 over every file's name and bytes, hex encoded.
///
/// Names and lengths are framed so that moving text from the end of one file to the start of the
/// next still changes the digest.
pub(super) fn fingerprint(sources: &[SourceFile]) -> String {
    let mut hasher = Sha256::new();
    for source in sources {
        hasher.update((source.key.len() as u64).to_le_bytes());
        hasher.update(source.key.as_bytes());
        hasher.update((source.bytes.len() as u64).to_le_bytes());
        hasher.update(&source.bytes);
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn a_directory_is_read_in_name_order_skipping_hidden_and_non_yaml_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.yml", "b");
        write(dir.path(), "a.yaml", "a");
        write(dir.path(), ".hidden.yaml", "hidden");
        write(dir.path(), "notes.txt", "notes");
        fs::create_dir(dir.path().join("nested.yaml")).unwrap();

        let sources = read_sources(dir.path()).unwrap();

        let keys: Vec<&str> = sources.iter().map(|source| source.key.as_str()).collect();
        assert_eq!(keys, ["a.yaml", "b.yml"]);
        assert_eq!(
            sources[0].display,
            dir.path().join("a.yaml").display().to_string()
        );
    }

    #[cfg(unix)]
    #[test]
    fn configmap_style_symlinks_are_followed_and_the_data_links_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let versioned = dir.path().join("..2026_01_01_00_00_00.000000001");
        fs::create_dir(&versioned).unwrap();
        write(&versioned, "models.yaml", "models");
        std::os::unix::fs::symlink(&versioned, dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/models.yaml", dir.path().join("models.yaml")).unwrap();

        let sources = read_sources(dir.path()).unwrap();

        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].key, "models.yaml");
        assert_eq!(sources[0].bytes, b"models");
    }

    #[test]
    fn the_fingerprint_changes_when_text_moves_between_files() {
        let source = |key: &str, text: &str| SourceFile {
            display: key.to_owned(),
            key: key.to_owned(),
            bytes: text.as_bytes().to_vec(),
        };

        let before = fingerprint(&[source("a.yaml", "ab"), source("b.yaml", "c")]);
        let after = fingerprint(&[source("a.yaml", "a"), source("b.yaml", "bc")]);

        assert_ne!(before, after);
    }
}
