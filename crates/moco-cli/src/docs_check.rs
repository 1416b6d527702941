//! The docs agree with the code: every `moco` command line that README.md and docs/*.md show
//! parses with the real command-line grammar ([`Cli`]), and docs/architecture.md's module map
//! names every module of the source tree and no other.

use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::Parser;

use crate::cli::Cli;

/// A command line found in a document: where, its words after `moco`, and whether it
/// stands alone (a shell block: it must parse whole) or names a command in prose.
struct Found {
    place: String,
    words: Vec<String>,
    whole: bool,
}

fn documents() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is readable")
        .map(|e| e.expect("a docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The shell words of `line`, quotes removed, up to a comment, a pipe, a redirection or a
/// second command.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == c {
                        break;
                    }
                    word.push(q);
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '#' if !in_word => break,
            '|' | ';' | '>' | '<' | '&' => {
                if in_word && !word.chars().all(|d| d.is_ascii_digit()) {
                    words.push(std::mem::take(&mut word));
                }
                return words;
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The words after the `moco` program (a path ending in `moco`, or `cargo run … --`).
fn after_moco(words: &[String]) -> Option<Vec<String>> {
    if let Some(cargo) = words.iter().position(|w| w == "cargo") {
        let runs_moco = words.get(cargo + 1).is_some_and(|w| w == "run")
            && !words
                .iter()
                .any(|w| w == "--example" || w.starts_with("--example="));
        let dashes = words.iter().position(|w| w == "--");
        return match (runs_moco, dashes) {
            (true, Some(d)) => Some(words[d + 1..].to_vec()),
            (true, None) => Some(Vec::new()),
            (false, _) => None,
        };
    }
    // The program: a word `moco` (or a path to it) that is not the value of a flag.
    let i = (0..words.len()).find(|&i| {
        let w = &words[i];
        (w == "moco" || w.ends_with("/moco")) && (i == 0 || !words[i - 1].starts_with('-'))
    })?;
    Some(words[i + 1..].to_vec())
}

fn commands_in(file: &Path) -> Vec<Found> {
    let text = std::fs::read_to_string(file).expect("the document is readable");
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let mut found = Vec::new();
    let mut fence: Option<bool> = None; // Some(shell?) inside a fenced block
    let mut joined = String::new();
    for (n, line) in text.lines().enumerate() {
        let place = format!("{name}:{}", n + 1);
        let trimmed = line.trim_start();
        if let Some(lang) = trimmed.strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(matches!(
                    lang.trim(),
                    "" | "sh" | "bash" | "shell" | "console"
                )),
            };
            continue;
        }
        match fence {
            Some(true) => {
                let line = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
                if let Some(head) = line.strip_suffix('\\') {
                    joined.push_str(head);
                    joined.push(' ');
                    continue;
                }
                joined.push_str(line);
                let words = shell_words(&std::mem::take(&mut joined));
                if let Some(words) = after_moco(&words) {
                    found.push(Found {
                        place,
                        words,
                        whole: true,
                    });
                }
            }
            Some(false) => {}
            None => {
                for span in line.split('`').skip(1).step_by(2) {
                    let words = shell_words(span);
                    let Some(first) = words.first() else { continue };
                    if first == "moco" && words.len() > 1 {
                        let words = words[1..]
                            .iter()
                            .take_while(|w| !matches!(w.as_str(), "…" | "..."))
                            .cloned()
                            .collect();
                        found.push(Found {
                            place: place.clone(),
                            words,
                            whole: false,
                        });
                    }
                }
            }
        }
    }
    found
}

/// Whether a parse error says only that the line is incomplete, which prose may be: a required
/// argument or a subcommand left out, or a flag named without its value.
fn incomplete(e: &clap::Error) -> bool {
    use clap::error::{ContextKind, ContextValue};
    let no_value = matches!(
        e.get(ContextKind::InvalidValue),
        Some(ContextValue::String(v)) if v.is_empty()
    );
    match e.kind() {
        ErrorKind::MissingRequiredArgument
        | ErrorKind::MissingSubcommand
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => true,
        ErrorKind::InvalidValue => no_value,
        _ => false,
    }
}

