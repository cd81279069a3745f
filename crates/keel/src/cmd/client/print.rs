//! How `keel client` shows what it read: a map as aligned `key = value` lines, values
//! with their control characters escaped, JSON pretty-printed.

use std::collections::BTreeMap;

/// Prints a map as aligned `key = value` lines, sorted by key.
pub(super) fn print_map(entries: &BTreeMap<String, String>) {
    if entries.is_empty() {
        println!("  (no entries)");
        return;
    }
    let width = entries.keys().map(|k| display_width(k)).max().unwrap_or(0);
    for (key, value) in entries {
        println!("  {key:width$} = {}", printable(value));
    }
}

/// A value with control characters escaped, so that one entry stays on one line.
pub(super) fn printable(value: &str) -> String {
    if value.chars().any(char::is_control) {
        value.escape_debug().to_string()
    } else {
        value.to_owned()
    }
}

/// Width for alignment: characters, not bytes, so accented keys line up.
pub(super) fn display_width(s: &str) -> usize {
    s.chars().count()
}

/// The group of monitors as one line: who leads, in which term, how far the answering
/// monitor has applied; or that none leads, and what that means.
pub(super) fn monitors_line(group: &keel_client::wire::GroupView) -> String {
    let members: Vec<String> = group
        .members
        .iter()
        .map(|m| format!("{} {}", m.id, m.url))
        .collect();
    let applied = group
        .last_applied
        .map_or_else(|| "nothing applied".to_owned(), |i| format!("applied {i}"));
    match &group.leader {
        Some(leader) => format!(
            "monitors: {}; leader {leader} (term {}), {applied} on {}",
            members.join(", "),
            group.term,
            group.answered_by
        ),
        None => format!(
            "monitors: {}; no leader (term {}): without a majority of monitors nothing fails over, but the data tier keeps writing while its standbys renew the primary's lease",
            members.join(", "),
            group.term
        ),
    }
}

pub(super) fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_in_values() {
        assert_eq!(printable("a\r\nb"), "a\\r\\nb");
        assert_eq!(printable("plain"), "plain");
    }
}
