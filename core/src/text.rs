//! Text from outside (agents, annotations anyone with Node patch rights can write) made safe to
//! show: control characters — newlines, escape sequences, NUL — are written out as escapes, so
//! that such text can neither forge a line in a log or a table nor drive a terminal.

/// `text` with every control character escaped (`\n`, `\u{1b}`, ...); everything else as is.
pub fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`printable`], cut to at most `max` bytes on a character boundary (with `…` when cut).
pub fn printable_within(text: &str, max: usize) -> String {
    let text = printable(text);
    if text.len() <= max {
        return text;
    }
    const MORE: &str = "…";
    let mut end = max.saturating_sub(MORE.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_nothing_else() {
        assert_eq!(printable("plain text, ünïcode"), "plain text, ünïcode");
        assert_eq!(
            printable("ok\n[INFO] forged\u{1b}[2J\0"),
            "ok\\n[INFO] forged\\u{1b}[2J\\u{0}"
        );
        assert!(!printable("\t\r\u{7f}\u{9b}").chars().any(char::is_control));
    }

    #[test]
    fn cut_on_a_character_boundary() {
        assert_eq!(printable_within("short", 10), "short");
        let cut = printable_within("ääääää", 8);
        assert!(cut.len() <= 8 && cut.ends_with('…'), "{cut}");
        assert_eq!(printable_within("a\nb", 100), "a\\nb");
    }
}
