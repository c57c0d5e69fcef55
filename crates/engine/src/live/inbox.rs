//! A subscription's queue of events from the dispatcher, woken per job: a push does not wake
//! the subscriber; the dispatcher wakes every subscriber it pushed to once, after each job (a
//! commit; [`Wakes::wake_all`]). A commit that reaches many subscriptions of one WebSocket then
//! wakes the socket's task once: with a channel that woke on every send, the task was woken,
//! ran, flushed and parked again several times per commit (about 130 context switches per
//! 1000-row commit spread over 8 sockets).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
}

impl Inbox {
    fn pop(&self) -> Option<LiveEvent> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
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
            inbox.waker.wake();
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
        self.inbox.waker.wake();
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

    /// Refuses further pushes (the subscription ended).
    pub(super) fn close(&self) {
        self.inbox.receiver_gone.store(true, Ordering::Release);
    }
}
