//! What a pickle may import and call.
//!
//! An allowlist, not a denylist: the names below are what PyTorch, NumPy and joblib checkpoints
//! legitimately use. A call to anything else is dangerous; an import of anything else is
//! suspicious, and dangerous when it names a module or attribute known to reach the system.

/// Extra globals a user allows (`ScanOptions::allow`): `module.Name`, or `module.*` for every
/// name in a module and its submodules.
#[derive(Debug, Clone, Default)]
pub(crate) struct Allow {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl Allow {
    pub(crate) fn new(list: &[String]) -> Self {
        let mut a = Allow::default();
        for e in list {
            match e.strip_suffix(".*") {
                Some(m) => a.prefixes.push(m.to_string()),
                None => a.exact.push(e.clone()),
            }
        }
        a
    }

    pub(crate) fn allows(&self, module: &str, name: &str) -> bool {
        let full = format!("{module}.{name}");
        self.exact.contains(&full)
            || self.prefixes.iter().any(|p| {
                module == p
                    || module
                        .strip_prefix(p.as_str())
                        .is_some_and(|r| r.starts_with('.'))
            })
    }
}

/// What the policy says about one `module.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// Safe to import and to call (constructors and rebuild functions of plain data).
    Call,
    /// Safe to call, but it calls (or instantiates) the arguments at these positions, which must
    /// themselves be allowlisted callables.
    HigherOrder(&'static [usize]),
    /// Safe to import (a dtype, a storage class used as a tag), not to call.
    ImportOnly,
    /// Safe to call if the bytes argument at this position, scanned as a model, is clean.
    Nested(usize),
}

/// Exact `(module, name)` allowlist.
const ALLOW: &[(&str, &str, Rule)] = &[
    // Python data types.
    ("collections", "OrderedDict", Rule::Call),
    ("builtins", "set", Rule::Call),
    ("builtins", "frozenset", Rule::Call),
    ("builtins", "bytearray", Rule::Call),
    ("builtins", "bytes", Rule::Call),
    ("builtins", "complex", Rule::Call),
    ("builtins", "slice", Rule::Call),
    ("builtins", "range", Rule::Call),
    ("builtins", "int", Rule::Call),
    ("builtins", "float", Rule::Call),
    ("builtins", "bool", Rule::Call),
    ("builtins", "str", Rule::Call),
    ("builtins", "tuple", Rule::Call),
    ("builtins", "list", Rule::Call),
    ("builtins", "dict", Rule::Call),
    ("builtins", "object", Rule::ImportOnly),
    ("_codecs", "encode", Rule::Call),
    ("copyreg", "_reconstructor", Rule::HigherOrder(&[0, 1])),
    ("copyreg", "__newobj__", Rule::HigherOrder(&[0])),
    ("datetime", "datetime", Rule::Call),
    ("datetime", "date", Rule::Call),
    ("datetime", "timedelta", Rule::Call),
    ("fractions", "Fraction", Rule::Call),
    ("decimal", "Decimal", Rule::Call),
    // PyTorch tensors, parameters and storages.
    ("torch._utils", "_rebuild_tensor", Rule::Call),
    ("torch._utils", "_rebuild_tensor_v2", Rule::Call),
    ("torch._utils", "_rebuild_tensor_v3", Rule::Call),
    ("torch._utils", "_rebuild_parameter", Rule::Call),
    ("torch._utils", "_rebuild_parameter_with_state", Rule::Call),
    ("torch._utils", "_rebuild_qtensor", Rule::Call),
    ("torch._utils", "_rebuild_sparse_tensor", Rule::Call),
    ("torch._utils", "_rebuild_sparse_csr_tensor", Rule::Call),
    (
        "torch._utils",
        "_rebuild_device_tensor_from_numpy",
        Rule::Call,
    ),
    (
        "torch._utils",
        "_rebuild_meta_tensor_no_storage",
        Rule::Call,
    ),
    ("torch._utils", "_rebuild_nested_tensor", Rule::Call),
    (
        "torch._tensor",
        "_rebuild_from_type_v2",
        Rule::HigherOrder(&[0, 1]),
    ),
    ("torch", "Size", Rule::Call),
    ("torch", "device", Rule::Call),
    ("torch", "Tensor", Rule::ImportOnly),
    ("torch.nn.parameter", "Parameter", Rule::Call),
    ("torch.serialization", "_get_layout", Rule::Call),
    // NumPy arrays.
    (
        "numpy.core.multiarray",
        "_reconstruct",
        Rule::HigherOrder(&[0]),
    ),
    (
        "numpy._core.multiarray",
        "_reconstruct",
        Rule::HigherOrder(&[0]),
    ),
    ("numpy.core.multiarray", "scalar", Rule::Call),
    ("numpy._core.multiarray", "scalar", Rule::Call),
    ("numpy", "ndarray", Rule::Call),
    ("numpy", "dtype", Rule::Call),
    (
        "numpy",
        "core.multiarray._reconstruct",
        Rule::HigherOrder(&[0]),
    ),
    (
        "numpy",
        "_core.multiarray._reconstruct",
        Rule::HigherOrder(&[0]),
    ),
    // TorchScript archives: list builders and type tags of torch.jit's pickler.
    ("torch.jit._pickle", "build_intlist", Rule::Call),
    ("torch.jit._pickle", "build_doublelist", Rule::Call),
    ("torch.jit._pickle", "build_boollist", Rule::Call),
    ("torch.jit._pickle", "build_tensorlist", Rule::Call),
    ("torch.jit._pickle", "build_tensor_from_id", Rule::Call),
    ("torch.jit._pickle", "restore_type_tag", Rule::Call),
    // joblib's array wrapper (the arrays follow the pickle as raw bytes).
    ("joblib.numpy_pickle", "NumpyArrayWrapper", Rule::Call),
    (
        "sklearn.externals.joblib.numpy_pickle",
        "NumpyArrayWrapper",
        Rule::Call,
    ),
    // A Keras model pickled as the bytes of a `.keras` archive: clean if those bytes are.
    (
        "tf_keras.src.saving.pickle_utils",
        "deserialize_model_from_bytecode",
        Rule::Nested(0),
    ),
    (
        "keras.src.saving.pickle_utils",
        "deserialize_model_from_bytecode",
        Rule::Nested(0),
    ),
    (
        "keras.saving.pickle_utils",
        "deserialize_model_from_bytecode",
        Rule::Nested(0),
    ),
];

const TORCH_STORAGES: &[&str] = &[
    "DoubleStorage",
    "FloatStorage",
    "HalfStorage",
    "BFloat16Storage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
    "ComplexDoubleStorage",
    "ComplexFloatStorage",
    "QInt8Storage",
    "QUInt8Storage",
    "QInt32Storage",
    "QUInt4x2Storage",
    "QUInt2x4Storage",
    "UntypedStorage",
];

const TORCH_DTYPES: &[&str] = &[
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e5m2",
    "qint8",
    "quint8",
    "qint32",
    "uint16",
    "uint32",
    "uint64",
    "double",
    "float",
    "half",
    "long",
    "int",
    "short",
    "cfloat",
    "cdouble",
    "per_tensor_affine",
    "per_channel_affine",
    "strided",
    "sparse_coo",
    "sparse_csr",
    "contiguous_format",
    "channels_last",
    "preserve_format",
];

/// Element size in bytes of a legacy torch storage class (`FloatStorage` → 4).
pub(crate) fn torch_storage_element_size(name: &str) -> Option<u64> {
    Some(match name {
        "DoubleStorage" | "LongStorage" | "ComplexFloatStorage" => 8,
        "FloatStorage" | "IntStorage" | "QInt32Storage" => 4,
        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
        "CharStorage" | "ByteStorage" | "BoolStorage" | "QInt8Storage" | "QUInt8Storage"
        | "QUInt4x2Storage" | "QUInt2x4Storage" | "UntypedStorage" => 1,
        "ComplexDoubleStorage" => 16,
        _ => return None,
    })
}

/// Whether `module.name` is a class that torch's `nn` stack instantiates when a whole model
/// (not a state dict) is pickled: instantiation through `__new__` plus a `__dict__` update.
fn torch_nn_class(module: &str, name: &str) -> bool {
    (module.starts_with("torch.nn.modules.") || module == "torch.nn")
        && !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric())
        && name.starts_with(|c: char| c.is_ascii_uppercase())
}

