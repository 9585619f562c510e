//! Model enumeration: the regular files of a model (a directory tree or one file), named by
//! canonical `/`-separated relative paths, with the OMS ignore rules and symlink policy.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Paths excluded by default (OMS §6.2), matched at the model root.
pub const DEFAULT_IGNORES: [&str; 4] = [".git", ".gitattributes", ".github", ".gitignore"];

/// How to enumerate a model.
#[derive(Debug, Clone, Default)]
pub struct WalkPolicy {
    /// Relative paths (files or directories) to leave out, matched exactly from the model root.
    pub ignore_paths: Vec<String>,
    /// Follow symbolic links (hashing their targets) instead of rejecting them.
    pub allow_symlinks: bool,
}

/// One regular file of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFile {
    /// Canonical relative name (`/`-separated; the basename for a single-file model).
    pub name: String,
    /// Where to read it.
    pub path: PathBuf,
    /// Size in bytes when enumerated.
    pub len: u64,
}

/// Checks and normalises a user-supplied ignore path: relative, `/`-separated, no `..`, no glob.
pub fn canonical_ignore_path(p: &str) -> Result<String> {
    let bad = |why: &str| Error::InvalidArgument(format!("ignore path {p:?}: {why}"));
    if p.starts_with('/') {
        return Err(bad("must be relative to the model root"));
    }
    if p.contains(['*', '?', '[']) {
        return Err(bad("glob characters are not allowed"));
    }
    let parts: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(bad("must not contain `..`"));
    }
    if parts.is_empty() {
        return Err(bad("is empty"));
    }
    Ok(parts.join("/"))
}

/// The relative name of `path` under `root`, if it lies inside it (used to exclude a signature
/// file written into the model directory).
pub fn relative_name(root: &Path, path: &Path) -> Option<String> {
    let root = std::fs::canonicalize(root).ok()?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let parent = std::fs::canonicalize(parent).ok()?;
    let full = parent.join(path.file_name()?);
    let rel = full.strip_prefix(&root).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    let parts = parts?;
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The signature file's relative name as a one-element ignore list, if it lies inside the model.
pub fn signature_exclusion(model: &Path, signature: Option<&Path>) -> Vec<String> {
    signature
        .and_then(|s| relative_name(model, s))
        .into_iter()
        .collect()
}

fn is_ignored(name: &str, ignores: &[String]) -> bool {
    ignores.iter().any(|i| {
        name == i
            || (name.len() > i.len()
                && name.starts_with(i.as_str())
                && name.as_bytes()[i.len()] == b'/')
    })
}

/// Enumerates the regular files of `root` in code-point order of their names.
///
/// Errors: a symlink when symlinks are not allowed, a symlink cycle, a name that is not UTF-8, a
/// special file (socket, device), or no file at all.
pub fn enumerate(root: &Path, policy: &WalkPolicy) -> Result<Vec<ModelFile>> {
    let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
    if meta.is_file() {
        let name = root
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::model(root, "file name is not valid UTF-8"))?;
        return Ok(vec![ModelFile {
            name: name.to_string(),
            path: root.to_path_buf(),
            len: meta.len(),
        }]);
    }
    if !meta.is_dir() {
        return Err(Error::model(root, "neither a regular file nor a directory"));
    }
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(policy.allow_symlinks)
        .into_iter();
    let mut it = walker;
    while let Some(entry) = it.next() {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            if e.loop_ancestor().is_some() {
                Error::model(path, "symbolic link cycle")
            } else {
                match e.into_io_error() {
                    Some(io) => Error::io(path, io),
                    None => Error::model(path, "cannot be read"),
                }
            }
        })?;
        let rel = entry
            .path()
            .strip_prefix(root)
            .map_err(|_| Error::model(entry.path(), "outside the model root"))?;
        let mut parts = Vec::new();
        for c in rel.components() {
            parts.push(
                c.as_os_str()
                    .to_str()
                    .ok_or_else(|| Error::model(entry.path(), "path is not valid UTF-8"))?,
            );
        }
        let name = parts.join("/");
        if is_ignored(&name, &policy.ignore_paths) {
            if entry.file_type().is_dir() {
                it.skip_current_dir();
            }
            continue;
        }
        let ft = entry.file_type();
        if ft.is_symlink() {
            // Only reached when links are not followed (or for a dangling link).
            return Err(Error::model(
                entry.path(),
                if policy.allow_symlinks {
                    "dangling symbolic link"
                } else {
                    "symbolic link (use --allow-symlinks to follow links)"
                },
            ));
        }
        if ft.is_dir() {
            continue;
        }
        if !ft.is_file() {
            return Err(Error::model(entry.path(), "not a regular file"));
        }
        let len = entry
            .metadata()
            .map_err(|e| Error::model(entry.path(), e.to_string()))?
            .len();
        files.push(ModelFile {
            name,
            path: entry.path().to_path_buf(),
            len,
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// The effective ignore list: defaults (unless disabled), user paths, and extra paths, deduplicated
/// and sorted.
pub fn ignore_list(defaults: bool, user: &[String], extra: &[String]) -> Result<Vec<String>> {
    let mut v: Vec<String> = Vec::new();
    if defaults {
        v.extend(DEFAULT_IGNORES.iter().map(|s| s.to_string()));
    }
    for p in user.iter().chain(extra) {
        v.push(canonical_ignore_path(p)?);
    }
    v.sort();
    v.dedup();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_match_exact_paths_and_subtrees_only() {
        let ig = vec![".git".to_string(), "cache".to_string()];
        assert!(is_ignored(".git", &ig));
        assert!(is_ignored(".git/config", &ig));
        assert!(is_ignored("cache/x", &ig));
        assert!(!is_ignored("sub/.git", &ig));
        assert!(!is_ignored(".gitx", &ig));
        assert!(!is_ignored("cachex", &ig));
    }

    #[test]
    fn canonical_ignore_paths() {
        assert_eq!(canonical_ignore_path("./a//b/").unwrap(), "a/b");
        assert!(canonical_ignore_path("/abs").is_err());
        assert!(canonical_ignore_path("a/../b").is_err());
        assert!(canonical_ignore_path("*.bin").is_err());
        assert!(canonical_ignore_path("").is_err());
    }

    #[test]
    fn enumerate_sorts_by_code_point_and_applies_policy() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a")).unwrap();
        std::fs::create_dir_all(r.join(".git")).unwrap();
        std::fs::write(r.join("a/b"), b"1").unwrap();
        std::fs::write(r.join("a.b"), b"2").unwrap();
        std::fs::write(r.join(".git/HEAD"), b"x").unwrap();
        std::fs::write(r.join("skip"), b"x").unwrap();
        let pol = WalkPolicy {
            ignore_paths: ignore_list(true, &["skip".into()], &[]).unwrap(),
            allow_symlinks: false,
        };
        let names: Vec<String> = enumerate(r, &pol)
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, vec!["a.b", "a/b"]);
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(r.join("a.b"), r.join("link")).unwrap();
            let e = enumerate(r, &pol).unwrap_err().to_string();
            assert!(e.contains("symbolic link"), "{e}");
            let pol2 = WalkPolicy {
                allow_symlinks: true,
                ..pol
            };
            let names: Vec<String> = enumerate(r, &pol2)
                .unwrap()
                .into_iter()
                .map(|f| f.name)
                .collect();
            assert_eq!(names, vec!["a.b", "a/b", "link"]);
        }
    }
}