#[test]
fn every_moco_command_in_the_docs_parses() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in documents() {
        for c in commands_in(&file) {
            checked += 1;
            let argv = std::iter::once("moco".to_string()).chain(c.words.iter().cloned());
            if let Err(e) = Cli::try_parse_from(argv) {
                let kind = e.kind();
                let fine = matches!(kind, ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
                    || (!c.whole && incomplete(&e));
                if !fine {
                    let why = e.to_string();
                    let why = why.lines().next().unwrap_or_default().to_string();
                    failures.push(format!(
                        "{}: moco {}\n    {why}",
                        c.place,
                        c.words.join(" ")
                    ));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} commands found: is the extraction broken?"
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} documented commands do not parse:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn shell_lines_are_cut_where_moco_ends() {
    let words =
        shell_words("XDG_RUNTIME_DIR=/tmp/x moco pretrain --out 'a b' 2>&1 | tee log # run");
    assert_eq!(after_moco(&words).unwrap(), ["pretrain", "--out", "a b"]);
    let words = shell_words("cargo run --release --features wgpu -- knn --checkpoint runs/x");
    assert_eq!(
        after_moco(&words).unwrap(),
        ["knn", "--checkpoint", "runs/x"]
    );
    let words = shell_words("cargo run --release --example pretrain_vit -- --steps 3");
    assert!(after_moco(&words).is_none());
    let words = shell_words("mpirun -n 2 target/release/moco pretrain --mpi && echo done");
    assert_eq!(after_moco(&words).unwrap(), ["pretrain", "--mpi"]);
}

/// The modules of a crate's source tree: `flex/attention.rs` is `flex::attention`,
/// `optim/mod.rs` is `optim`; the crate root and binaries are not modules.
fn modules_in(src: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("the source tree is readable") {
            let path = entry.expect("a source entry").path();
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if path.is_dir() {
                if parts[0] != "bin" {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                match parts.last().map(String::as_str) {
                    Some("lib" | "main") if parts.len() == 1 => {}
                    Some("mod") => found.push(parts[..parts.len() - 1].join("::")),
                    _ => found.push(parts.join("::")),
                }
            }
        }
    }
    found.sort();
    found
}

/// The modules docs/architecture.md names for each crate: the backticked names in the first
/// column of the table under `**crate**` (`a`, `b::{c, d}`).
fn modules_documented(map: &str) -> Vec<(String, Vec<String>)> {
    let mut crates: Vec<(String, Vec<String>)> = Vec::new();
    for line in map.lines() {
        if let Some(name) = line.strip_prefix("**").and_then(|l| l.split("**").next()) {
            crates.push((name.to_string(), Vec::new()));
            continue;
        }
        let Some((_, modules)) = crates.last_mut() else {
            continue;
        };
        let Some(cell) = line.strip_prefix('|').and_then(|l| l.split('|').next()) else {
            continue;
        };
        for name in cell.split('`').skip(1).step_by(2) {
            match name.split_once("::{") {
                Some((parent, rest)) => modules.extend(
                    rest.trim_end_matches('}')
                        .split(',')
                        .map(|child| format!("{parent}::{}", child.trim())),
                ),
                None => modules.push(name.to_string()),
            }
        }
    }
    crates
}

#[test]
fn the_module_map_names_every_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let map = &doc[doc
        .find("## Module map")
        .expect("docs/architecture.md has a module map")..];
    let documented = modules_documented(map);
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let tree = modules_in(&dir.join("src"));
        let listed = documented
            .iter()
            .find(|(c, _)| *c == name)
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        for m in tree.iter().filter(|m| !listed.contains(m)) {
            problems.push(format!("{name}: module `{m}` is missing from the map"));
        }
        for m in listed.iter().filter(|m| !tree.contains(m)) {
            problems.push(format!(
                "{name}: the map names `{m}`, which is not in the tree"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/architecture.md:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_preset_table_lists_every_preset() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let doc = std::fs::read_to_string(root.join("docs/training.md")).unwrap();
    let rows: Vec<&str> = doc.lines().filter(|l| l.starts_with("| `")).collect();
    let missing: Vec<&str> = moco_train::TRAIN_PRESETS
        .iter()
        .copied()
        .filter(|p| !rows.iter().any(|r| r.contains(&format!("`{p}`"))))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/training.md's preset table lacks {missing:?}"
    );
}

/// `line` without its trailing `// comment` and surrounding space.
fn code_of(line: &str) -> &str {
    let code = match line.find(" //") {
        Some(i) => &line[..i],
        None if line.trim_start().starts_with("//") => "",
        None => line,
    };
    code.trim()
}

/// The Rust blocks of a Markdown text whose info string starts with `rust`, with it.
fn rust_blocks(text: &str) -> Vec<(String, Vec<String>)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (fence, current.take()) {
            (Some(_), Some(block)) => blocks.push(block),
            (Some(info), None) if info.starts_with("rust") => {
                current = Some((info.to_string(), Vec::new()))
            }
            (Some(_), None) => {}
            (None, Some(mut block)) => {
                block.1.push(line.to_string());
                current = Some(block);
            }
            (None, None) => {}
        }
    }
    blocks
}

/// Every line of the docs' uncompiled Rust excerpts (`rust,ignore`) is a line of compiled code:
/// a compiled block of the docs (a documentation test) or an example.
#[test]
fn rust_excerpts_are_lines_of_compiled_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut compiled = std::collections::HashSet::new();
    let mut excerpts = Vec::new();
    for file in documents() {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for (info, lines) in rust_blocks(&text) {
            if info.contains("ignore") {
                excerpts.push((name.clone(), lines));
            } else {
                compiled.extend(lines.iter().map(|l| code_of(l).to_string()));
            }
        }
    }
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        compiled.extend(text.lines().map(|l| code_of(l).to_string()));
    }
    let mut strays = Vec::new();
    for (name, lines) in &excerpts {
        for line in lines {
            let code = code_of(line);
            if !code.is_empty() && !compiled.contains(code) {
                strays.push(format!("{name}: {code}"));
            }
        }
    }
    assert!(
        !excerpts.is_empty(),
        "no excerpt found: is the extraction broken?"
    );
    assert!(
        strays.is_empty(),
        "lines of Rust excerpts that no compiled block or example has:\n{}",
        strays.join("\n")
    );
}
