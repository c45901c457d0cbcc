//! The span builder -> export stage queue, bounded in spans.
//!
//! Spans travel in chunks of any size (a few at low rates, up to `MAX_CHUNK` under load), so a
//! channel bounded in chunks bounds nothing useful: 32 chunks of 3 spans filled it while an
//! export attempt blocked, and spans were dropped with the queue 1 % full. Here the bound is a
//! count of spans shared by both ends: the builder takes room for a chunk before sending it,
//! and the export stage gives the room back when spans leave it (exported, or counted as
//! `export_failed`). Spans in the channel, in the stage's batch queue and in its retry batch
//! all count.
//!
//! Overflow policy: drop the newest. A chunk that does not fit whole is cut to the room left;
//! the sender reports how many spans it gave up so that they are counted (`queue_full`).
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

/// The sending half (the span builder).
pub struct QueueTx<T> {
    tx: mpsc::UnboundedSender<Vec<T>>,
    room: Arc<Semaphore>,
}

/// The receiving half (the export stage).
pub struct QueueRx<T> {
    rx: mpsc::UnboundedReceiver<Vec<T>>,
    room: Arc<Semaphore>,
    capacity: usize,
}

/// What became of a chunk offered to the queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub queued: usize,
    /// Dropped because the queue was full (the newest of the chunk).
    pub full: usize,
    /// Dropped because the export stage is gone.
    pub closed: usize,
}

/// A queue holding at most `capacity` items (at least 1).
pub fn bounded<T>(capacity: usize) -> (QueueTx<T>, QueueRx<T>) {
    let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
    let room = Arc::new(Semaphore::new(capacity));
    let (tx, rx) = mpsc::unbounded_channel();
    (
        QueueTx {
            tx,
            room: room.clone(),
        },
        QueueRx { rx, room, capacity },
    )
}

impl<T> QueueTx<T> {
    /// Queues as much of `items` as there is room for, never waiting.
    pub fn send(&self, mut items: Vec<T>) -> Sent {
        let offered = items.len();
        let fit = offered.min(self.room.available_permits());
        if fit == 0 {
            return Sent {
                full: offered,
                ..Sent::default()
            };
        }
        // One sender: the room seen above cannot shrink before this.
        let Ok(permit) = self.room.try_acquire_many(fit as u32) else {
            return Sent {
                full: offered,
                ..Sent::default()
            };
        };
        permit.forget();
        items.truncate(fit);
        match self.tx.send(items) {
            Ok(()) => Sent {
                queued: fit,
                full: offered - fit,
                closed: 0,
            },
            Err(_) => {
                self.room.add_permits(fit);
                Sent {
                    queued: 0,
                    full: offered - fit,
                    closed: fit,
                }
            }
        }
    }
}

impl<T> QueueRx<T> {
    /// The next chunk; `None` once the sender is gone and the channel is empty.
    pub async fn recv(&mut self) -> Option<Vec<T>> {
        self.rx.recv().await
    }

    /// Gives back the room of `n` items that have left the export stage.
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.room.add_permits(n);
        }
    }

    /// Items held anywhere in the queue (channel and export stage).
    pub fn held(&self) -> usize {
        self.capacity - self.room.available_permits()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bound_is_in_items_not_chunks() {
        let (tx, mut rx) = bounded::<u32>(10);
        // Many small chunks fill nothing but their items.
        for i in 0..9 {
            assert_eq!(tx.send(vec![i]).queued, 1);
        }
        assert_eq!(rx.held(), 9);
        // A chunk that does not fit is cut: the newest go.
        let s = tx.send(vec![100, 101, 102]);
        assert_eq!(
            s,
            Sent {
                queued: 1,
                full: 2,
                closed: 0
            }
        );
        assert_eq!(tx.send(vec![200]).full, 1);
        for i in 0..9 {
            assert_eq!(rx.recv().await, Some(vec![i]));
        }
        assert_eq!(rx.recv().await, Some(vec![100]));
        // Received is still held until released.
        assert_eq!(rx.held(), 10);
        rx.release(4);
        assert_eq!(rx.held(), 6);
        assert_eq!(tx.send(vec![1, 2, 3, 4, 5]).queued, 4);
    }

    #[tokio::test]
    async fn a_closed_queue_counts_what_it_could_not_send() {
        let (tx, rx) = bounded::<u32>(2);
        drop(rx);
        assert_eq!(
            tx.send(vec![1, 2, 3]),
            Sent {
                queued: 0,
                full: 1,
                closed: 2
            }
        );
    }

    #[tokio::test]
    async fn recv_ends_when_the_sender_is_gone() {
        let (tx, mut rx) = bounded::<u32>(4);
        tx.send(vec![7]);
        drop(tx);
        assert_eq!(rx.recv().await, Some(vec![7]));
        assert_eq!(rx.recv().await, None);
    }
}
