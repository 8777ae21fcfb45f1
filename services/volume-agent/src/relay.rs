//! Where one operation's events go: to the caller attached now, if any. The relay keeps what a
//! new caller needs to pick the operation up (the latest `queued`/`progress` event and the
//! final result or error), so an orchestrator that takes over from one that went away can
//! re-attach and take the result instead of running restic again. It is bounded: one kept
//! event and one result, whatever the operation's length.

use std::{sync::Mutex, time::Duration};

use tokio::sync::{mpsc, watch};
use tonic::Status;

/// Items a caller's stream carries.
pub type Item<T> = Result<T, Status>;

/// Events buffered per caller's stream; progress beyond this is dropped, never the result.
pub const EVENT_BUFFER: usize = 32;

/// What a relay holds now, for GetAgentInfo.
#[derive(Debug, Clone)]
pub struct Snapshot<T> {
    /// The latest `queued` or `progress` event.
    pub latest: Option<T>,
    /// The final result or error, once the operation ended.
    pub ended: Option<Item<T>>,
    pub attached: bool,
}

struct State<T> {
    caller: Option<mpsc::Sender<Item<T>>>,
    latest: Option<T>,
    ended: Option<Item<T>>,
}

pub struct Relay<T> {
    state: Mutex<State<T>>,
    /// Bumped on every attach, so waiters on the previous caller stop waiting on it.
    attaches: watch::Sender<u64>,
}

