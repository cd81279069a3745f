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
