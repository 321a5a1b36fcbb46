//! The project's Markdown files, with no NATS: every relative link points at
//! a file or folder that exists, and every `#anchor` at a heading of the file
//! it names (GitHub's heading ids). External links are not followed. Also
//! keeps the README short, as the docs split by audience wants.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `*.md` under `dir`, skipping build output, dependencies and hidden
/// folders (`.git`, `.tools`).
fn markdown_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "node_modules" {
                markdown_files(&path, found);
            }
        } else if name.ends_with(".md") {
            found.push(path);
        }
    }
}

/// The text outside fenced code blocks (fenced lines blanked, so that line
/// numbers hold), and the headings found there.
fn split_code(text: &str) -> (String, Vec<String>) {
    let mut prose = String::new();
    let mut headings = Vec::new();
    let mut fence: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let marker: String = trimmed
            .chars()
            .take_while(|&c| c == '`' || c == '~')
            .collect();
        let is_fence = marker.len() >= 3
            && (marker.chars().all(|c| c == '`') || marker.chars().all(|c| c == '~'));
        match &fence {
            Some(open) => {
                if is_fence && marker.starts_with(open.as_str()) {
                    fence = None;
                }
                prose.push('\n');
                continue;
            }
            None if is_fence => {
                fence = Some(marker);
                prose.push('\n');
                continue;
            }
            None => {}
        }
        let hashes = trimmed.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            headings.push(
                trimmed[hashes..]
                    .trim()
                    .trim_end_matches('#')
                    .trim()
                    .to_string(),
            );
        }
        prose.push_str(line);
        prose.push('\n');
    }
    (prose, headings)
}

/// Inline code spans replaced by `x`, so that brackets and parentheses in
/// code are never read as links, and a link whose text is code keeps its
/// `[...]`.
fn strip_code_spans(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&c| c == '`').count();
        let mut j = i + run;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let other = chars[j..].iter().take_while(|&&c| c == '`').count();
                if other == run {
                    close = Some(j);
                    break;
                }
                j += other;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                out.push('x');
                // Keep the line count for the messages.
                out.extend(chars[i..j].iter().filter(|&&c| c == '\n'));
                i = j + run;
            }
            None => {
                out.extend(&chars[i..i + run]);
                i += run;
            }
        }
    }
    out
}

/// GitHub's id for a heading: its text as rendered (link targets and
/// punctuation dropped), lower case, spaces as hyphens.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    while let Some(start) = rest.find("](") {
        text.push_str(&rest[..start]);
        rest = &rest[start + 2..];
        rest = &rest[rest.find(')').map_or(rest.len(), |end| end + 1)..];
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter(|&c| c.is_alphanumeric() || c == '-' || c == '_' || c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The ids of a file's headings; a repeated one gets `-1`, `-2`, ... as on
/// GitHub.
fn anchors(headings: &[String]) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    headings
        .iter()
        .map(|heading| {
            let base = slug(heading);
            let count = seen.entry(base.clone()).or_insert(0);
            let id = if *count == 0 {
                base.clone()
            } else {
                format!("{base}-{count}")
            };
            *count += 1;
            id
        })
        .collect()
}

/// Inline links and images, `[text](target)`: line and target.
fn links(prose: &str) -> Vec<(usize, String)> {
    let text = strip_code_spans(prose);
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("](") {
        let start = from + at + 2;
        let target: String = text[start..]
            .chars()
            .take_while(|&c| c != ')' && !c.is_whitespace())
            .collect();
        let line = text[..start].matches('\n').count() + 1;
        found.push((line, target));
        from = start;
    }
    found
}

/// Every broken relative link or anchor in `files`, as `file:line: what`.
fn check(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut cache: HashMap<PathBuf, Option<Vec<String>>> = HashMap::new();
    let mut anchors_of = |path: &Path| -> Option<Vec<String>> {
        let path = path.canonicalize().ok()?;
        cache
            .entry(path.clone())
            .or_insert_with(|| {
                let text = fs::read_to_string(&path).ok()?;
                Some(anchors(&split_code(&text).1))
            })
            .clone()
    };
    let mut problems = Vec::new();
    for file in files {
        let name = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        let text = fs::read_to_string(file).unwrap();
        let (prose, _) = split_code(&text);
        for (line, target) in links(&prose) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            if target.is_empty() || !resolved.exists() {
                problems.push(format!("{name}:{line}: ({target}): no such file"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            let ids = if resolved.extension().is_some_and(|ext| ext == "md") {
                anchors_of(&resolved).unwrap_or_default()
            } else {
                Vec::new()
            };
            if !ids.iter().any(|id| id == anchor) {
                problems.push(format!("{name}:{line}: ({target}): no heading #{anchor}"));
            }
        }
    }
    problems
}

#[test]
fn markdown_links_and_anchors_resolve() {
    let root = root();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    for expected in ["README.md", "RELIABILITY.md", "BENCHMARKS.md", "docs"] {
        assert!(
            files
                .iter()
                .any(|file| file.strip_prefix(&root).unwrap().starts_with(expected)),
            "no Markdown found at {expected}"
        );
    }
    let problems = check(&root, &files);
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_link_check_finds_broken_links_and_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir(root.join("docs")).unwrap();
    fs::write(
        root.join("README.md"),
        "# Title\n\n## How it works: Try-Confirm-Cancel\n\n### Ranked (`top_amount`)\n\n\
         ## Same\n\n## Same\n\n\
         [ok](docs/a.md#bid) [ok](#how-it-works-try-confirm-cancel)\n\
         [ok](#ranked-top_amount) [ok](#same-1) [ok](docs/)\n\
         [multi\nline](docs/a.md) [`code`](docs/a.md) [web](https://example.org/x#y)\n\
         `[not a link](nowhere.md)`\n\n```text\n[not a link](nowhere.md)\n```\n\n\
         [gone](docs/missing.md) [bad anchor](docs/a.md#nope) [bad](#same-2)\n",
    )
    .unwrap();
    fs::write(
        root.join("docs/a.md"),
        "# A\n\n### Bid\n\n[up](../README.md#title)\n",
    )
    .unwrap();
    let mut files = Vec::new();
    markdown_files(root, &mut files);
    let problems = check(root, &files);
    assert_eq!(
        problems,
        [
            "README.md:21: (docs/missing.md): no such file",
            "README.md:21: (docs/a.md#nope): no heading #nope",
            "README.md:21: (#same-2): no heading #same-2",
        ],
        "{problems:#?}"
    );
}

#[test]
fn the_readme_stays_short() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 150,
        "README.md has {lines} lines: the details belong in docs/ (see its map)"
    );
}