impl<T: Clone + Send + 'static> Relay<T> {
    /// A relay with its first caller attached; the caller's stream is the receiver.
    pub fn new() -> (Relay<T>, mpsc::Receiver<Item<T>>) {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let relay = Relay {
            state: Mutex::new(State {
                caller: Some(tx),
                latest: None,
                ended: None,
            }),
            attaches: watch::Sender::new(0),
        };
        (relay, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Passes `event` to the caller without waiting (dropped when its buffer is full). A
    /// `keep` event (queued, progress) is what a new caller is first sent; others (retrying)
    /// only go to the caller attached now.
    pub fn send(&self, event: T, keep: bool) {
        let mut state = self.lock();
        if let Some(caller) = &state.caller {
            let _ = caller.try_send(Ok(event.clone()));
        }
        if keep {
            state.latest = Some(event);
        }
    }

    /// Records the final item and delivers it to the caller attached now, waiting for room in
    /// its stream for at most `patience`; a caller that goes away, is replaced or does not read
    /// (a stopped process) does not hold it up longer (the next one is sent the kept result
    /// when it attaches).
    pub async fn finish(&self, item: Item<T>, patience: Duration) {
        let caller = {
            let mut state = self.lock();
            state.ended = Some(item.clone());
            state.caller.clone()
        };
        let Some(caller) = caller else { return };
        let mut attaches = self.attaches.subscribe();
        tokio::select! {
            _ = caller.send(item) => {}
            _ = attaches.changed() => {}
            () = tokio::time::sleep(patience) => {}
        }
        // The result was the last item: the caller's stream ends (OK) once it has read it,
        // which needs every sender gone, so the relay lets go of this caller and wakes
        // `unattended_for` to drop its copy (the kept result then waits out the grace period).
        {
            let mut state = self.lock();
            if state
                .caller
                .as_ref()
                .is_some_and(|c| c.same_channel(&caller))
            {
                state.caller = None;
            }
        }
        drop(caller);
        self.attaches.send_modify(|count| *count += 1);
    }

    /// Makes a new caller the operation's only one: it is sent the latest kept event and the
    /// result if there is one, then what comes. The stream of the caller before it ends.
    pub fn attach(&self) -> mpsc::Receiver<Item<T>> {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let mut state = self.lock();
        if let Some(latest) = &state.latest {
            let _ = tx.try_send(Ok(latest.clone()));
        }
        if let Some(ended) = &state.ended {
            // Ended already: the new caller's stream is the kept state and then its end.
            let _ = tx.try_send(ended.clone());
            drop(state);
            self.attaches.send_modify(|count| *count += 1);
            return rx;
        }
        state.caller = Some(tx);
        drop(state);
        self.attaches.send_modify(|count| *count += 1);
        rx
    }

    pub fn snapshot(&self) -> Snapshot<T> {
        let state = self.lock();
        Snapshot {
            latest: state.latest.clone(),
            ended: state.ended.clone(),
            attached: state.caller.as_ref().is_some_and(|c| !c.is_closed()),
        }
    }

    /// Resolves once no caller has been attached for `grace` in a row: the callers went away
    /// (hung up, or their process died) and nobody attached again in time.
    pub async fn unattended_for(&self, grace: Duration) {
        let mut attaches = self.attaches.subscribe();
        loop {
            attaches.borrow_and_update();
            let caller = self.lock().caller.clone();
            match caller {
                Some(caller) => {
                    tokio::select! {
                        () = caller.closed() => {
                            let mut state = self.lock();
                            // Only if that caller is still the current one.
                            if state.caller.as_ref().is_some_and(|c| c.same_channel(&caller)) {
                                state.caller = None;
                                tracing::info!(
                                    grace_seconds = grace.as_secs(),
                                    "caller went away; the operation keeps running for a new caller to attach"
                                );
                            }
                        }
                        _ = attaches.changed() => {}
                    }
                }
                None => {
                    tokio::select! {
                        () = tokio::time::sleep(grace) => {
                            if self.lock().caller.is_none() {
                                return;
                            }
                        }
                        _ = attaches.changed() => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_new_caller_gets_the_latest_event_then_the_rest() {
        let (relay, mut first) = Relay::<u32>::new();
        relay.send(1, true);
        relay.send(2, true);
        relay.send(99, false);
        assert_eq!(first.recv().await.unwrap().unwrap(), 1);
        let mut second = relay.attach();
        assert_eq!(
            second.recv().await.unwrap().unwrap(),
            2,
            "latest kept event"
        );
        relay.send(3, true);
        relay.finish(Ok(4), Duration::from_secs(1)).await;
        assert_eq!(second.recv().await.unwrap().unwrap(), 3);
        assert_eq!(second.recv().await.unwrap().unwrap(), 4);
        // The first caller was replaced: what it had buffered, then its stream ends.
        assert_eq!(first.recv().await.unwrap().unwrap(), 2);
        assert_eq!(first.recv().await.unwrap().unwrap(), 99);
        drop(relay);
        assert!(
            first.recv().await.is_none(),
            "the replaced caller's stream ends"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_operation_hands_its_result_to_a_late_caller() {
        let (relay, first) = Relay::<u32>::new();
        drop(first);
        relay.send(5, true);
        relay
            .finish(
                Err(Status::internal("restic failed")),
                Duration::from_secs(1),
            )
            .await;
        let mut late = relay.attach();
        assert_eq!(late.recv().await.unwrap().unwrap(), 5);
        let error = late.recv().await.unwrap().unwrap_err();
        assert_eq!(error.message(), "restic failed");
        assert!(
            late.recv().await.is_none(),
            "the stream ends after the result"
        );
        let snapshot = relay.snapshot();
        assert!(!snapshot.attached);
        assert!(snapshot.ended.unwrap().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_attached_callers_stream_ends_after_the_result() {
        let (relay, mut caller) = Relay::<u32>::new();
        let relay = std::sync::Arc::new(relay);
        let watcher = relay.clone();
        let unattended =
            tokio::spawn(async move { watcher.unattended_for(Duration::from_secs(60)).await });
        tokio::task::yield_now().await;
        relay.send(5, true);
        relay.finish(Ok(9), Duration::from_secs(1)).await;
        assert_eq!(caller.recv().await.unwrap().unwrap(), 5);
        assert_eq!(caller.recv().await.unwrap().unwrap(), 9);
        // Ends (not left open until the caller hangs up), though the relay is still watched.
        let end = tokio::time::timeout(Duration::from_secs(5), caller.recv())
            .await
            .expect("the stream ends after the result");
        assert!(end.is_none());
        assert!(!unattended.is_finished());
        unattended.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn unattended_only_after_the_grace_with_nobody_attached() {
        let (relay, caller) = Relay::<u32>::new();
        let relay2 = std::sync::Arc::new(relay);
        let grace = Duration::from_secs(120);
        let waiter = {
            let relay = relay2.clone();
            tokio::spawn(async move { relay.unattended_for(grace).await })
        };
        drop(caller);
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!waiter.is_finished(), "still within the grace period");
        // A new caller attaches in time, stays 200 s, then goes away too.
        let second = relay2.attach();
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert!(!waiter.is_finished(), "attached: never unattended");
        drop(second);
        tokio::time::sleep(Duration::from_secs(119)).await;
        assert!(
            !waiter.is_finished(),
            "the grace starts again when the caller leaves"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(waiter.is_finished(), "no caller for the whole grace period");
        waiter.await.unwrap();
    }
}
