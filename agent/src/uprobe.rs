//! Functions in programs and libraries to probe: `PATH:SYMBOL` specs, the file each names,
//! its ELF symbol tables (`.symtab`, `.dynsym`), globs, and every mistake a user can make
//! (no such file, no such symbol, a stripped binary, a Go program). The one place uprobe
//! targets are found; `capture` attaches what this returns.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    str::FromStr,
};

use agent_common::MAX_FUNCS;
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

/// Where a bare library or program name (`libc.so.6`, `python3`) is looked for.
const LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// One `--func` argument: a file and a symbol name or glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuncSpec {
    pub target: String,
    pub pattern: String,
}

impl FromStr for FuncSpec {
    type Err = UprobeError;

    fn from_str(s: &str) -> Result<FuncSpec, UprobeError> {
        match s.split_once(':') {
            Some((t, p)) if !t.is_empty() && !p.is_empty() => Ok(FuncSpec {
                target: t.to_string(),
                pattern: p.to_string(),
            }),
            _ => Err(UprobeError::Spec(s.to_string())),
        }
    }
}

/// A function to probe, found in its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Func {
    /// Index in the kernel's function histograms (the attach cookie).
    pub id: u32,
    pub path: PathBuf,
    /// The symbol as the file names it (mangled).
    pub symbol: String,
    /// Demangled (C++, Rust), for people.
    pub name: String,
    /// File offset of the first instruction (what the kernel attaches at).
    pub offset: u64,
    /// Other symbols at the same address (probed once, under `symbol`).
    pub aliases: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UprobeError {
    #[error(
        "--func {0:?}: expected FILE:SYMBOL, e.g. /usr/bin/app:compute_hash, \
         libc.so.6:getaddrinfo or libssl.so.3:'SSL_read*'"
    )]
    Spec(String),
    #[error(
        "--func: no file {target:?} (looked in {}{}); give its full path",
        LIB_DIRS.join(", "),
        if *.path_searched { " and $PATH" } else { "" }
    )]
    NoFile { target: String, path_searched: bool },
    #[error("--func: cannot read {path}: {source} (kspan runs as root to read any program)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--func: {path} is not an ELF program or library: {reason}")]
    NotElf { path: PathBuf, reason: String },
    #[error(
        "--func: {path} is a Go program: kspan does not probe Go functions (a uretprobe \
         rewrites the return address on the goroutine's stack, and Go moves goroutine stacks, \
         which crashes the program)"
    )]
    Go { path: PathBuf },
    #[error("--func: no function {pattern:?} in {path}{}{}", stripped_note(*.stripped), near_note(.near))]
    NoSymbol {
        path: PathBuf,
        pattern: String,
        stripped: bool,
        near: Vec<String>,
    },
    #[error(
        "--func: {matched} functions match {pattern:?} in {path}, more than the {left} kspan \
         can still probe (at most {MAX_FUNCS} in all: the kernel takes about 0.2 s to remove \
         each function's probes when kspan exits); narrow the pattern"
    )]
    TooMany {
        path: PathBuf,
        pattern: String,
        matched: usize,
        left: usize,
    },
    #[error("--func: {0}: invalid glob: {1}")]
    Glob(String, String),
}

fn stripped_note(stripped: bool) -> &'static str {
    if stripped {
        " (the file is stripped: it has no .symtab, only its exported .dynsym functions can \
         be probed)"
    } else {
        ""
    }
}

fn near_note(near: &[String]) -> String {
    if near.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", near.join(", "))
    }
}

/// The file `target` names: a path as given, else a library in the usual directories, else
/// a program on `$PATH`.
pub fn resolve(target: &str) -> Result<PathBuf, UprobeError> {
    if target.contains('/') {
        let p = Path::new(target);
        if p.exists() {
            return Ok(p.canonicalize().unwrap_or_else(|_| p.to_path_buf()));
        }
        return Err(UprobeError::NoFile {
            target: target.into(),
            path_searched: false,
        });
    }
    let path_var = std::env::var("PATH").unwrap_or_default();
    let found = LIB_DIRS
        .iter()
        .copied()
        .chain(path_var.split(':'))
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(target))
        .find(|p| p.is_file());
    match found {
        Some(p) => Ok(p.canonicalize().unwrap_or(p)),
        None => Err(UprobeError::NoFile {
            target: target.into(),
            path_searched: true,
        }),
    }
}

/// A function symbol of a file.
#[derive(Clone, Debug)]
struct Sym {
    name: String,
    demangled: String,
    offset: u64,
}

/// The functions a file defines, by its symbol tables.
struct Symbols {
    funcs: Vec<Sym>,
    /// No `.symtab`: only exported functions are known.
    stripped: bool,
}

/// `name` demangled (Rust without the hash, C++), or as it is.
pub fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    if name.starts_with("_Z") {
        if let Ok(s) = cpp_demangle::Symbol::new(name) {
            if let Ok(d) = s.demangle(&cpp_demangle::DemangleOptions::default()) {
                return d;
            }
        }
    }
    name.to_string()
}