/// The rule for `module.name`, or `None` when it is not allowlisted.
pub(crate) fn rule(module: &str, name: &str) -> Option<Rule> {
    if let Some((_, _, r)) = ALLOW.iter().find(|(m, n, _)| *m == module && *n == name) {
        return Some(*r);
    }
    if module == "torch" && (TORCH_STORAGES.contains(&name) || TORCH_DTYPES.contains(&name)) {
        return Some(Rule::ImportOnly);
    }
    if torch_nn_class(module, name) {
        return Some(Rule::Call);
    }
    // TorchScript classes: `torch.jit.load` resolves `__torch__.*` from the archive's own
    // TorchScript code (compiled, not run as Python); a Python unpickler cannot import them.
    if (module == "__torch__" || module.starts_with("__torch__.")) && !name.contains("__") {
        return Some(Rule::Call);
    }
    None
}

/// Top-level modules whose import alone reaches the system (files, processes, network, code).
const DANGEROUS_MODULES: &[&str] = &[
    "os",
    "posix",
    "nt",
    "posixpath",
    "ntpath",
    "subprocess",
    "sys",
    "socket",
    "shutil",
    "runpy",
    "importlib",
    "pkgutil",
    "pickle",
    "_pickle",
    "pickletools",
    "dill",
    "cloudpickle",
    "marshal",
    "types",
    "ctypes",
    "_ctypes",
    "code",
    "codeop",
    "pty",
    "webbrowser",
    "asyncio",
    "multiprocessing",
    "threading",
    "_thread",
    "signal",
    "platform",
    "tempfile",
    "io",
    "_io",
    "pathlib",
    "glob",
    "urllib",
    "urllib2",
    "http",
    "httplib",
    "ftplib",
    "smtplib",
    "telnetlib",
    "requests",
    "aiohttp",
    "inspect",
    "operator",
    "functools",
    "timeit",
    "pdb",
    "bdb",
    "trace",
    "cProfile",
    "profile",
    "doctest",
    "idlelib",
    "lib2to3",
    "distutils",
    "setuptools",
    "pip",
    "venv",
    "ensurepip",
    "zipimport",
    "imp",
    "logging",
    "shelve",
    "dbm",
    "tarfile",
    "zipfile",
    "uuid",
    "_osx_support",
    "_aix_support",
    "imaplib",
    "poplib",
    "nntplib",
    "_pyrepl",
    "test",
    "pydoc",
    "cgi",
    "site",
    "sysconfig",
    "gc",
    "commands",
    "popen2",
    "__main__",
    "numpy.testing",
    "sqlite3",
    "xmlrpc",
    "socketserver",
    "ssl",
    "select",
    "selectors",
    "mmap",
    "resource",
    "fcntl",
    "termios",
    "pwd",
    "grp",
    "crypt",
    "getpass",
    "antigravity",
    "this",
];

