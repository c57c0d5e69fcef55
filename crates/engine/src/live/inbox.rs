//! A subscription's queue of events from the dispatcher, woken per job: a push does not wake
//! the subscriber; the dispatcher wakes every subscriber it pushed to once, after each job (a
//! commit; [`Wakes::wake_all`]). A commit that reaches many subscriptions of one WebSocket then
//! wakes the socket's task once: with a channel that woke on every send, the task was woken,
//! ran, flushed and parked again several times per commit (about 130 context switches per
//! 1000-row commit spread over 8 sockets).
//!
//! Inboxes can share one [`LiveGroup`] (a WebSocket's subscriptions): the dispatcher then puts
//! the key of each inbox it pushed to on the group's ready list and wakes the group's one task,
//! which takes the events of just those subscriptions ([`crate::live::Subscription::try_next`]).
//! A socket with 1,000 subscriptions is one task and one wake-up per commit, not 1,000 streams
//! each woken, polled and queued again in a `SelectAll` (about a third of the delivery's CPU).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;

use futures::task::AtomicWaker;

use super::LiveEvent;

#[derive(Default)]
struct Inbox {
    events: Mutex<VecDeque<LiveEvent>>,
    waker: AtomicWaker,
    /// In the dispatcher's list of inboxes to wake.
    wake_queued: AtomicBool,
    /// The subscriber dropped its end: pushes are refused.
    receiver_gone: AtomicBool,
    /// The dispatcher dropped its end: nothing follows the queued events.
    sender_gone: AtomicBool,
    /// The group woken instead of `waker`, and this inbox's key in it.
    group: OnceLock<(Arc<LiveGroup>, u64)>,
}

impl Inbox {
    fn pop(&self) -> Option<LiveEvent> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }

    fn wake(&self) {
        match self.group.get() {
            Some((group, key)) => group.ring(*key),
            None => self.waker.wake(),
        }
    }
}

/// Subscriptions woken as one: the keys of those with new events since the group's owner last
/// took them ([`LiveGroup::ready`]), and one waker. Subscriptions join with
/// [`crate::live::Subscription::join`].
#[derive(Default)]
pub struct LiveGroup {
    ready: Mutex<Vec<u64>>,
    waker: AtomicWaker,
}

impl LiveGroup {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn ring(&self, key: u64) {
        self.requeue([key]);
    }

    /// Names `keys` again at the next [`LiveGroup::ready`] (the owner took them but left some
    /// of their events for its next turn).
    pub fn requeue(&self, keys: impl IntoIterator<Item = u64>) {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = ready.is_empty();
        ready.extend(keys);
        let wake = was_empty && !ready.is_empty();
        drop(ready);
        if wake {
            self.waker.wake();
        }
    }

    /// Waits until some subscription of the group may have events (or ended), and returns
    /// their keys (a key may repeat, or name a subscription already dropped). Cancel-safe:
    /// keys are taken only when returned.
    pub async fn ready(&self) -> Vec<u64> {
        poll_fn(|cx| {
            let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            if ready.is_empty() {
                // Registered under the lock a ring takes: a ring after it sees the waker.
                self.waker.register(cx.waker());
                return Poll::Pending;
            }
            Poll::Ready(std::mem::take(&mut *ready))
        })
        .await
    }
}

/// The inboxes pushed to since the dispatcher last woke them (after its last job).
#[derive(Default)]
pub(super) struct Wakes(Mutex<Vec<Arc<Inbox>>>);

impl Wakes {
    /// Wakes every subscriber pushed to since the last call.
    pub(super) fn wake_all(&self) {
        let inboxes = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for inbox in inboxes {
            // Reset first: a push after it queues the inbox again.
            inbox.wake_queued.store(false, Ordering::Release);
            inbox.wake();
        }
    }
}

/// The dispatcher's end. Dropping it ends the subscriber's stream after the queued events.
pub(super) struct Sender {
    inbox: Arc<Inbox>,
    wakes: Arc<Wakes>,
}

/// The subscriber's end. Dropping it makes later pushes fail.
pub(super) struct Receiver {
    inbox: Arc<Inbox>,
}

/// A new inbox whose pushes are woken through `wakes`.
pub(super) fn inbox(wakes: &Arc<Wakes>) -> (Sender, Receiver) {
    let inbox = Arc::new(Inbox::default());
    (Sender { inbox: Arc::clone(&inbox), wakes: Arc::clone(wakes) }, Receiver { inbox })
}

impl Sender {
    /// Queues an event for the subscriber, woken at the end of the dispatcher's round;
    /// `Err(())` when the subscriber is gone.
    pub(super) fn send(&self, event: LiveEvent) -> Result<(), ()> {
        let inbox = &self.inbox;
        if inbox.receiver_gone.load(Ordering::Acquire) {
            return Err(());
        }
        inbox.events.lock().unwrap_or_else(|e| e.into_inner()).push_back(event);
        if !inbox.wake_queued.swap(true, Ordering::AcqRel) {
            self.wakes.0.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::clone(inbox));
        }
        Ok(())
    }

    pub(super) fn is_closed(&self) -> bool {
        self.inbox.receiver_gone.load(Ordering::Acquire)
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.inbox.sender_gone.store(true, Ordering::Release);
        self.inbox.wake();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.close();
    }
}

impl Receiver {
    /// The next event; `None` once the dispatcher dropped its end and every event was taken.
    pub(super) async fn recv(&self) -> Option<LiveEvent> {
        let inbox = &self.inbox;
        poll_fn(|cx| {
            if let Some(event) = inbox.pop() {
                return Poll::Ready(Some(event));
            }
            inbox.waker.register(cx.waker());
            // Again after registering: a push and wake between the first look and the
            // registration would otherwise be missed.
            if let Some(event) = inbox.pop() {
                return Poll::Ready(Some(event));
            }
            if inbox.sender_gone.load(Ordering::Acquire) {
                // Everything pushed before the end was made visible before it.
                return Poll::Ready(inbox.pop());
            }
            Poll::Pending
        })
        .await
    }

    /// The next event if one is queued: `Ready(None)` once the dispatcher dropped its end and
    /// every event was taken, `Pending` when nothing is queued now (no waker registered: a
    /// grouped inbox's group is rung instead).
    pub(super) fn try_recv(&self) -> Poll<Option<LiveEvent>> {
        if let Some(event) = self.inbox.pop() {
            return Poll::Ready(Some(event));
        }
        if self.inbox.sender_gone.load(Ordering::Acquire) {
            return Poll::Ready(self.inbox.pop());
        }
        Poll::Pending
    }

    /// From now on, pushes ring `group` with `key` instead of this receiver's waker; rings it
    /// once now, for what was pushed before. Once per inbox (`false` if it already joined).
    pub(super) fn join(&self, group: &Arc<LiveGroup>, key: u64) -> bool {
        let joined = self.inbox.group.set((Arc::clone(group), key)).is_ok();
        if joined {
            group.ring(key);
        }
        joined
    }

    /// Refuses further pushes (the subscription ended).
    pub(super) fn close(&self) {
        self.inbox.receiver_gone.store(true, Ordering::Release);
    }
}