fn read_symbols(path: &Path) -> Result<Symbols, UprobeError> {
    let data = std::fs::read(path).map_err(|source| UprobeError::Read {
        path: path.into(),
        source,
    })?;
    let file = object::File::parse(&*data).map_err(|e| UprobeError::NotElf {
        path: path.into(),
        reason: e.to_string(),
    })?;
    if file.format() != object::BinaryFormat::Elf {
        return Err(UprobeError::NotElf {
            path: path.into(),
            reason: format!("{:?} format", file.format()),
        });
    }
    let go = file.section_by_name(".go.buildinfo").is_some()
        || file.section_by_name(".note.go.buildid").is_some();
    if go {
        return Err(UprobeError::Go { path: path.into() });
    }
    let mut funcs = Vec::new();
    for sym in file.symbols().chain(file.dynamic_symbols()) {
        if sym.kind() != SymbolKind::Text || !sym.is_definition() || sym.address() == 0 {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        if name.is_empty() {
            continue;
        }
        let Some(section) = sym
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
        else {
            continue;
        };
        let Some((file_off, _)) = section.file_range() else {
            continue;
        };
        let Some(offset) = (sym.address().checked_sub(section.address()))
            .and_then(|rel| rel.checked_add(file_off))
        else {
            continue;
        };
        funcs.push(Sym {
            name: name.to_string(),
            demangled: demangle(name),
            offset,
        });
    }
    Ok(Symbols {
        funcs,
        stripped: file.symbols().next().is_none(),
    })
}

/// Names close to `pattern` (for "did you mean"), at most three.
fn near_names(syms: &Symbols, pattern: &str) -> Vec<String> {
    let mut scored: Vec<(f64, &str)> = syms
        .funcs
        .iter()
        .map(|s| {
            let score = strsim::jaro_winkler(pattern, &s.demangled)
                .max(strsim::jaro_winkler(pattern, &s.name));
            (score, s.demangled.as_str())
        })
        .filter(|(score, _)| *score >= 0.85)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(3)
        .map(|(_, n)| n.to_string())
        .collect()
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

/// The functions the specs name, one per address, numbered from 0. At most `MAX_FUNCS`.
pub fn find(specs: &[FuncSpec]) -> Result<Vec<Func>, UprobeError> {
    let mut out: Vec<Func> = Vec::new();
    for spec in specs {
        let path = resolve(&spec.target)?;
        let syms = read_symbols(&path)?;
        let matches: Vec<&Sym> = if is_glob(&spec.pattern) {
            let pat = glob::Pattern::new(&spec.pattern)
                .map_err(|e| UprobeError::Glob(spec.pattern.clone(), e.to_string()))?;
            syms.funcs
                .iter()
                .filter(|s| pat.matches(&s.name) || pat.matches(&s.demangled))
                .collect()
        } else {
            syms.funcs
                .iter()
                .filter(|s| s.name == spec.pattern || s.demangled == spec.pattern)
                .collect()
        };
        if matches.is_empty() {
            return Err(UprobeError::NoSymbol {
                near: near_names(&syms, &spec.pattern),
                path,
                pattern: spec.pattern.clone(),
                stripped: syms.stripped,
            });
        }
        // One probe per address: aliases (and a symbol in both tables) share it.
        let mut by_offset: BTreeMap<u64, Vec<&Sym>> = BTreeMap::new();
        for s in matches {
            by_offset.entry(s.offset).or_default().push(s);
        }
        let new: Vec<(u64, Vec<&Sym>)> = by_offset
            .into_iter()
            .filter(|(off, _)| !out.iter().any(|f| f.path == path && f.offset == *off))
            .collect();
        let left = MAX_FUNCS - out.len();
        if new.len() > left {
            return Err(UprobeError::TooMany {
                path,
                pattern: spec.pattern.clone(),
                matched: new.len(),
                left,
            });
        }
        for (offset, mut names) in new {
            // The shortest name first: `SSL_read` before `SSL_read@plt`-like aliases.
            names.sort_by(|a, b| a.name.len().cmp(&b.name.len()).then(a.name.cmp(&b.name)));
            names.dedup_by(|a, b| a.name == b.name);
            let first = names[0];
            out.push(Func {
                id: out.len() as u32,
                path: path.clone(),
                symbol: first.name.clone(),
                name: first.demangled.clone(),
                offset,
                aliases: names[1..].iter().map(|s| s.name.clone()).collect(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_the_form() {
        let s: FuncSpec = "libc.so.6:getaddrinfo".parse().unwrap();
        assert_eq!(s.target, "libc.so.6");
        assert_eq!(s.pattern, "getaddrinfo");
        for bad in ["getaddrinfo", ":x", "libc.so.6:"] {
            let e = bad.parse::<FuncSpec>().unwrap_err().to_string();
            assert!(e.contains("expected FILE:SYMBOL"), "{e}");
        }
    }

    #[test]
    fn libc_functions_are_found_by_name_and_glob_with_near_names_for_typos() {
        let f = find(&["libc.so.6:getaddrinfo".parse().unwrap()]).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].name, "getaddrinfo");
        assert!(f[0].offset > 0);
        assert!(f[0].path.is_absolute());
        let e = find(&["libc.so.6:getaddrinf".parse().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean getaddrinfo"), "{e}");
        // Debian's libc is stripped of .symtab.
        assert!(e.contains("stripped"), "{e}");
        let g = find(&["libc.so.6:getpp*".parse().unwrap()]).unwrap();
        assert!(g.iter().any(|f| f.name == "getppid"), "{g:?}");
        let e = find(&["libc.so.6:*".parse().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("narrow the pattern"), "{e}");
        let e = find(&["no-such-lib.so:f".parse().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("give its full path"), "{e}");
    }

    #[test]
    fn names_are_demangled() {
        assert_eq!(demangle("_ZN3foo3barEv"), "foo::bar()");
        assert_eq!(
            demangle("_ZN4core3ptr13drop_in_place17h0123456789abcdefE"),
            "core::ptr::drop_in_place"
        );
        assert_eq!(demangle("compute_hash"), "compute_hash");
    }
}