/// Names in `builtins` that execute code or reach objects' internals.
const DANGEROUS_BUILTINS: &[&str] = &[
    "eval",
    "exec",
    "compile",
    "open",
    "getattr",
    "setattr",
    "delattr",
    "__import__",
    "globals",
    "locals",
    "vars",
    "breakpoint",
    "input",
    "help",
    "memoryview",
    "type",
    "super",
    "classmethod",
    "staticmethod",
    "property",
    "print",
    "exit",
    "quit",
    "copyright",
    "credits",
    "license",
    "dir",
    "id",
    "hasattr",
    "map",
    "filter",
    "iter",
    "next",
    "apply",
    "execfile",
    "reload",
    "file",
];

/// Whether importing `module.name` alone is dangerous (the name reaches the system or Python's
/// internals), as opposed to merely outside the allowlist.
pub(crate) fn dangerous_import(module: &str, name: &str) -> bool {
    let top = module.split('.').next().unwrap_or(module);
    if DANGEROUS_MODULES.contains(&top) || DANGEROUS_MODULES.contains(&module) {
        return true;
    }
    if (module == "builtins" || module == "__builtin__")
        && DANGEROUS_BUILTINS.contains(&name.split('.').next().unwrap_or(name))
    {
        return true;
    }
    // Dunder components reach interpreter internals: `__globals__`, `__builtins__`,
    // `__subclasses__`, `__code__`, `__dict__`, `__class__`...
    let dunder = |s: &str| {
        s.split('.').any(|c| {
            c.len() > 4
                && c.starts_with("__")
                && c.ends_with("__")
                && c != "__newobj__"
                && c != "__newobj_ex__"
        })
    };
    if dunder(name) || dunder(module) {
        return true;
    }
    // A dotted name walks attributes (protocol 4 `find_class`): `torch.serialization` +
    // `os.system` reaches `os` through another module.
    name.split('.').any(|c| {
        DANGEROUS_MODULES.contains(&c)
            || c == "system"
            || c == "popen"
            || c == "eval"
            || c == "exec"
    })
}

