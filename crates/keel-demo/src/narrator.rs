//! The step table as a person reads it: for each step the narration, the command, what
//! to watch, then what keel observed — and a pause for Enter unless `--auto`.

use std::io::{BufRead as _, Write as _};

use crate::{Demo, DemoError};

/// One row of a seed's step table.
pub struct Step<'a> {
    /// A few words: "Kill the primary".
    pub title: &'a str,
    /// What happens and why it matters, in a sentence or two.
    pub say: &'a str,
    /// The commands a person would type for the same effect, one per line.
    pub commands: &'a [String],
    /// What to look at while it runs.
    pub watch: &'a str,
}

/// What a step saw: a sentence, or why the expected behaviour did not show.
pub type Seen = Result<String, String>;

/// Prints the steps of one demo and counts them.
pub struct Narrator {
    demo: Demo,
    auto: bool,
    /// Set once standard input is closed: there is no one to press Enter.
    no_input: bool,
    number: usize,
    total: usize,
}

impl Narrator {
    pub fn new(demo: Demo, auto: bool, total: usize) -> Narrator {
        Narrator {
            demo,
            auto,
            no_input: false,
            number: 0,
            total,
        }
    }

    /// Prints the demo's heading and where its stack runs.
    pub fn open(&self, heading: &str, lines: &[String]) {
        let mut text = format!("\n{heading}\n");
        for line in lines {
            text.push_str(&format!("  {line}\n"));
        }
        print(&text);
    }

    /// Prints `step`, waits for Enter (unless `--auto`), and returns the step's number for
    /// the report of what it saw.
    pub async fn announce(&mut self, step: &Step<'_>) -> usize {
        self.number += 1;
        let mut text = format!(
            "\nStep {}/{}: {}\n  {}\n",
            self.number, self.total, step.title, step.say
        );
        for command in step.commands {
            for line in command.lines() {
                text.push_str(&format!("  $ {line}\n"));
            }
        }
        text.push_str(&format!("  watch: {}\n", step.watch));
        print(&text);
        if !self.auto && !self.no_input {
            print("  [Enter to run this step; Ctrl-C to stop the demo] ");
            // Reading a terminal blocks; that must not stall the runtime's other tasks.
            let line = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line).map(|n| n > 0)
            })
            .await;
            if !matches!(line, Ok(Ok(true))) {
                self.no_input = true;
                print(
                    "\n  (standard input is closed: running the remaining steps without waiting)\n",
                );
            }
        }
        self.number
    }

    /// Prints the output of a command the step ran, indented, at most `MAX_LINES` lines.
    pub fn output(&self, text: &str) {
        const MAX_LINES: usize = 14;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut shown = String::new();
        for line in lines.iter().take(MAX_LINES) {
            shown.push_str(&format!("  │ {line}\n"));
        }
        if lines.len() > MAX_LINES {
            shown.push_str(&format!("  │ … ({} more lines)\n", lines.len() - MAX_LINES));
        }
        print(&shown);
    }

    /// Prints what the step saw: `✓ observed: …`, or `✗ not observed: …`.
    pub fn report(&self, seen: &Seen) {
        match seen {
            Ok(text) => print(&format!("  ✓ observed: {text}\n")),
            Err(text) => print(&format!("  ✗ not observed: {text}\n")),
        }
    }
}

impl Narrator {
    /// Ends step `step`: prints what it saw, and turns a miss into the demo's error.
    pub fn judge(&self, step: usize, title: &str, seen: Seen) -> Result<(), DemoError> {
        self.report(&seen);
        seen.map(|_| ()).map_err(|seen| DemoError::NotObserved {
            demo: self.demo.name(),
            step,
            title: title.to_owned(),
            seen,
        })
    }
}

/// Writes `text` to standard output and flushes it, so that a prompt without a newline
/// shows before the wait.
fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout leaves no one to tell; the demo's exit code still says how it went.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_that_did_not_see_what_it_should_is_the_demos_error() {
        let n = Narrator::new(Demo::Redis, true, 4);
        assert!(
            n.judge(1, "Count visits", Ok("the counter went 1, 2, 3".into()))
                .is_ok()
        );
        let error = n
            .judge(
                2,
                "Pause Redis",
                Err("the first request took 0.01 s".into()),
            )
            .expect_err("a miss is an error");
        assert_eq!(
            error.to_string(),
            "redis, step 2 (Pause Redis): not observed: the first request took 0.01 s"
        );
    }
}
