//! How long a test waits for what it expects, and polling until it holds.

use std::time::Duration;

/// How long any single expectation may wait before the test fails. A suite that needs longer
/// (a Postgres stream catching up after a crash) says why where it waits.
pub const WAIT: Duration = Duration::from_secs(15);

/// Poll `f` every 50 ms until it returns `Some` or `limit` passes: for conditions nothing
/// notifies about (a file, a log line, another process's state).
pub async fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_for_answers_the_first_value_or_none_after_the_limit() {
        let mut calls = 0;
        let got = wait_for(Duration::from_secs(1), || {
            calls += 1;
            (calls == 3).then_some(calls)
        })
        .await;
        assert_eq!(got, Some(3));
        let never: Option<()> = wait_for(Duration::from_millis(200), || None).await;
        assert_eq!(never, None);
    }
}
