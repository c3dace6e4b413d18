//! The governor's messages: decisions of one tick grouped into one line.

/// Functions named one by one in a message at most; past that, one line
/// names the first of them and counts the rest (the `governor` table has
/// every decision), so one tick that samples 200 functions prints one line.
const NAMED_IN_MESSAGE: usize = 3;

/// `f sampled 1 in 8 (2.1% if ...)`, or `12 functions sampled 1 in 8: f
/// (2.1%), g (1.9%), h (1.2%) and 9 more` for (name, percent) pairs; `None`
/// when there are none.
pub(super) fn grouped_message(
    items: &[(String, f64)],
    what: &str,
    pct_note: &str,
) -> Option<String> {
    match items {
        [] => None,
        [(name, pct)] => Some(format!("{name} {what} ({}{pct_note})", short_pct(*pct))),
        _ => {
            let named: Vec<String> = items
                .iter()
                .take(NAMED_IN_MESSAGE)
                .map(|(name, pct)| format!("{name} ({}%)", short_pct(*pct)))
                .collect();
            let rest = items.len().saturating_sub(NAMED_IN_MESSAGE);
            let more = if rest > 0 {
                format!(" and {rest} more")
            } else {
                String::new()
            };
            Some(format!(
                "{} functions {what}: {}{more}",
                items.len(),
                named.join(", ")
            ))
        }
    }
}

/// A percentage with two decimals below 1 (a cooled function's 0.04%),
/// one above.
fn short_pct(pct: f64) -> String {
    if pct < 1.0 {
        format!("{pct:.2}")
    } else {
        format!("{pct:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_decisions_of_one_tick_make_one_line() {
        let items = |n: usize| -> Vec<(String, f64)> {
            (0..n)
                .map(|i| (format!("f{i}"), 2.0 - i as f64 / 10.0))
                .collect()
        };
        assert_eq!(grouped_message(&[], "sampled 1 in 8", "%"), None);
        assert_eq!(
            grouped_message(&items(1), "sampled 1 in 8", "% if every call were recorded"),
            Some("f0 sampled 1 in 8 (2.0% if every call were recorded)".into())
        );
        assert_eq!(
            grouped_message(&items(2), "recorded in full again", "%"),
            Some("2 functions recorded in full again: f0 (2.0%), f1 (1.9%)".into())
        );
        assert_eq!(
            grouped_message(&[("g".into(), 0.043)], "recorded in full again", "%"),
            Some("g recorded in full again (0.04%)".into())
        );
        assert_eq!(
            grouped_message(&items(219), "sampled 1 in 92", "%"),
            Some(
                "219 functions sampled 1 in 92: f0 (2.0%), f1 (1.9%), f2 (1.8%) and 216 more"
                    .into()
            )
        );
    }
}
