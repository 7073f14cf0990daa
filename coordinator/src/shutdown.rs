//! Graceful shutdown: the first SIGTERM or SIGINT asks the work to stop (a
//! [`CancellationToken`]) and waits for it, at most a grace period; a second signal aborts.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// A signal that ends the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM (what the kubelet sends).
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

/// Why the work did not finish on its own.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A second signal arrived during the graceful shutdown.
    #[error("aborted by a second {0:?} signal")]
    Aborted(Signal),
    /// The work did not finish within the grace period.
    #[error("shutdown did not finish within {0:?}")]
    GraceExpired(Duration),
    /// The signal handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(#[from] std::io::Error),
}

/// SIGTERM and SIGINT as a stream.
pub fn signals() -> Result<impl Stream<Item = Signal> + Unpin, Error> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(futures::stream::poll_fn(move |cx| {
        if let Poll::Ready(s) = term.poll_recv(cx) {
            return Poll::Ready(s.map(|()| Signal::Terminate));
        }
        int.poll_recv(cx).map(|s| s.map(|()| Signal::Interrupt))
    }))
}

/// Runs `work` until it finishes. On the first signal from `signals`, cancels `stop` (the
/// work's cue to wind down) and gives it `grace` to finish; a second signal or the end of the
/// grace period ends the wait with an error (the caller exits, abandoning what is left).
pub async fn run_until_signalled<F: Future>(
    work: F,
    stop: CancellationToken,
    mut signals: impl Stream<Item = Signal> + Unpin,
    grace: Duration,
) -> Result<F::Output, Error> {
    tokio::pin!(work);
    let first = tokio::select! {
        output = &mut work => return Ok(output),
        signal = signals.next() => signal,
    };
    let Some(first) = first else {
        // No more signals can come: only the work ends this.
        return Ok(work.await);
    };
    tracing::info!(signal = ?first, grace = ?grace, "shutting down; a second signal aborts");
    stop.cancel();
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    tokio::select! {
        output = &mut work => Ok(output),
        () = &mut deadline => Err(Error::GraceExpired(grace)),
        signal = signals.next() => match signal {
            Some(second) => Err(Error::Aborted(second)),
            // No more signals can come: only the work or the deadline ends this.
            None => tokio::select! {
                output = &mut work => Ok(output),
                () = &mut deadline => Err(Error::GraceExpired(grace)),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    use super::*;

    fn channel() -> (
        mpsc::UnboundedSender<Signal>,
        UnboundedReceiverStream<Signal>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, UnboundedReceiverStream::new(rx))
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_by_itself_needs_no_signal() {
        let (_tx, signals) = channel();
        let stop = CancellationToken::new();
        let out = run_until_signalled(async { 7 }, stop.clone(), signals, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(out, 7);
        assert!(!stop.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_signal_cancels_and_waits_for_the_work() {
        let (tx, signals) = channel();
        let stop = CancellationToken::new();
        let work = {
            let stop = stop.clone();
            async move {
                stop.cancelled().await;
                // Winding down takes a while, within the grace period.
                tokio::time::sleep(Duration::from_secs(3)).await;
                "drained"
            }
        };
        tx.send(Signal::Terminate).unwrap();
        let out = run_until_signalled(work, stop.clone(), signals, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(out, "drained");
        assert!(stop.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_signal_aborts() {
        let (tx, signals) = channel();
        let stop = CancellationToken::new();
        let work = futures::future::pending::<()>();
        let waiter = tokio::spawn(run_until_signalled(
            work,
            stop.clone(),
            signals,
            Duration::from_secs(60),
        ));
        tx.send(Signal::Terminate).unwrap();
        stop.cancelled().await;
        tx.send(Signal::Interrupt).unwrap();
        let err = waiter.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::Aborted(Signal::Interrupt)), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_period_bounds_the_wait() {
        let (tx, signals) = channel();
        let stop = CancellationToken::new();
        tx.send(Signal::Terminate).unwrap();
        drop(tx);
        let err = run_until_signalled(
            futures::future::pending::<()>(),
            stop,
            signals,
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::GraceExpired(_)), "{err}");
    }
}