/// Python 2 names mapped the way `pickle`'s `fix_imports` does for protocols < 3 (the subset
/// that matters for policy: renamed modules that hold dangerous or allowlisted names).
pub(crate) fn fix_import(module: &str, name: &str) -> (String, String) {
    let m = match module {
        "__builtin__" | "exceptions" => "builtins",
        "copy_reg" => "copyreg",
        "cPickle" => "pickle",
        "cStringIO" | "StringIO" => "io",
        "UserDict" | "UserList" | "UserString" => "collections",
        "commands" => "subprocess",
        "urllib2" => "urllib.request",
        "httplib" => "http.client",
        "thread" => "_thread",
        "Queue" => "queue",
        "SocketServer" => "socketserver",
        "ConfigParser" => "configparser",
        "repr" => "reprlib",
        "Tkinter" => "tkinter",
        "multiprocessing.process" => "multiprocessing.process",
        other => other,
    };
    let n = match (m, name) {
        ("builtins", "xrange") => "range",
        ("builtins", "unicode") => "str",
        ("builtins", "long") => "int",
        ("builtins", "basestring") => "str",
        ("builtins", "raw_input") => "input",
        ("builtins", "unichr") => "chr",
        ("builtins", "intern") => "sys.intern",
        (_, n) => n,
    };
    (m.to_string(), n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_and_denylist_do_not_overlap() {
        for (m, n, _) in ALLOW {
            assert!(
                !dangerous_import(m, n),
                "{m}.{n} is both allowed and dangerous"
            );
        }
    }

    #[test]
    fn dotted_walks_are_dangerous() {
        assert!(dangerous_import("torch.serialization", "os.system"));
        assert!(dangerous_import("torch", "_utils.__builtins__"));
        assert!(dangerous_import("builtins", "eval"));
        assert!(!dangerous_import("collections", "OrderedDict"));
        assert_eq!(rule("torch", "FloatStorage"), Some(Rule::ImportOnly));
        assert_eq!(rule("torch.nn.modules.conv", "Conv2d"), Some(Rule::Call));
        assert_eq!(rule("torch.nn.modules.conv", "os"), None);
        assert_eq!(
            fix_import("__builtin__", "eval"),
            ("builtins".to_string(), "eval".to_string())
        );
    }
}
